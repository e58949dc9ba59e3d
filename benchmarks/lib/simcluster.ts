/**
 * A simulated cluster for the length of one benchmark (src/hosts/simulated.ts), with a working
 * directory outside /tmp (each host has its own /tmp). A simulated cluster outlives the process
 * that made it until `down`, as `simcluster up` does; so a benchmark stopped by SIGINT or SIGTERM
 * takes it down before it exits, as it does on every other way out.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { signalStatus } from '../../src/common/signals.js';
import { down, up, type SimClusterRecord } from '../../src/hosts/simulated.js';

export async function withSimCluster<T>(o: { hosts: number; name: string; workPrefix: string }, run: (rec: SimClusterRecord, work: string) => Promise<T>): Promise<T> {
  const rec = await up({ hosts: o.hosts, name: o.name });
  const work = mkdtempSync(`/var/tmp/${o.workPrefix}`);
  let removed: Promise<void> | null = null;
  const remove = () =>
    (removed ??= down(rec.name).finally(() => rmSync(work, { recursive: true, force: true })));
  const onSignal = (sig: NodeJS.Signals) => {
    void remove().finally(() => process.exit(signalStatus(sig)));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await run(rec, work);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await remove();
  }
}
