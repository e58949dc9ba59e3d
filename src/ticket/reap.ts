/**
 * The program a ticket's reaper runs once the ticket's owner has died (see src/common/lifeline.ts):
 * the ticket's teardown from its state record, as `snowflock cleanup TICKET` would do it, with as
 * little loaded as can do it (it runs while a batch system is waiting for the job to be gone).
 *
 *   node reap.js STATE_DIR TICKET
 */
import { RecordStore } from './record.js';
import { removeResources } from './teardown.js';

const [stateDir, ticketId] = process.argv.slice(2);
if (!stateDir || !ticketId) {
  process.stderr.write('usage: reap.js STATE_DIR TICKET\n');
  process.exit(2);
}
const store = new RecordStore(stateDir);
const record = await store.read(ticketId);
if (record) {
  const report = await removeResources(record.resources, { ticketId, claimsDir: store.claimsDir });
  // What could not be removed keeps the record: the next snowflock or sfmpirun start retries it.
  if (report.failed.length === 0) await store.remove(ticketId);
  else process.exitCode = 1;
}
