/**
 * Hostfiles and host lists, in both dialects. On a clone cluster the host names themselves mean
 * nothing (every clone is fresh); what a hostfile says is the shape of the cluster the user wants:
 * how many hosts, and how many slots (ranks) on each.
 *
 *   Hydra:    `host`, `host:N`          (-f / -machinefile / -hostfile, -hosts a:2,b:2)
 *   Open MPI: `host slots=N [max_slots=M]` (--hostfile / --machinefile, -H a:2,b,b)
 *
 * A host named twice adds up its slots, as Open MPI counts `-H a,a`.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { UsageError } from '../../src/common/errors.js';

export interface Host {
  name: string;
  slots: number;
}

const NAME = /^[A-Za-z0-9_.\-[\]:%]+$/;

/** Reads a hostfile of either dialect. `option` is how the user named it, for messages. */
export function readHostfile(path: string, cwd: string, option: string): Host[] {
  const full = resolve(cwd, path);
  let text: string;
  try {
    text = readFileSync(full, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read the hostfile '${path}' of ${option} (${(e as NodeJS.ErrnoException).code ?? 'error'}); give an existing file`);
  }
  const hosts: Host[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    const host = parseHostfileLine(line);
    if (!host) {
      throw new UsageError(
        `hostfile '${path}' line ${i + 1}: cannot read '${line}'; expected 'host', 'host:N' (Hydra) or 'host slots=N' (Open MPI)`,
      );
    }
    addHost(hosts, host);
  });
  if (hosts.length === 0) throw new UsageError(`the hostfile '${path}' of ${option} names no hosts; add one host per line`);
  return hosts;
}

function parseHostfileLine(line: string): Host | null {
  const [first, ...rest] = line.split(/\s+/);
  const base = parseHostWord(first!);
  if (!base) return null;
  for (const word of rest) {
    const kv = /^([a-z_-]+)=(.*)$/.exec(word);
    if (!kv) return null;
    const [, key, value] = kv;
    if (key === 'slots' || key === 'cpu' || key === 'cpus') {
      const n = positiveInt(value!);
      if (n === null) return null;
      base.slots = n;
    } else if (key === 'max_slots' || key === 'max-slots') {
      if (positiveInt(value!) === null) return null;
    } else if (key !== 'ifhn' && key !== 'user' && key !== 'port') {
      return null;
    }
  }
  return base;
}

/** `host` or `host:N`. */
function parseHostWord(word: string): Host | null {
  const m = /^(.*?)(?::(\d+))?$/.exec(word);
  if (!m || !m[1] || !NAME.test(m[1])) return null;
  const slots = m[2] === undefined ? 1 : positiveInt(m[2]);
  return slots === null ? null : { name: m[1], slots };
}

/** Reads a comma-separated host list (-hosts, -H/--host). */
export function parseHostList(list: string, option: string): Host[] {
  const hosts: Host[] = [];
  for (const word of list.split(',')) {
    const host = word.trim() ? parseHostWord(word.trim()) : null;
    if (!host) throw new UsageError(`${option} '${list}': cannot read host '${word}'; expected a comma-separated list of host or host:N`);
    addHost(hosts, host);
  }
  return hosts;
}

function addHost(hosts: Host[], host: Host): void {
  const same = hosts.find((h) => h.name === host.name);
  if (same) same.slots += host.slots;
  else hosts.push(host);
}

function positiveInt(s: string): number | null {
  return /^\d+$/.test(s) && Number(s) > 0 ? Number(s) : null;
}
