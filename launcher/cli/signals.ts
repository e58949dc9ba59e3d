/**
 * How snowflock's commands stop from outside: SIGINT, SIGTERM or SIGHUP, or a closed stdout or
 * stderr (`snowflock cleanup | head -1`). Commands that provision (up, run) tear down every ticket
 * of their engine first (kept tickets stay); then the process ends as one without handlers would:
 * by the same signal (status 128+n), or with 141 for a closed output, as SIGPIPE gives. Nothing is
 * printed for a closed output: there is nobody to read it.
 */
import type { Engine } from '../../src/engine.js';
import { logger } from '../../src/common/log.js';
import { signalStatus } from '../../src/common/signals.js';

const log = logger('cli');
const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** A closed stdout or stderr ends any command with 141, quietly (installed once per process). */
export function exitOnClosedOutput(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE' || e.code === 'ERR_STREAM_DESTROYED') closedOutput();
      else throw e;
    });
  }
}

let closedOutput = (): void => process.exit(signalStatus('SIGPIPE'));

/** Installs the teardown for signals and closed output; returns a function that removes it. */
export function installTeardownOnSignals(engine: Engine, opts: { keepTickets?: () => string[] } = {}): () => void {
  let busy = false;
  const stop = (then: () => void) => {
    if (busy) return; // a second Ctrl-C must not cut teardown short: that is how leaks happen
    busy = true;
    void engine
      .killAll(opts.keepTickets?.() ?? [])
      .catch((e: Error) => log.error(e.message))
      .finally(() => {
        remove();
        then();
      });
  };
  const handler = (sig: NodeJS.Signals) => {
    if (!busy) log.warn(`${sig}: tearing down`);
    stop(() => process.kill(process.pid, sig));
  };
  const previous = closedOutput;
  closedOutput = () => stop(() => process.exit(signalStatus('SIGPIPE')));
  const remove = () => {
    signals.forEach((s) => process.off(s, handler));
    closedOutput = previous;
  };
  signals.forEach((s) => process.on(s, handler));
  return remove;
}
