/**
 * The holder handshake that leaves no leak window: clones whose PIDs the engine has not confirmed
 * with "go" die when the engine does (its end of holder's stdin closes); confirmed ones live on.
 */
import { spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { isRunning, startTime, type ProcessIdentity } from '../../src/common/processes.js';
import { buildNative } from '../helpers/native.js';

const holderBin = join(resolve(dirname(fileURLToPath(import.meta.url)), '../..'), 'native', 'build', 'holder');

function startHolder(names: string[]) {
  const child = spawn(holderBin, names, { stdio: 'pipe' });
  const pids = new Promise<ProcessIdentity[]>((res, rej) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready\n')) {
        res(out.split('\n').filter((l) => /^\d+$/.test(l)).map((l) => ({ pid: Number(l), start: startTime(Number(l)) ?? -1 })));
      }
    });
    child.on('close', () => rej(new Error('holder ended before ready')));
  });
  return { child, pids };
}

async function untilGone(ps: ProcessIdentity[]): Promise<boolean> {
  for (let i = 0; i < 200 && ps.some(isRunning); i++) await new Promise((r) => setTimeout(r, 25));
  return !ps.some(isRunning);
}

describe('netns holder handshake', function () {
  this.timeout(30_000);
  before(() => buildNative());

  it('kills its clones when the engine goes away before "go"', async () => {
    const { child, pids } = startHolder(['sfhs0000-0', 'sfhs0000-1']);
    const clones = await pids;
    expect(clones).to.have.length(2);
    expect(clones.every(isRunning)).to.equal(true);
    child.stdin.end(); // what the kernel does to the pipe when the engine is SIGKILLed
    expect(await untilGone(clones)).to.equal(true);
  });

  it('keeps its clones after "go", and they go when killed', async () => {
    const { child, pids } = startHolder(['sfhs0001-0']);
    const clones = await pids;
    child.stdin.end('net\ngo\n');
    await new Promise((r) => child.stdout.once('end', r));
    expect(clones.every(isRunning)).to.equal(true);
    for (const c of clones) process.kill(c.pid, 'SIGKILL');
    expect(await untilGone(clones)).to.equal(true);
  });
});
