/**
 * SSH into VM clones: the user's way in, and a launch channel to compare with the agent
 * (`--launch-channel ssh`). dropbear in the guest, ssh2 here; ed25519 keys and curve25519 key
 * exchange (the cheapest under emulation), TCP_NODELAY, one connection per clone opened on first
 * use after the clone resumed (never one to the template: clones would inherit it), every process
 * a channel multiplexed on it. The guest's host key is the installation's (see image/ssh-keys.ts)
 * and is checked on every connection.
 *
 * dropbear takes no environment from the client, so the command line sets it: the process runs as
 * `cd DIR && exec env -i K=V... ARGV` under the guest's /bin/sh.
 */
import { readFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { Client, type ClientChannel } from 'ssh2';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { shellQuote } from '../../common/shell.js';
import { endStreams } from '../../common/streams.js';
import { sshKeys, type SshKeys } from '../../image/ssh-keys.js';
import type { CloneProcess, ExitStatus, SpawnOptions } from '../clone.js';

const ALGORITHMS = {
  kex: ['curve25519-sha256', 'curve25519-sha256@libssh.org'],
  serverHostKey: ['ssh-ed25519'],
  cipher: ['chacha20-poly1305@openssh.com', 'aes128-ctr'],
} as const;

export function remoteCommand(argv: string[], opts: SpawnOptions): string {
  const env = Object.entries(opts.env).map(([k, v]) => shellQuote(`${k}=${v}`));
  const run = ['exec', 'env', '-i', ...env, ...argv.map(shellQuote)].join(' ');
  return `cd ${shellQuote(opts.cwd ?? '/')} && ${run}`;
}

let keys: Promise<SshKeys> | null = null;

/** One SSH connection to one clone, opened on first use. */
export class SshLink {
  private conn: Promise<Client> | null = null;

  constructor(
    readonly address: string,
    readonly label: string,
  ) {}

  /** dropbear starts when the clone takes its identity: a connection right after may come too early. */
  private async open(): Promise<Client> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        return await this.attempt();
      } catch (e) {
        if (!/ECONNREFUSED/.test((e as Error).message) || Date.now() > deadline) throw e;
        await sleep(100);
      }
    }
  }

  private attempt(): Promise<Client> {
    keys ??= sshKeys();
    return keys.then(
      (k) =>
        new Promise<Client>((resolve, reject) => {
          const expected = Buffer.from(k.hostPublic.split(' ')[1]!, 'base64');
          const sock = tcpConnect(22, this.address);
          sock.setNoDelay(true);
          // Never the reason this process stays alive: a VM torn down under an open connection
          // leaves it half-open (no FIN), and the launcher has handles of its own while it waits.
          sock.unref();
          const c = new Client();
          c.once('ready', () => resolve(c));
          c.once('error', (e) => reject(new Error(`ssh to ${this.label}: ${e.message}`)));
          c.on('close', () => (this.conn = null));
          c.connect({
            sock,
            username: 'root',
            privateKey: readFileSync(k.clientKey),
            hostVerifier: (key: Buffer) => key.equals(expected),
            algorithms: { kex: [...ALGORITHMS.kex], serverHostKey: [...ALGORITHMS.serverHostKey], cipher: [...ALGORITHMS.cipher] },
            readyTimeout: 60_000,
          });
        }),
    );
  }

  private client(): Promise<Client> {
    this.conn ??= this.open();
    this.conn.catch(() => (this.conn = null));
    return this.conn;
  }

  /** Starts a process over SSH; same semantics as the agent's spawn. */
  spawn(argv: string[], opts: SpawnOptions): CloneProcess {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const stdin = opts.stdin === 'pipe' ? new PassThrough() : null;
    let channel: ClientChannel | null = null;
    let pendingSignal: NodeJS.Signals | null = null;
    let status: ExitStatus | null = null;
    const exited = new Promise<ExitStatus>((resolve) => {
      const finish = (s: ExitStatus) => {
        if (status) return;
        status = s;
        endStreams([stdout, stderr], () => resolve(s));
      };
      this.client()
        .then((c) => {
          c.exec(remoteCommand(argv, opts), (err, ch) => {
            if (err) {
              stderr.write(`snowflock: ${this.label}: ${err.message}\n`);
              return finish({ code: 127, signal: null });
            }
            channel = ch;
            let exit: ExitStatus = { code: null, signal: 'SIGKILL' };
            ch.on('exit', (code: number | null, signal?: string) => {
              exit = code !== null && code !== undefined ? { code, signal: null } : { code: null, signal: signal ? (`SIG${signal}` as NodeJS.Signals) : null };
              // The process is gone: end our side too, or dropbear keeps the channel open for its stdin.
              if (stdin) stdin.unpipe(ch);
              ch.end();
            });
            ch.stdout.pipe(stdout, { end: false });
            ch.stderr.pipe(stderr, { end: false });
            ch.on('close', () => finish(exit));
            if (stdin) stdin.pipe(ch);
            else ch.end();
            if (pendingSignal) ch.signal(pendingSignal.replace(/^SIG/, ''));
          });
        })
        .catch((e: Error) => {
          stderr.write(`snowflock: ${e.message}\n`);
          finish({ code: 255, signal: null });
        });
    });
    return {
      stdin,
      stdout,
      stderr,
      exited,
      kill: (signal: NodeJS.Signals = 'SIGTERM') => {
        if (status) return;
        if (channel) channel.signal(signal.replace(/^SIG/, ''));
        else pendingSignal = signal;
      },
    };
  }

  /** Ends the connection at once: the VM may be gone already (teardown), and a polite
   *  disconnect to a dead peer would hold this process open until TCP gives up. */
  close(): void {
    void this.conn?.then((c) => c.destroy()).catch(() => undefined);
    this.conn = null;
  }
}
