/**
 * What the memory-on-demand tests share: their addresses (SNOWFLOCK_TEST_MEMORY_NET, the first two
 * octets of a /16 of their own: tickets from its lower half, simulated hosts' underlays from
 * .200 up), a state directory, an engine, and simulated hosts (src/memory/testbed.ts) that see
 * that state directory.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Engine } from '../../src/engine.js';
import { createTestbed, testbedLeftovers, type Testbed } from '../../src/memory/testbed.js';
import { removeEmptyTree } from './leaks.js';

export const NET = process.env.SNOWFLOCK_TEST_MEMORY_NET || '10.242';
export const POOL = `${NET}.0.0/17`;
export const PREFIX = 'sfmm';
export const STATE_DIR = process.env.SNOWFLOCK_STATE_DIR || '/tmp/sfmm-state';

let underlays = 0;

// A root hook: once the run is over, the state directory these tests made goes if it is empty
// (a ticket or testbed left in it is a leftover the tests report, and stays to be seen).
after(() => removeEmptyTree(STATE_DIR));

export function memoryEngine(): Engine {
  mkdirSync(STATE_DIR, { recursive: true });
  return new Engine({ stateDir: STATE_DIR, pool: POOL });
}

/** Simulated hosts named <prefix><id>-<name>, the first one at .1 of a fresh underlay. */
export function testbed(names: string[]): Promise<Testbed> {
  mkdirSync(STATE_DIR, { recursive: true });
  const net = `${NET}.${200 + ((process.pid + underlays++) % 50)}`;
  return createTestbed({ prefix: PREFIX, names, net, root: join(STATE_DIR, 'testbeds') });
}

export function leftoversOf(t: Testbed): string[] {
  return testbedLeftovers(t, PREFIX);
}

const PAGE = 4096;

/** A RAM-file-shaped template: page p is data when p % 7 == 0, written zero when p % 11 == 0, else a hole. */
export function syntheticTemplate(dir: string, pages: number) {
  mkdirSync(dir, { recursive: true });
  const ram = join(dir, 'ram');
  const fd = openSync(ram, 'w');
  const zero = Buffer.alloc(PAGE);
  for (let p = 0; p < pages; p++) {
    if (p % 7 === 0) writeSync(fd, randomBytes(PAGE), 0, PAGE, p * PAGE);
    else if (p % 11 === 0) writeSync(fd, zero, 0, PAGE, p * PAGE);
  }
  closeSync(fd);
  truncateSync(ram, pages * PAGE);
  const state = join(dir, 'state');
  writeFileSync(state, randomBytes(53_000));
  return { key: 'synthetic', dir, ram, state };
}
