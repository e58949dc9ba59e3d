/**
 * sfmpirun --version's MPI lines come from the cache while the program is the same file, and from
 * the program again once it changed; a program missing from PATH is reported without a start.
 * The MPI programs here are small scripts on a PATH of the test's own, which count their starts.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { rereadSettings } from '../../src/common/config.js';
import { mpiVersionLines, type MpiProbe } from '../../launcher/cli/mpi-versions.js';

describe('sfmpirun --version: MPI versions', () => {
  let dir: string;
  const saved = { PATH: process.env.PATH, SNOWFLOCK_CACHE: process.env.SNOWFLOCK_CACHE };
  const probes: MpiProbe[] = [
    { what: 'Fake MPI', argv: ['fakempiversion'], pick: /Fake Version:\s*(\S+)/ },
    { what: 'Absent MPI', argv: ['no-such-mpi-here'], pick: /(.*)/ },
  ];
  const starts = () => readFileSync(join(dir, 'starts'), 'utf8').length;
  const program = (version: string) => {
    const path = join(dir, 'bin', 'fakempiversion');
    writeFileSync(path, `#!/bin/sh\nprintf x >> ${join(dir, 'starts')}\necho "Fake Version: ${version}"\n`);
    chmodSync(path, 0o755);
    return path;
  };

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'sf-mpiversions-'));
    writeFileSync(join(dir, 'starts'), '');
    rmSync(join(dir, 'bin'), { recursive: true, force: true });
    mkdirSync(join(dir, 'bin'));
    process.env.PATH = `${join(dir, 'bin')}:${saved.PATH}`;
    process.env.SNOWFLOCK_CACHE = join(dir, 'cache');
    rereadSettings();
  });

  afterEach(() => {
    process.env.PATH = saved.PATH;
    if (saved.SNOWFLOCK_CACHE === undefined) delete process.env.SNOWFLOCK_CACHE;
    else process.env.SNOWFLOCK_CACHE = saved.SNOWFLOCK_CACHE;
    rereadSettings();
    rmSync(dir, { recursive: true, force: true });
  });

  it('asks a program once, then answers from the cache until the program changes', async () => {
    const path = program('1.0');
    expect(await mpiVersionLines(probes)).to.deep.equal(['Fake MPI: 1.0', 'Absent MPI: not found (no-such-mpi-here)']);
    expect(starts()).to.equal(1);
    expect(await mpiVersionLines(probes)).to.deep.equal(['Fake MPI: 1.0', 'Absent MPI: not found (no-such-mpi-here)']);
    expect(starts(), 'second --version: from the cache').to.equal(1);
    program('2.0');
    utimesSync(path, new Date(), new Date(Date.now() + 5000)); // an upgrade: another file
    expect(await mpiVersionLines(probes)).to.deep.equal(['Fake MPI: 2.0', 'Absent MPI: not found (no-such-mpi-here)']);
    expect(starts()).to.equal(2);
  });

  it('still answers when the cache cannot be written', async () => {
    program('3.0');
    writeFileSync(join(dir, 'cache'), 'a file where the directory should be');
    expect(await mpiVersionLines(probes)).to.deep.equal(['Fake MPI: 3.0', 'Absent MPI: not found (no-such-mpi-here)']);
    expect(await mpiVersionLines(probes)).to.deep.equal(['Fake MPI: 3.0', 'Absent MPI: not found (no-such-mpi-here)']);
    expect(starts(), 'asked every time').to.equal(2);
  });
});
