/**
 * SSH to the real hosts of a job (--real-hosts), as OpenSSH's client would do it for the user: the
 * user's keys from ~/.ssh (id_ed25519, id_ecdsa, id_rsa) and the ssh-agent of SSH_AUTH_SOCK, the
 * host's key checked against ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts (plain and hashed
 * entries), never accepted blindly. One session runs one command (the host's agent) with `input`
 * as its first stdin bytes; the session stays open as long as the job: its end is the agent's sign
 * that the launcher is gone.
 */
import { createHmac } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
// ssh2 (about 60 CommonJS modules, ~20 ms to compile) is loaded when a session opens: every job
// imports this module through its host starters, and most jobs run on this host alone.
import type { AnyAuthMethod, Client, ClientChannel } from 'ssh2';

export interface SshTarget {
  /** The host's name, as the user gave it (known_hosts is searched for it and for its address). */
  host: string;
  address: string;
  port: number;
  username: string;
}

const KEY_FILES = ['id_ed25519', 'id_ecdsa', 'id_rsa'];

/** known_hosts lines that name `names` (plain or hashed): their key blobs. */
export function knownKeys(text: string, names: string[]): Buffer[] {
  const keys: Buffer[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const words = line.split(/\s+/);
    if (words[0]!.startsWith('@')) {
      // @revoked and @cert-authority entries are not plain host keys.
      continue;
    }
    const [patterns, , blob] = words;
    if (!patterns || !blob) continue;
    if (patterns.split(',').some((p) => names.some((n) => matches(p, n)))) keys.push(Buffer.from(blob, 'base64'));
  }
  return keys;
}

function matches(pattern: string, name: string): boolean {
  const hashed = /^\|1\|([^|]+)\|(.+)$/.exec(pattern);
  if (hashed) return createHmac('sha1', Buffer.from(hashed[1]!, 'base64')).update(name).digest('base64') === hashed[2];
  return pattern === name;
}

function knownHostsText(): string {
  return [join(homedir(), '.ssh', 'known_hosts'), '/etc/ssh/ssh_known_hosts']
    .filter((f) => existsSync(f))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');
}

function authMethods(username: string): AnyAuthMethod[] {
  const methods: AnyAuthMethod[] = [];
  if (process.env.SSH_AUTH_SOCK) methods.push({ type: 'agent', username, agent: process.env.SSH_AUTH_SOCK });
  for (const f of KEY_FILES) {
    const path = join(homedir(), '.ssh', f);
    if (existsSync(path)) methods.push({ type: 'publickey', username, key: readFileSync(path) });
  }
  return methods;
}

export interface SshSession {
  failed: Promise<string>;
  stop(): Promise<void>;
}

/** Opens a session to the target running `command`, writes `input`; one line on any refusal. */
export async function sshSession(t: SshTarget, command: string, input: string, what: string): Promise<SshSession> {
  const names = t.port === 22 ? [t.host, t.address] : [`[${t.host}]:${t.port}`, `[${t.address}]:${t.port}`];
  const known = knownKeys(knownHostsText(), names);
  const auth = authMethods(t.username);
  if (known.length === 0) {
    throw new Error(`host ${t.host}: its SSH host key is not in ~/.ssh/known_hosts; check it and add it (ssh-keyscan ${t.host} >> ~/.ssh/known_hosts)`);
  }
  if (auth.length === 0) throw new Error(`host ${t.host}: no SSH key in ~/.ssh (${KEY_FILES.join(', ')}) and no ssh-agent (SSH_AUTH_SOCK) to log in with`);
  let hostKeyRefused = false;
  const { Client: SshClient } = await import('ssh2');
  const conn = new SshClient();
  return new Promise<SshSession>((resolve, reject) => {
    conn.once('error', (e: Error) => {
      if (hostKeyRefused) reject(new Error(`host ${t.host}: its SSH host key is not the one ~/.ssh/known_hosts has for it; refusing to log in`));
      else if (/authentication methods failed/.test(e.message)) reject(new Error(`host ${t.host}: SSH refused every key of ~/.ssh and the ssh-agent for ${t.username}`));
      else reject(new Error(`host ${t.host}: SSH to ${t.address}:${t.port} failed: ${e.message}`));
    });
    conn.once('ready', () => {
      conn.exec(command, (err, stream: ClientChannel) => {
        if (err) {
          conn.end();
          reject(new Error(`host ${t.host}: cannot run the agent over SSH: ${err.message}`));
          return;
        }
        resolve(session(conn, stream, input, what));
      });
    });
    conn.connect({
      host: t.address,
      port: t.port,
      username: t.username,
      authHandler: auth,
      hostVerifier: (key: Buffer) => {
        const ok = known.some((k) => k.equals(key));
        hostKeyRefused = !ok;
        return ok;
      },
      readyTimeout: 20_000,
      keepaliveInterval: 5000,
    });
  });
}

function session(conn: Client, stream: ClientChannel, input: string, what: string): SshSession {
  let said = '';
  let stopping = false;
  stream.stderr.setEncoding('utf8').on('data', (d: string) => (said = (said + d).slice(-4000)));
  stream.resume();
  stream.write(input);
  let status: number | null = null;
  stream.once('exit', (code: number | null) => (status = code));
  const closed = new Promise<void>((r) => {
    stream.once('close', () => r());
    conn.once('close', () => r());
  });
  const failed = closed.then(() => {
    if (stopping) return new Promise<string>(() => {});
    const lines = said.split('\n').map((l) => l.trim()).filter(Boolean);
    return `${what} ended (status ${status ?? 'unknown'})${lines.length ? `: ${lines.slice(-3).join(' | ')}` : ''}`;
  });
  return {
    failed,
    stop: async () => {
      stopping = true;
      stream.end();
      const timer = setTimeout(() => conn.end(), 10_000);
      await closed;
      clearTimeout(timer);
      conn.end();
    },
  };
}
