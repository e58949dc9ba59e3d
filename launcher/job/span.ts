/**
 * The engine of a job whose clones span hosts (plan.hosts is not this host alone): the
 * coordinator (src/hosts/coordinator.ts) over the launcher's own Engine, its agents started the
 * way the hosts came: as a Slurm job step inside an allocation, over SSH for --real-hosts.
 */
import { userInfo } from 'node:os';
import { settings } from '../../src/common/config.js';
import { Engine } from '../../src/engine.js';
import { ClusterEngine } from '../../src/hosts/coordinator.js';
import { srunStarter, sshStarter } from '../../src/hosts/starters.js';
import type { JobPlan } from './plan.js';
import type { JobEngine } from './run.js';

export function spanningEngine(local: JobEngine, plan: JobPlan): ClusterEngine {
  if (!(local instanceof Engine)) throw new Error('a job over hosts needs the clone engine itself');
  const { hosts } = plan;
  const layout = { hosts: hosts.hosts.map((h) => ({ name: h.name, local: h.local })), cloneHosts: hosts.cloneHosts };
  const user = userInfo().username;
  const starter = hosts.source === 'slurm' ? srunStarter(local.config.nativeDir) : sshStarter((h) => ({ host: h, address: h, port: 22, username: user }));
  const s = settings();
  return new ClusterEngine(local, layout, starter, { beatMs: Math.min(1000, s.hostTimeoutMs / 4), deadMs: s.hostTimeoutMs, startTimeoutMs: s.agentTimeoutMs });
}
