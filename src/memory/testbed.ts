/**
 * Simulated hosts for memory on demand, on this machine, for tests and benchmarks: a parent's host
 * and clone hosts, each a shell holding its own network, mount, UTS and IPC namespaces, with a
 * private /dev/shm (so the template's RAM file cannot be opened there, while the machine's other
 * files are seen as a cluster's shared file system is), on one underlay bridge of the machine
 * through a veth each. No Slurm: src/hosts/simulated.ts makes simulated clusters with one.
 *
 * Why not native/simhost: it gives a host its own PID namespace and /proc, and a program entered
 * into such a host's mount namespace but not its PID namespace finds no /proc/self there. QEMU
 * cannot enter the host's network namespace (its tap is on the ticket's bridge, and a tap cannot
 * move between namespaces), so it joins the mount namespace only; fusermount3 and umount read
 * /proc/self/mountinfo. Memory on demand needs the host's files and network, not its PIDs.
 *
 * Lifetime: a host lives as long as its holder's stdin pipe from this process, so a process killed
 * outright takes its hosts' namespaces and veths with it (the lifelines of what runs there end
 * those processes). The bridge is removed by destroy(); everything is named <prefix><id>.
 *
 * Links: this kernel has no netem. shape() limits the rate with tc tbf on every host's underlay
 * link; delay comes from native/memory/netdelay (a TCP relay) where a benchmark wants it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { runCommand } from '../common/command.js';
import { startTime } from '../common/processes.js';
import type { SimulatedHost } from './place.js';

export interface TestHost extends SimulatedHost {
  /** Its underlay address. */
  address: string;
  /** Its veth's end on the machine's bridge. */
  link: string;
  /** Runs a shell script on the host (all its namespaces). */
  sh(script: string): Promise<{ exitCode: number | null; stdout: string; stderr: string }>;
  /** The host's mount table, as its processes see it. */
  mounts(): string;
}

export interface Testbed {
  id: string;
  /** A directory of the run, seen by every host. */
  dir: string;
  bridge: string;
  hosts: TestHost[];
  /** A rate limit on every host's underlay link (tc tbf, e.g. "1gbit"); null removes it. */
  shape(rate: string | null): Promise<void>;
  /** A host's underlay link up or down (a network that dies). */
  linkUp(host: TestHost, up: boolean): Promise<void>;
  destroy(): Promise<void>;
}

export interface TestbedOptions {
  /** Link and host name prefix (a helper's own, e.g. "sfmm"). */
  prefix: string;
  /** Host names after <prefix><id>- ("parent", "b", "c"). */
  names: string[];
  /** First three octets of the underlay /24 ("10.232.201"). */
  net: string;
  /** The run directory's parent (every host sees the machine's files but /dev/shm). */
  root: string;
}

interface Holder {
  child: ChildProcess;
}

async function startHost(name: string): Promise<{ holder: Holder; pid: number; start: number }> {
  const script = ['set -e', `hostname ${name}`, 'ip link set lo up', `mount -t tmpfs -o size=1g,mode=1777 ${name}-shm /dev/shm`, 'echo ready', 'read _ || true'].join('; ');
  const child = spawn('unshare', ['--net', '--mount', '--uts', '--ipc', '--propagation', 'private', '--', 'sh', '-c', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const ready = await new Promise<boolean>((resolve) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => d.includes('ready') && resolve(true));
    child.once('exit', () => resolve(false));
  });
  const pid = child.pid ?? 0;
  const start = ready ? startTime(pid) : null;
  if (!ready || start === null) {
    child.kill('SIGKILL');
    throw new Error(`simulated host ${name} did not start: ${err.trim() || 'its holder exited'}`);
  }
  return { holder: { child }, pid, start };
}

export async function createTestbed(o: TestbedOptions): Promise<Testbed> {
  const id = randomBytes(2).toString('hex');
  const dir = join(o.root, `run-${id}`);
  mkdirSync(dir, { recursive: true });
  const bridge = `${o.prefix}${id}u`;
  const holders: Holder[] = [];
  const hosts: TestHost[] = [];
  const destroy = async () => {
    // The underlay links first, while their namespaces live: a namespace whose last process is
    // gone is freed later by the kernel, and its veth pairs with it (a leftover for a moment).
    for (const i of o.names.keys()) await runCommand('ip', ['link', 'del', `${o.prefix}${id}h${i}`], { reject: false });
    await Promise.all(
      holders.map(async (h) => {
        if (h.child.exitCode !== null || h.child.signalCode !== null) return;
        const gone = new Promise((r) => h.child.once('exit', r));
        h.child.stdin!.end();
        const t = setTimeout(() => h.child.kill('SIGKILL'), 3000);
        await gone;
        clearTimeout(t);
      }),
    );
    await runCommand('ip', ['link', 'del', bridge], { reject: false });
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await runCommand('ip', ['link', 'add', bridge, 'type', 'bridge']);
    await runCommand('ip', ['link', 'set', bridge, 'up']);
    for (const [i, short] of o.names.entries()) {
      const name = `${o.prefix}${id}-${short}`;
      const { holder, pid, start } = await startHost(name);
      holders.push(holder);
      const link = `${o.prefix}${id}h${i}`;
      const address = `${o.net}.${i + 1}`;
      await runCommand('ip', ['link', 'add', link, 'type', 'veth', 'peer', 'name', `${link}x`, 'netns', String(pid)]);
      await runCommand('ip', ['link', 'set', link, 'master', bridge, 'up']);
      const enter = ['nsenter', '-t', String(pid), '-n', '-m', '-u', '-i', '--'];
      const sh = async (script: string) => {
        const r = await runCommand(enter[0]!, [...enter.slice(1), 'sh', '-c', script], { reject: false });
        return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
      };
      const r = await sh(`ip link set ${link}x name eth0 && ip addr add ${address}/24 dev eth0 && ip link set eth0 up && ip link set lo up`);
      if (r.exitCode !== 0) throw new Error(`configuring ${name}'s underlay: ${r.stderr.trim()}`);
      hosts.push({
        name, pid, start, address, link, sh,
        mounts: () => {
          try {
            return readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
          } catch {
            return '';
          }
        },
      });
    }
    // Until both ends carry frames the first packets are lost (see simulated.ts, forwarding()).
    for (const h of hosts) {
      for (let i = 0; i < 100; i++) {
        const ok = (await h.sh(`ping -c1 -W1 ${hosts[0]!.address} >/dev/null 2>&1 || ping -c1 -W1 ${h.address} >/dev/null 2>&1`)).exitCode === 0;
        if (ok) break;
        await new Promise((res) => setTimeout(res, 20));
      }
    }
    return {
      id, dir, bridge, hosts, destroy,
      shape: async (rate) => {
        for (const h of hosts) {
          const r = await h.sh(rate ? `tc qdisc replace dev eth0 root tbf rate ${rate} burst 256kb latency 50ms` : `tc qdisc del dev eth0 root 2>/dev/null || true`);
          if (r.exitCode !== 0) throw new Error(`tc on ${h.name}: ${r.stderr.trim()}`);
        }
      },
      linkUp: async (h, up) => {
        await runCommand('ip', ['link', 'set', h.link, up ? 'up' : 'down']);
      },
    };
  } catch (e) {
    await destroy();
    throw e;
  }
}

/** Live processes whose command line mentions one of the needles. */
function processesOf(needles: string[]): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (/^\S+ \(.*\) [ZX]/.test(stat)) continue;
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
      if (needles.some((n) => cmd.includes(n))) found.push(`process ${pid}: ${cmd.slice(0, 140)}`);
    } catch {
      /* gone meanwhile */
    }
  }
  return found;
}

/** What a testbed left on this machine: links, processes, mounts, files. */
export function testbedLeftovers(t: Pick<Testbed, 'id' | 'dir'>, prefix: string): string[] {
  const left: string[] = [];
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
  for (const l of links.split('\n')) {
    const name = /^\d+: ([^:@]+)/.exec(l)?.[1];
    if (name?.startsWith(`${prefix}${t.id}`)) left.push(`link ${name}`);
  }
  left.push(...processesOf([t.dir, `${prefix}${t.id}`]));
  for (const m of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) if (m.includes(t.dir) || m.includes('fuse.memtap')) left.push(`mount ${m}`);
  if (existsSync(t.dir)) left.push(`dir ${t.dir}`);
  return left;
}
