/**
 * A netns clone: the namespaces its holder process keeps open. A process inside it is started
 * through native/enter, which joins the clone's namespaces, forwards signals and ends exactly as the
 * program ended (code or signal).
 *
 * Processes started in one turn of the event loop (a launcher's loop over its ranks) wait behind
 * a gate (enter --gate) that opens for all of them once the turn is over: Node's spawn returns only
 * once the child has exec'd, and on a busy host the 32nd enter waited for CPU behind 31 ranks
 * already in MPI_Init (issue 13).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { join } from 'node:path';
import { ProvisionError } from '../../common/errors.js';
import { startTime, type ProcessIdentity } from '../../common/processes.js';
import type { Ticket } from '../../ticket/ticket.js';
import type { Clone, CloneInfo, CloneProcess, ExitStatus, SpawnOptions } from '../clone.js';

export class NetnsClone implements Clone {
  readonly id: number;
  readonly hostname: string;
  readonly address: string;
  readonly mac: string;
  readonly holder: ProcessIdentity;

  constructor(
    readonly ticket: Ticket,
    info: CloneInfo,
    private readonly nativeDir: string,
  ) {
    this.id = info.id;
    this.hostname = info.hostname;
    this.address = info.address;
    this.mac = info.mac;
    this.holder = { pid: Number(info.handle.holder), start: Number(info.handle.start) };
  }

  spawn(argv: string[], opts: SpawnOptions) {
    return spawnInClone(this.nativeDir, this.holder, argv, opts);
  }

  /**
   * Through the root of the clone's PID 1 (its holder child), which is in the clone's mount
   * namespace: its private /tmp and /dev/shm are reached from the host without a process of ours
   * in the clone (an enter costs a process start per clone).
   */
  async makeDir(path: string): Promise<void> {
    if (startTime(this.holder.pid) !== this.holder.start) throw new ProvisionError(`clone ${this.hostname} is gone (its holder ended)`);
    await mkdir(`/proc/${this.holder.pid}/root${path}`, { recursive: true, mode: 0o700 });
  }
}

export function spawnInClone(nativeDir: string, holder: ProcessIdentity, argv: string[], opts: SpawnOptions): CloneProcess {
  if (argv.length === 0) throw new Error('spawn in a clone: empty argv');
  const cwd = opts.cwd ?? process.cwd();
  const child = spawn(
    join(nativeDir, 'enter'),
    ['--start', String(holder.start), '--gate', '3', String(holder.pid), cwd, '--', ...argv],
    { env: opts.env, stdio: [opts.stdin === 'pipe' ? 'pipe' : 'ignore', 'pipe', 'pipe', 'pipe'] },
  );
  gateLater(child);
  const exited = new Promise<ExitStatus>((resolve) => {
    child.on('error', (e) => {
      child.stderr?.emit('data', Buffer.from(`snowflock: cannot start enter: ${e.message}\n`));
      resolve({ code: 125, signal: null });
    });
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
  return {
    stdin: child.stdin,
    stdout: child.stdout!,
    stderr: child.stderr!,
    exited,
    kill(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      try {
        child.kill(signal);
      } catch {
        /* already gone */
      }
    },
  };
}

/** Gates of the processes started in this turn of the event loop, opened together at its end. */
let gates: Writable[] = [];

function gateLater(child: ChildProcess): void {
  const gate = child.stdio[3] as Writable | null;
  if (!gate) return;
  // An enter that is gone already (it could not start) closed its end: nothing to open.
  gate.on('error', () => {});
  if (gates.length === 0) setImmediate(openGates);
  gates.push(gate);
}

function openGates(): void {
  for (const gate of gates.splice(0)) gate.end('g');
}
