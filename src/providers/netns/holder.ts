/**
 * Talking to native/holder, which creates the namespaces of a batch of clones. The handshake (see
 * holder.c) guarantees that a clone never outlives an engine that did not record it: until we say
 * "go", holder kills every clone when its stdin closes, which it does when we die.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { ProvisionError } from '../../common/errors.js';

export interface HolderClone {
  hostname: string;
  /** Address for eth0 (configured on "net"). */
  address: string;
  /** MAC of its eth0: every sibling gets it as a permanent neighbour (no ARP between clones). */
  mac?: string;
}

export interface HolderOptions {
  nativeDir: string;
  /** Gateway address and prefix length for the clones' default route. */
  gateway: string;
  prefixLength: number;
  /** The largest packet each clone's TCP builds for its eth0 (BIG TCP above 64 KiB); the kernel's default without. */
  gsoMax?: number;
  /** Frames between the clones skip the bridge (native/common/shortcut.h). */
  shortcut?: boolean;
  /** Directories under /tmp that the clones share with the host (their /tmp is otherwise private). */
  shareTmp: string[];
  /** Put over /etc/hosts in every clone. */
  hostsFile?: string;
  /** Put over /etc/resolv.conf in every clone. */
  resolvFile?: string;
  /** PID:START of the owner the clones die with (the lifeline); none for a kept cluster. */
  owner?: string;
}

export class HolderBatch {
  private lines: string[] = [];
  private waiters: Array<(line: string | null) => void> = [];
  private closed = false;
  private stderr = '';

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    let buf = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      buf += chunk;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        this.push(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => (this.stderr += chunk));
    const end = () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w(null);
    };
    child.stdout.on('end', end);
    child.on('error', (e) => {
      this.stderr += e.message;
      end();
    });
    // A write after holder has gone must not crash us; the missing answer reports the failure.
    child.stdin.on('error', () => {});
  }

  /** Starts holder; resolves with the host PIDs of the clones (their PID 1) once all are set up. */
  static async start(clones: HolderClone[], opts: HolderOptions): Promise<{ batch: HolderBatch; pids: number[] }> {
    const args = ['--gateway', `${opts.gateway}/${opts.prefixLength}`];
    if (opts.gsoMax) args.push('--gso-max', String(opts.gsoMax));
    if (opts.shortcut) args.push('--shortcut');
    for (const dir of opts.shareTmp) args.push('--share-tmp', dir);
    if (opts.hostsFile) args.push('--hosts', opts.hostsFile);
    if (opts.resolvFile) args.push('--resolv', opts.resolvFile);
    if (opts.owner) args.push('--owner', opts.owner);
    for (const c of clones) args.push(`${c.hostname}=${c.address}${c.mac ? `,${c.mac}` : ''}`);
    // Own session: a Ctrl-C on the terminal reaches us, and we tear down; it must not hit the clones directly.
    const child = spawn(join(opts.nativeDir, 'holder'), args, { stdio: 'pipe', detached: true });
    const batch = new HolderBatch(child);
    const pids: number[] = [];
    for (;;) {
      const line = await batch.next();
      if (line === null) throw batch.failure('holder could not create the clones');
      if (line === 'ready') break;
      pids.push(Number(line));
    }
    if (pids.length !== clones.length || pids.some((p) => !Number.isInteger(p) || p <= 0)) {
      batch.abort();
      throw new Error(`holder reported ${pids.length} clones for ${clones.length}`);
    }
    return { batch, pids };
  }

  /**
   * Configures every clone's network from inside; their eth0 must be in place. Resolves with
   * holder's notes: what it could not do that only costs speed (the shortcut between clones).
   */
  async configureNetwork(): Promise<string[]> {
    this.child.stdin.write('net\n');
    const notes: string[] = [];
    for (let line = await this.next(); line !== 'configured'; line = await this.next()) {
      if (line?.startsWith('note: ')) notes.push(line.slice('note: '.length));
      else throw this.failure(`holder could not configure the clones' network${line ? `: ${line}` : ''}`);
    }
    return notes;
  }

  /** Lets the clones live on without us (their PIDs are in the state record now). */
  detach(): void {
    this.child.stdin.end('go\n');
    this.child.unref();
  }

  /** Ends every clone of the batch (only before detach). */
  abort(): void {
    this.child.stdin.end();
  }

  private push(line: string): void {
    const w = this.waiters.shift();
    if (w) w(line);
    else this.lines.push(line);
  }

  private next(): Promise<string | null> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** What creation failed of, as the user sees it (a clone killed meanwhile, a kernel refusal). */
  private failure(what: string): ProvisionError {
    const why = this.stderr.trim().split('\n').filter(Boolean).join('; ');
    return new ProvisionError(why ? `${what}: ${why}` : what);
  }
}
