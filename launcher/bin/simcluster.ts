#!/usr/bin/env node
/**
 * simcluster: simulated clusters on this machine (src/hosts/simulated.ts), for tests and for users
 * without a cluster. To be wired in as `snowflock cluster up|down|status|exec`.
 *
 *   simcluster up --hosts N [--name NAME] [--cpus C] [-v]
 *   simcluster down NAME
 *   simcluster status [NAME]
 *   simcluster exec HOST [--cwd DIR] -- CMD [ARG]...
 *
 * Exit codes: 0 done, 1 a failure of the cluster, 2 a bad argument (one line, nothing created),
 * 128+N interrupted by signal N (what `up` had made is removed first); exec ends as CMD ended.
 */
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { UsageError } from '../../src/common/errors.js';
import { down, findHost, hostCommand, status, up, usage } from '../../src/hosts/simulated.js';
import { debugRequested, reportError } from '../cli/errors.js';

const PROGRAM = 'simcluster';

const HELP = `usage:
  ${PROGRAM} up --hosts N [--name NAME] [--cpus C] [-v]   start N simulated hosts running Slurm
  ${PROGRAM} down NAME                                   remove a simulated cluster completely
  ${PROGRAM} status [NAME]                               list simulated clusters and their health
  ${PROGRAM} exec HOST [--cwd DIR] -- CMD [ARG]...       run CMD on a simulated host
Settings: SNOWFLOCK_STATE_DIR, SNOWFLOCK_SIM_POOL (10.234.0.0/16), SNOWFLOCK_SIM_PORTS (16800-16899), SNOWFLOCK_SIM_PREFIX (sfsc).`;

function parse(argv: string[], options: NonNullable<Parameters<typeof parseArgs>[0]>['options'], positionals: number): ReturnType<typeof parseArgs> {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    // node's messages are long and end in advice of their own; keep the first sentence.
    throw new UsageError(String((e as Error).message).split('. ')[0]!.replace(/^Unknown option/, 'unknown option'));
  }
  if (parsed.positionals.length > positionals) throw new UsageError(`unexpected argument ${JSON.stringify(parsed.positionals[positionals])}`);
  return parsed;
}

async function cmdUp(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { hosts: { type: 'string' }, name: { type: 'string' }, cpus: { type: 'string' }, verbose: { type: 'boolean', short: 'v' } }, 0);
  void positionals;
  if (values.hosts === undefined) throw new UsageError('up needs --hosts N (how many simulated hosts)');
  const t0 = Date.now();
  const rec = await up({
    hosts: values.hosts as unknown as number,
    name: values.name as string | undefined,
    cpus: values.cpus as unknown as number | undefined,
    log: values.verbose ? (line) => process.stderr.write(`${PROGRAM}: ${line}\n`) : undefined,
  });
  if (values.verbose) process.stderr.write(`${PROGRAM}: up in ${Date.now() - t0} ms\n`);
  process.stdout.write(usage(rec, PROGRAM) + '\n');
  return 0;
}

async function cmdDown(argv: string[]): Promise<number> {
  const { positionals } = parse(argv, {}, 1);
  if (positionals.length !== 1) throw new UsageError('down needs the NAME of a simulated cluster (see simcluster status)');
  await down(positionals[0]!);
  return 0;
}

async function cmdStatus(argv: string[]): Promise<number> {
  const { positionals } = parse(argv, {}, 1);
  const all = await status(positionals[0]);
  if (all.length === 0) {
    process.stdout.write('no simulated clusters\n');
    return 0;
  }
  for (const s of all) {
    const r = s.record;
    const what = r ? `${r.hosts.length} hosts on ${r.subnet}, slurmctld port ${r.ctldPort}, SLURM_CONF=${r.slurmConf}` : '';
    process.stdout.write(`${s.name}: ${s.state}${what ? ', ' + what : ''}\n`);
    for (const p of s.problems) process.stdout.write(`  ${p}\n`);
  }
  return all.some((s) => s.state === 'broken') ? 1 : 0;
}

function cmdExec(argv: string[]): number {
  const dash = argv.indexOf('--');
  if (dash < 0 || dash === argv.length - 1) throw new UsageError('exec needs HOST -- CMD [ARG]...');
  const { values, positionals } = parse(argv.slice(0, dash), { cwd: { type: 'string' } }, 1);
  if (positionals.length !== 1) throw new UsageError('exec needs the HOST to run on (a node name, like sim-0)');
  const { host } = findHost(positionals[0]!);
  const { file, args } = hostCommand(host, argv.slice(dash + 1), { cwd: (values.cwd as string | undefined) ?? process.cwd() });
  const r = spawnSync(file, args, { stdio: 'inherit' });
  if (r.error) throw r.error;
  if (r.signal) process.kill(process.pid, r.signal);
  return r.status ?? 1;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'up':
      return cmdUp(rest);
    case 'down':
      return cmdDown(rest);
    case 'status':
      return cmdStatus(rest);
    case 'exec':
      return cmdExec(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(HELP + '\n');
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}: use up, down, status or exec`);
  }
}

// Every failure a user can fix is a UserError (a SimClusterError carries exit 2, 1 or 128+N).
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => process.exit(reportError(PROGRAM, e, debugRequested(process.argv))),
);
