/**
 * sfmpirun --real-hosts: the hosts of -hosts are machines, and the agents of those that are not
 * this one are started over SSH, with the user's key from ~/.ssh and the hosts' keys checked
 * against ~/.ssh/known_hosts. The hosts are simulated hosts each running a real OpenSSH sshd
 * (Debian's openssh-server); the launcher runs on one of them, which holds clones itself.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import type { JobReport } from '../../launcher/job/report.js';
import { down, hostCommand, up, type SimClusterRecord } from '../../src/hosts/simulated.js';
import { execa } from 'execa';
import { assertNothingLeft, onHost, useHostsSettings } from '../helpers/hosts.js';
import { program } from '../helpers/programs.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { stateDir } = useHostsSettings();
const SFMPIRUN = [process.execPath, '--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), join(root, 'launcher/bin/sfmpirun.ts')];

function listening(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: address, port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

describe('hosts: --real-hosts over SSH to simulated hosts running sshd', function () {
  this.timeout(600_000);
  let rec: SimClusterRecord;
  let dir: string;
  /** HOME directories: one whose key the hosts accept and whose known_hosts has them, one without known hosts, one with a stranger's key. */
  const home = { good: '', unknown: '', stranger: '' };

  before(async function () {
    execFileSync('make', ['-s', '-C', join(root, 'native')], { stdio: 'inherit' });
    program('ring', 'mpich');
    rec = await up({ hosts: 2, name: `hh${process.pid % 100000}` });
    dir = mkdtempSync('/var/tmp/sfho-ssh-');
    for (const k of Object.keys(home) as Array<keyof typeof home>) {
      home[k] = join(dir, `home-${k}`);
      mkdirSync(join(home[k], '.ssh'), { recursive: true, mode: 0o700 });
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(home[k], '.ssh', 'id_ed25519')]);
    }
    writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(home.good, '.ssh', 'id_ed25519.pub')));
    const known: string[] = [];
    for (const h of rec.hosts) {
      const key = join(dir, `host_${h.name}`);
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
      known.push(`${h.name},${h.address} ${readFileSync(`${key}.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}`);
      const config = join(dir, `sshd_${h.name}`);
      writeFileSync(
        config,
        [
          `ListenAddress ${h.address}`,
          `HostKey ${key}`,
          `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
          'PermitRootLogin prohibit-password',
          'PasswordAuthentication no',
          'KbdInteractiveAuthentication no',
          'UsePAM no',
          'StrictModes no',
          'PidFile /run/sshd-test.pid',
        ].join('\n') + '\n',
      );
      // sshd runs on the host until the host goes (down kills every process of it).
      const { file, args } = hostCommand(h, ['sh', '-c', `mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -f ${config}`]);
      execa(file, args, { reject: false });
    }
    writeFileSync(join(home.good, '.ssh', 'known_hosts'), known.join('\n') + '\n');
    writeFileSync(join(home.stranger, '.ssh', 'known_hosts'), known.join('\n') + '\n');
    const deadline = Date.now() + 30_000;
    for (const h of rec.hosts) while (!(await listening(h.address, 22))) {
      if (Date.now() > deadline) throw new Error(`sshd on ${h.name} does not listen`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  after(async function () {
    if (rec) await down(rec.name);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** sfmpirun on host 0, as a user whose HOME is `h`. */
  const sfmpirun = (h: string, args: string[]) => onHost(rec.hosts[0]!, ['env', `HOME=${h}`, ...SFMPIRUN, ...args], { cwd: dir, timeout: 300_000 });
  const hosts = () => rec.hosts.map((h) => h.name).join(',');

  it('runs an MPICH ring over this host and another reached over SSH', async function () {
    const report = join(dir, 'ring.json');
    const r = await sfmpirun(home.good, ['--real-hosts', '-hosts', hosts(), '--report', report, '-np', '4', program('ring', 'mpich')]);
    expect(r.exitCode, r.stderr).to.equal(0);
    expect(r.stdout).to.include('ring token 8 after 2 laps of 4 ranks');
    const rep = JSON.parse(readFileSync(report, 'utf8')) as JobReport;
    // One clone per named host, two ranks each: the hostfile's meaning, on real hosts.
    expect(rep.clones.map((c) => c.host)).to.deep.equal(rec.hosts.map((h) => h.name));
    expect(rep.ranks.map((x) => rep.clones[x.clone]!.host)).to.deep.equal([rec.hosts[0]!.name, rec.hosts[0]!.name, rec.hosts[1]!.name, rec.hosts[1]!.name]);
    await assertNothingLeft(rec, [rep.ticket!], stateDir);
  });

  it('refuses a host whose key is not in known_hosts, and a login the host refuses, in one line each; nothing is left', async function () {
    const other = rec.hosts[1]!.name;
    const unknown = await sfmpirun(home.unknown, ['--real-hosts', '-hosts', hosts(), '-np', '2', '/bin/true']);
    expect(unknown.exitCode).to.equal(4);
    expect(unknown.stderr.trim()).to.equal(`sfmpirun: host ${other}: its SSH host key is not in ~/.ssh/known_hosts; check it and add it (ssh-keyscan ${other} >> ~/.ssh/known_hosts)`);
    const stranger = await sfmpirun(home.stranger, ['--real-hosts', '-hosts', hosts(), '-np', '2', '/bin/true']);
    expect(stranger.exitCode).to.equal(4);
    expect(stranger.stderr.trim()).to.equal(`sfmpirun: host ${other}: SSH refused every key of ~/.ssh and the ssh-agent for root`);
    const records = await onHost(rec.hosts[0]!, ['sh', '-c', `ls ${stateDir}/tickets 2>/dev/null | wc -l`]);
    expect(records.stdout.trim()).to.equal('0');
  });
});
