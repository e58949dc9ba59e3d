/**
 * The configuration files of a simulated cluster's Slurm, munge and name resolution, rendered from
 * its layout. Pure functions: what the files say is decided here, where they go in simulated.ts.
 *
 * Why each non-default line is there (measured on Debian's Slurm 22.05, see DESIGN.md "Real Slurm
 * on one machine"):
 * - own ports and an own munge socket: several clusters (and a real Slurm) share the machine;
 * - every per-node path carries %n: all slurmds see the same files;
 * - cgroup/v1 in cgroup.conf: the machine has hybrid cgroups, which auto and v2 refuse;
 * - proctrack/linuxproc, task/none, no accounting: nothing that needs systemd, dbus or a database;
 * - config_overrides: each host takes the CPUs written here, not the machine's it can see;
 * - ReturnToService=2 and a short SlurmdTimeout: a restarted host comes back by itself, and a dead
 *   one is marked down within seconds rather than minutes (a killed slurmd looks idle until then);
 * - MailProg=/bin/true: there is no mail on a test machine.
 */

export interface SlurmLayout {
  clusterName: string;
  /** Short hostname of the machine (slurmctld only runs where its hostname is a SlurmctldHost). */
  controlHost: string;
  /** The controller's address on the underlay (the bridge's). */
  controlAddress: string;
  ctldPort: number;
  slurmdPort: number;
  mungeSocket: string;
  /** The cluster's directory: state, spool, logs. */
  dir: string;
  partition: string;
  cpusPerHost: number;
  memoryMiB: number;
  slurmdTimeoutS: number;
  hosts: { name: string; address: string }[];
}

export function slurmConf(l: SlurmLayout): string {
  const lines = [
    `# A simulated cluster of snowflock (src/hosts/simulated.ts); removed by its down.`,
    `ClusterName=${l.clusterName}`,
    `SlurmctldHost=${l.controlHost}(${l.controlAddress})`,
    `SlurmctldPort=${l.ctldPort}`,
    `SlurmdPort=${l.slurmdPort}`,
    `SlurmUser=root`,
    `SlurmdUser=root`,
    `AuthType=auth/munge`,
    `CredType=cred/munge`,
    `AuthInfo=socket=${l.mungeSocket}`,
    `StateSaveLocation=${l.dir}/ctld`,
    `SlurmctldPidFile=${l.dir}/ctld/slurmctld.pid`,
    `SlurmctldLogFile=${l.dir}/ctld/slurmctld.log`,
    `SlurmdSpoolDir=${l.dir}/nodes/%n/spool`,
    `SlurmdPidFile=${l.dir}/nodes/%n/slurmd.pid`,
    `SlurmdLogFile=${l.dir}/nodes/%n/slurmd.log`,
    // Each host has a private /tmp: jobs' temporary files (PMIx's included) never collide.
    `TmpFS=/tmp`,
    `MailProg=/bin/true`,
    `ProctrackType=proctrack/linuxproc`,
    `TaskPlugin=task/none`,
    `JobAcctGatherType=jobacct_gather/none`,
    `AccountingStorageType=accounting_storage/none`,
    `JobCompType=jobcomp/none`,
    `SelectType=select/cons_tres`,
    `SelectTypeParameters=CR_Core`,
    `SlurmdParameters=config_overrides`,
    `ReturnToService=2`,
    `SlurmdTimeout=${l.slurmdTimeoutS}`,
    `MpiDefault=none`,
    ...l.hosts.map(
      (h) =>
        `NodeName=${h.name} NodeAddr=${h.address} CPUs=${l.cpusPerHost} Sockets=1 CoresPerSocket=${l.cpusPerHost} ThreadsPerCore=1 RealMemory=${l.memoryMiB} State=UNKNOWN`,
    ),
    `PartitionName=${l.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP`,
  ];
  return lines.join('\n') + '\n';
}

/** cgroup.conf, found by Slurm next to slurm.conf. */
export function cgroupConf(): string {
  return 'CgroupPlugin=cgroup/v1\n';
}

/** /etc/hosts inside every host: the hosts by name, and the machine (the controller) by its own. */
export function hostsFile(l: Pick<SlurmLayout, 'controlHost' | 'controlAddress' | 'hosts'>): string {
  const lines = [
    '127.0.0.1 localhost',
    '::1 localhost ip6-localhost ip6-loopback',
    `${l.controlAddress} ${l.controlHost}`,
    ...l.hosts.map((h) => `${h.address} ${h.name}`),
  ];
  return lines.join('\n') + '\n';
}

/**
 * /etc/resolv.conf inside every host: no name server. The machine's are out of a host's reach, and a
 * lookup that falls through to DNS would wait for them (5 s per try); without one it fails at once.
 */
export function resolvConf(): string {
  return '# A simulated host has no DNS: names are in /etc/hosts.\noptions attempts:1 timeout:1\n';
}
