/**
 * How the agents of a job are started on its other hosts, and which address of this host they
 * connect back to. Each starter runs this installation's `snowflock agent` (the same path on every
 * host: the shared filesystem of a cluster) and hands it the job secret on its stdin, which stays
 * open for the job: its end tells the agent that the launcher's side is gone.
 *
 *   srun     inside a Slurm allocation: one job step, one task per node (`srun --overlap`)
 *   ssh      hosts named by --hosts/a hostfile with --real-hosts: one SSH session per host
 *            (ssh2 with the user's keys or ssh-agent, host keys checked against known_hosts)
 *   command  any other way in (tests start agents on simulated hosts through their namespaces)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { runCommand } from '../common/command.js';
import { onLifeline } from '../common/lifeline.js';
import { projectRoot } from '../common/paths.js';
import { shellQuote } from '../common/shell.js';
import { ProvisionError } from '../common/errors.js';
import { sshSession, type SshTarget } from './ssh.js';

export interface StartedAgents {
  /** Resolves with one line if the way the agents were started fails under them (srun ends, a session closes). */
  failed: Promise<string>;
  /**
   * Ends what is left of the agents' processes (after they were told to exit, or on failure);
   * `hurry`: a host was lost, so whatever still waits for it is ended without much patience.
   */
  stop(hurry?: boolean): Promise<void>;
}

export interface AgentStarter {
  /** For messages: "srun", "ssh". */
  readonly how: string;
  /** The address of this host that the hosts reach (the agents connect to it). */
  connectAddress(hosts: string[]): Promise<string>;
  start(hosts: string[], coordinator: { address: string; port: number }, secret: string): Promise<StartedAgents>;
}

/** The command line of this installation's `snowflock agent`, from its sources (tsx) or dist/. */
export function agentCommand(coordinator: { address: string; port: number }, host?: string): string[] {
  const fromSources = import.meta.url.endsWith('.ts');
  const root = projectRoot();
  const script = fromSources ? join(root, 'launcher/bin/snowflock.ts') : fileURLToPath(new URL('../../launcher/bin/snowflock.js', import.meta.url));
  const loader = fromSources ? ['--import', join(root, 'node_modules/tsx/dist/esm/index.mjs')] : [];
  return [process.execPath, ...loader, script, 'agent', '--connect', `${coordinator.address}:${coordinator.port}`, ...(host ? ['--host', host] : [])];
}

/** snowflock's settings of this process, for agents whose environment is not ours (SSH). */
function settingsEnv(): string[] {
  return Object.entries(process.env)
    .filter(([k, v]) => k.startsWith('SNOWFLOCK_') && k !== 'SNOWFLOCK_TICKET' && v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
}

/** This host's address on the route toward `to` (its source address). */
export async function addressToward(to: string): Promise<string> {
  const r = await runCommand('ip', ['-j', 'route', 'get', to], { reject: false });
  const src = (JSON.parse(r.stdout || '[]') as Array<{ prefsrc?: string }>)[0]?.prefsrc;
  if (!src) throw new ProvisionError(`this host has no route to ${to}: ${r.stderr.trim() || 'no source address'}`);
  return src;
}

/** The last lines of what a process said, for one failure line. */
function tailOf(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines.length ? `: ${lines.slice(-3).join(' | ')}` : '';
}

/** One process of ours that carries the agents (srun), or one per host (command). */
function watch(child: ChildProcess, what: string, secret: string): StartedAgents {
  let said = '';
  let stopping = false;
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (said = (said + d).slice(-4000)));
  child.stdout?.resume();
  child.stdin?.on('error', () => {});
  child.stdin?.write(secret + '\n');
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => {
    child.once('close', (code, signal) => r({ code, signal }));
    child.once('error', (e) => {
      said += e.message;
      r({ code: 127, signal: null });
    });
  });
  const failed = closed.then((st) => (stopping ? new Promise<string>(() => {}) : `${what} ended (${st.signal ?? `status ${st.code}`})${tailOf(said)}`));
  return {
    failed,
    // The agents were told to exit; what still runs after a moment waits on a lost host (srun
    // waits for every task): SIGTERM ends it (srun then ends its step), SIGKILL what ignores that.
    stop: async (hurry = false) => {
      stopping = true;
      child.stdin?.end();
      const term = setTimeout(() => child.kill('SIGTERM'), hurry ? 500 : 3000);
      const kill = setTimeout(() => child.kill('SIGKILL'), hurry ? 1500 : 8000);
      await closed;
      clearTimeout(term);
      clearTimeout(kill);
    },
  };
}

/**
 * Inside a Slurm allocation: one job step with one agent per node. --overlap: the step shares the
 * allocation's CPUs with the batch step (the launcher's), which holds them all. --input=all: every
 * task reads the secret from srun's stdin. srun runs on a lifeline to the launcher: if the launcher
 * dies, srun does, and the step's tasks get their stdin closed and are killed.
 */
export function srunStarter(nativeDir: string): AgentStarter {
  return {
    how: 'srun',
    async connectAddress(hosts) {
      const r = await runCommand('scontrol', ['show', 'node', '-o', hosts[0]!], { reject: false });
      const addr = /NodeAddr=(\S+)/.exec(r.stdout)?.[1];
      if (!addr) throw new ProvisionError(`scontrol does not know node ${hosts[0]} of this allocation: ${r.stderr.trim() || 'no NodeAddr'}`);
      return addressToward(/^\d+\.\d+\.\d+\.\d+$/.test(addr) ? addr : (await lookup(addr, { family: 4 })).address);
    },
    async start(hosts, coordinator, secret) {
      const argv = onLifeline(nativeDir, [
        'srun',
        '--overlap',
        `--nodes=${hosts.length}`,
        `--ntasks=${hosts.length}`,
        '--ntasks-per-node=1',
        `--nodelist=${hosts.join(',')}`,
        '--input=all',
        '--kill-on-bad-exit=0',
        '--mpi=none',
        '--cpu-bind=none',
        '--job-name=snowflock-agents',
        ...agentCommand(coordinator),
      ]);
      const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
      return watch(child, "the agents' job step (srun)", secret);
    },
  };
}

/** Agents started by running a command per host (the argv that runs a program on that host). */
export function commandStarter(how: string, on: (host: string, argv: string[]) => { file: string; args: string[] }, connectAddress: (hosts: string[]) => Promise<string>): AgentStarter {
  return {
    how,
    connectAddress,
    async start(hosts, coordinator, secret) {
      const watched = hosts.map((h) => {
        const { file, args } = on(h, agentCommand(coordinator, h));
        return watch(spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] }), `the agent on ${h}`, secret);
      });
      return { failed: Promise.race(watched.map((w) => w.failed)), stop: async (hurry) => void (await Promise.all(watched.map((w) => w.stop(hurry)))) };
    },
  };
}

/** Agents over SSH: one session per host, the agent its command, the secret its first line of input. */
export function sshStarter(targets: (host: string) => SshTarget): AgentStarter {
  return {
    how: 'ssh',
    async connectAddress(hosts) {
      return addressToward((await lookup(targets(hosts[0]!).address, { family: 4 })).address);
    },
    async start(hosts, coordinator, secret) {
      const env = settingsEnv();
      const opened = await Promise.allSettled(
        hosts.map((h) => {
          const argv = agentCommand(coordinator, h);
          const command = `cd / && exec env ${[...env, ...argv].map(shellQuote).join(' ')}`;
          return sshSession(targets(h), command, secret + '\n', `the agent's SSH session to ${h}`);
        }),
      );
      const sessions = opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
      const refused = opened.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (refused) {
        await Promise.all(sessions.map((s) => s.stop()));
        throw new ProvisionError((refused.reason as Error).message);
      }
      return { failed: Promise.race(sessions.map((s) => s.failed)), stop: async () => void (await Promise.all(sessions.map((s) => s.stop()))) };
    },
  };
}
