/**
 * `snowflock agent --connect ADDR:PORT [--host NAME]`: this host's part of a job whose clones span
 * hosts (src/hosts/agent.ts). The job secret is the first line of standard input; the rest of
 * standard input is only watched for its end (the launcher's side is gone). SIGINT, SIGTERM and
 * SIGHUP tear down what the agent made before it ends by the same signal.
 */
import { hostname } from 'node:os';
import { UsageError } from '../../src/common/errors.js';
import { runAgent } from '../../src/hosts/agent.js';
import { engineFor, type EngineArgs } from './commands.js';
import { installTeardownOnSignals } from './signals.js';

interface AgentArgs extends EngineArgs {
  connect: string;
  host?: string;
}

/** The first line of stdin (the secret), within timeoutMs. */
function firstLine(timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => done(new UsageError('no job secret on standard input: snowflock agent is started by sfmpirun, not by hand')), timeoutMs);
    const onData = (d: Buffer) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl >= 0) done(null, buf.slice(0, nl).trim());
    };
    const onEnd = () => done(new UsageError('standard input ended before the job secret: snowflock agent is started by sfmpirun, not by hand'));
    const done = (e: Error | null, line?: string) => {
      clearTimeout(timer);
      process.stdin.off('data', onData);
      process.stdin.off('end', onEnd);
      process.stdin.pause();
      if (e) reject(e);
      else resolve(line!);
    };
    process.stdin.on('data', onData);
    process.stdin.once('end', onEnd);
  });
}

export async function agentCommand(args: AgentArgs): Promise<number> {
  const m = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(args.connect ?? '');
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new UsageError(`--connect ${JSON.stringify(args.connect)}: give the launcher's IPv4 ADDR:PORT`);
  const host = args.host ?? process.env.SLURMD_NODENAME ?? hostname().split('.')[0]!;
  const secret = await firstLine(20_000);
  if (!/^[0-9a-f]{64}$/.test(secret)) throw new UsageError('the first line of standard input is not a job secret: snowflock agent is started by sfmpirun, not by hand');
  const engine = engineFor(args);
  await engine.reclaim();
  const removeSignals = installTeardownOnSignals(engine);
  try {
    return await runAgent({
      coordinator: { address: m[1]!, port: Number(m[2]) },
      host,
      secret,
      engine,
      nativeDir: engine.config.nativeDir,
      lifeline: process.stdin,
      say: (line) => process.stderr.write(`snowflock agent on ${host}: ${line}\n`),
    });
  } finally {
    removeSignals();
    // Its stdin may never end (a host cut off from its srun): nothing of the job may keep it alive.
    process.stdin.destroy();
    setTimeout(() => process.exit(process.exitCode ?? 1), 2000).unref();
  }
}
