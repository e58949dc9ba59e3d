/**
 * `snowflock setup`: prepares a Debian host for snowflock installed from npm. It installs the
 * Debian packages snowflock drives that are missing (setup/packages.txt, the list a source
 * checkout's .ci/setup installs too) and fetches the guest kernel for VM clones into the cache
 * (src/image/kernel.ts), with this installation's SSH keys. It says what it will do first, asks on
 * a terminal (--yes: unattended), and needs root only when there is something to do.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { runCommand } from '../../src/common/command.js';
import { settings } from '../../src/common/config.js';
import { HostError, UsageError } from '../../src/common/errors.js';
import { projectRoot } from '../../src/common/paths.js';
import { findInPath } from '../../src/doctor/checks.js';
import { cachedGuestKernel, guestKernel } from '../../src/image/kernel.js';
import { sshKeys } from '../../src/image/ssh-keys.js';

export const PACKAGE_LIST = 'setup/packages.txt';

/** The package names of the list: one a line, '#' starts a comment, blank lines are nothing. */
export function parsePackageList(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter((l) => l !== '');
}

export function readPackageList(root: string = projectRoot()): string[] {
  const path = join(root, PACKAGE_LIST);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    throw new HostError(`the package list ${path} is missing`, 'reinstall snowflock');
  }
  return parsePackageList(text);
}

/** Those of `packages` dpkg does not have installed (one dpkg-query for all of them). */
export async function missingPackages(packages: string[]): Promise<string[]> {
  // Unknown names make dpkg-query exit 1 and print nothing for them: they are missing.
  const r = await runCommand('dpkg-query', ['-W', '-f=${Package} ${Status}\\n', ...packages], { reject: false });
  const installed = new Set(
    r.stdout
      .split('\n')
      .filter((l) => l.endsWith(' install ok installed'))
      .map((l) => l.split(' ')[0]),
  );
  return packages.filter((p) => !installed.has(p));
}

export interface SetupPlan {
  missing: string[];
  /** Whether the guest kernel must be fetched. */
  kernel: boolean;
}

export function describePlan(plan: SetupPlan, cacheDir: string): string[] {
  const steps: string[] = [];
  if (plan.missing.length) steps.push(`install Debian packages (apt-get install): ${plan.missing.join(' ')}`);
  if (plan.kernel) steps.push(`fetch the guest kernel for VM clones (Debian's linux-image-cloud-amd64, unpacked, not installed) into ${join(cacheDir, 'kernel')}`);
  return steps;
}

async function ask(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}

/** Runs apt-get with its output shown (the user watches a long install), failing with one line. */
async function aptGet(args: string[]): Promise<void> {
  const r = await runCommand('apt-get', args, { stdio: 'inherit', reject: false, env: { DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.exitCode !== 0) throw new HostError(`apt-get ${args[0]} failed (exit ${r.exitCode})`, "see apt's messages above, fix what they say, and run snowflock setup again");
}

/**
 * snowflock starts one nfs-ganesha per ticket, bound to the ticket's gateway (src/workdir/); the
 * packaged service, which systemd hosts start on install, would hold port 2049 on every address.
 */
async function disablePackagedGanesha(): Promise<void> {
  if (!existsSync('/run/systemd/system') || !findInPath('systemctl')) return;
  await runCommand('systemctl', ['disable', '--now', 'nfs-ganesha.service'], { reject: false });
}

/** The kernel, fetched; apt's lists are refreshed once when the cloud kernel cannot be found. */
async function fetchKernel(listsFresh: boolean): Promise<string> {
  try {
    return (await guestKernel()).version;
  } catch (e) {
    if (listsFresh) throw e;
    await aptGet(['update', '-q']);
    return (await guestKernel()).version;
  }
}

export async function setupCommand(args: { yes?: boolean }): Promise<number> {
  const packages = readPackageList();
  if (!findInPath('dpkg-query') || !findInPath('apt-get')) {
    throw new HostError('setup installs Debian packages with apt-get, and this host has no apt-get', `install these yourself: ${packages.join(' ')}`);
  }
  const plan: SetupPlan = { missing: await missingPackages(packages), kernel: cachedGuestKernel() === null };
  const cache = settings().cacheDir;
  const steps = describePlan(plan, cache);
  const root = process.getuid?.() === 0;
  if (steps.length === 0) {
    // The keys are made on the first VM job too; as root, make them now, while we are here.
    if (root) await sshKeys();
    process.stdout.write(`snowflock setup: nothing to do: the ${packages.length} Debian packages are installed and the guest kernel is in ${join(cache, 'kernel')}\n`);
    return 0;
  }
  if (!root) throw new HostError('setup needs root to install Debian packages and fill the cache', 'run it as root: sudo snowflock setup');

  process.stdout.write(`snowflock setup will:\n${steps.map((s) => `  - ${s}\n`).join('')}`);
  if (!args.yes) {
    if (!process.stdin.isTTY) throw new UsageError('not asking without a terminal: run snowflock setup --yes to do this unattended');
    if (!(await ask('Go ahead? [y/N] '))) {
      process.stdout.write('snowflock setup: nothing done\n');
      return 1;
    }
  }
  if (plan.missing.length) {
    await aptGet(['update', '-q']);
    await aptGet(['install', '-y', '-q', '--no-install-recommends', ...plan.missing]);
    if (plan.missing.includes('nfs-ganesha')) await disablePackagedGanesha();
  }
  const kernel = await fetchKernel(plan.missing.length > 0);
  await sshKeys();
  process.stdout.write(`snowflock setup: done (guest kernel ${kernel}); snowflock doctor shows what this host has\n`);
  return 0;
}
