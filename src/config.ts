/**
 * Engine settings and where they come from: explicit options, then SNOWFLOCK_* environment
 * variables, then defaults. Also where the native helpers live.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from './errors.js';

/** Each ticket gets one /24; clone i takes host address CLONE_OFFSET + i, so 244 fit. */
export const CLONE_OFFSET = 10;
export const MAX_CLONES_PER_SUBNET = 254 - CLONE_OFFSET;

export interface EngineConfig {
  /** Where state records and subnet claims live. */
  stateDir: string;
  /** IPv4 private range split into one /24 per ticket. */
  pool: string;
  /** Most clones one ticket may ask for. */
  maxClones: number;
  /** Directory of the native helpers (holder, enter). */
  nativeDir: string;
}

export type EngineOptions = Partial<EngineConfig>;

export function resolveConfig(opts: EngineOptions = {}, env: NodeJS.ProcessEnv = process.env): EngineConfig {
  return {
    stateDir: opts.stateDir ?? env.SNOWFLOCK_STATE_DIR ?? '/run/snowflock',
    pool: opts.pool ?? env.SNOWFLOCK_POOL ?? '10.213.0.0/16',
    maxClones: opts.maxClones ?? parseLimit(env.SNOWFLOCK_MAX_CLONES) ?? MAX_CLONES_PER_SUBNET,
    nativeDir: opts.nativeDir ?? env.SNOWFLOCK_NATIVE_DIR ?? join(projectRoot(), 'native', 'build'),
  };
}

function parseLimit(value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_CLONES_PER_SUBNET) {
    throw new UserError(`SNOWFLOCK_MAX_CLONES=${value} is not a whole number between 1 and ${MAX_CLONES_PER_SUBNET}; fix or unset it`);
  }
  return n;
}

/** The directory holding package.json, whether we run from src/ (tsx) or dist/src/ (built). */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'native'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('snowflock: cannot find the project root above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}
