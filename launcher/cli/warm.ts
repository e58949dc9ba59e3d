/**
 * `snowflock warm [--networks N]`: this host's warm service (src/warm/service.ts), in the
 * foreground until SIGINT, SIGTERM or SIGHUP, which tear down the networks it holds and end it
 * with status 0 (a service manager's stop). `--status` prints a running service's state as JSON.
 */
import { UsageError } from '../../src/common/errors.js';
import { Engine } from '../../src/engine.js';
import { ask } from '../../src/warm/client.js';
import { socketPath } from '../../src/warm/protocol.js';
import { MAX_NETWORKS, WarmService } from '../../src/warm/service.js';
import { settings } from '../../src/common/config.js';
import type { EngineArgs } from './commands.js';

interface WarmArgs extends EngineArgs {
  /** As typed: checked here, so that "abc" is named in the message rather than NaN. */
  networks: string;
  status?: boolean;
}

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

export async function warmCommand(args: WarmArgs): Promise<number> {
  const stateDir = args.stateDir ?? settings().stateDir;
  if (args.status) return printStatus(stateDir);
  const text = String(args.networks).trim();
  const networks = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(networks >= 1 && networks <= MAX_NETWORKS)) throw new UsageError(`--networks ${JSON.stringify(text)}: give a whole number of networks from 1 to ${MAX_NETWORKS}`);
  const engine = new Engine({ stateDir, warm: 'off' });
  await engine.reclaim();
  const service = new WarmService(engine, networks);
  let stopped!: (sig: NodeJS.Signals) => void;
  const signal = new Promise<NodeJS.Signals>((resolve) => (stopped = resolve));
  SIGNALS.forEach((s) => process.on(s, stopped));
  try {
    await service.start();
    process.stderr.write(`snowflock warm: ${service.size} network(s) ready for jobs on this host (pid ${process.pid}, ${service.path}); SIGTERM stops it\n`);
    const sig = await signal;
    process.stderr.write(`snowflock warm: ${sig}: tearing down\n`);
    return 0;
  } finally {
    await service.stop();
    SIGNALS.forEach((s) => process.off(s, stopped));
  }
}

async function printStatus(stateDir: string): Promise<number> {
  const reply = await ask(stateDir, { op: 'status' });
  if (!reply?.ok || !reply.status) {
    process.stderr.write(`snowflock warm: no warm service answers on ${socketPath(stateDir)}; start one with snowflock warm\n`);
    return 1;
  }
  process.stdout.write(JSON.stringify(reply.status) + '\n');
  return 0;
}
