/**
 * SSH keys made once per installation (never shipped): the guests' host key (dropbear format,
 * baked into every image) and the client key the host uses to log in (OpenSSH format for ssh2,
 * its public half in the guests' authorized_keys). ed25519: the fastest under emulation.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCommand } from '../common/command.js';
import { HostError } from '../common/errors.js';
import { cacheDir } from './cache.js';

export interface SshKeys {
  /** dropbear host key (guest side). */
  hostKey: string;
  /** The host key's public line ("ssh-ed25519 AAAA..."), to verify the guests. */
  hostPublic: string;
  /** Client private key, OpenSSH format. */
  clientKey: string;
  /** The client's public line, for authorized_keys. */
  clientPublic: string;
}

async function publicLine(dropbearKey: string): Promise<string> {
  const r = await runCommand('dropbearkey', ['-y', '-f', dropbearKey]);
  const line = r.stdout.split('\n').find((l) => l.startsWith('ssh-ed25519 '));
  if (!line) throw new Error(`dropbearkey -y printed no ed25519 public key for ${dropbearKey}`);
  return line.split(' ').slice(0, 2).join(' ') + ' snowflock';
}

async function makeKey(path: string): Promise<void> {
  rmSync(path, { force: true });
  try {
    await runCommand('dropbearkey', ['-t', 'ed25519', '-f', path]);
  } catch {
    throw new HostError('cannot run dropbearkey', 'install the Debian package dropbear-bin (npm run setup does)');
  }
}

export async function sshKeys(): Promise<SshKeys> {
  const dir = cacheDir('ssh');
  const keys = {
    hostKey: join(dir, 'host_ed25519.dropbear'),
    hostPublic: join(dir, 'host_ed25519.pub'),
    clientKey: join(dir, 'client_ed25519'),
    clientPublic: join(dir, 'client_ed25519.pub'),
  };
  if (!Object.values(keys).every(existsSync)) {
    const clientDropbear = join(dir, 'client_ed25519.dropbear');
    await makeKey(keys.hostKey);
    await makeKey(clientDropbear);
    rmSync(keys.clientKey, { force: true });
    await runCommand('dropbearconvert', ['dropbear', 'openssh', clientDropbear, keys.clientKey]);
    writeFileSync(keys.hostPublic, (await publicLine(keys.hostKey)) + '\n');
    writeFileSync(keys.clientPublic, (await publicLine(clientDropbear)) + '\n', { mode: 0o644 });
    rmSync(clientDropbear);
  }
  return {
    hostKey: keys.hostKey,
    hostPublic: readFileSync(keys.hostPublic, 'utf8').trim(),
    clientKey: keys.clientKey,
    clientPublic: readFileSync(keys.clientPublic, 'utf8').trim(),
  };
}
