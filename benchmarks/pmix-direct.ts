/**
 * One Open MPI job direct-launched on this host through sf-pmix, for timing against mpirun:
 * starts the server on loopback, registers np ranks on one node, spawns them with the driver's
 * environment, waits for them, stops the server. Exit status: 0 when every rank exited 0.
 *
 *   node dist/benchmarks/pmix-direct.js [--share-topology] NP PROGRAM [ARG...]
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OPENMPI_DIRECT_LAUNCH, openMpiJobDirs } from '../launcher/pmix/openmpi.js';
import { PmixServer } from '../launcher/pmix/server.js';

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const shareTopology = argv[0] === '--share-topology';
  const [npArg, prog, ...args] = shareTopology ? argv.slice(1) : argv;
  const np = Number(npArg);
  if (!Number.isInteger(np) || np < 1 || !prog) {
    console.error('usage: pmix-direct [--share-topology] NP PROGRAM [ARG...]');
    return 2;
  }
  const dir = mkdtempSync(join(tmpdir(), 'pmix-direct-'));
  const server = await PmixServer.start({ listen: '127.0.0.1', tmpdir: dir, shareTopology });
  try {
    const ranks = Array.from({ length: np }, (_, r) => r);
    await server.register({ nspace: `pmix-direct-${process.pid}`, nodes: [{ hostname: 'node0', ranks }], appnums: ranks.map(() => 0) });
    const envs = await Promise.all(ranks.map((r) => server.env(r)));
    const codes = await Promise.all(
      ranks.map(
        (r) =>
          new Promise<number>((resolve) => {
            const child = spawn(prog, args, { env: { ...process.env, ...OPENMPI_DIRECT_LAUNCH, ...openMpiJobDirs(dir), ...envs[r] }, stdio: ['ignore', 'inherit', 'inherit'] });
            child.on('error', () => resolve(127));
            child.on('close', (code) => resolve(code ?? 1));
          }),
      ),
    );
    return codes.every((c) => c === 0) ? 0 : 1;
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main();
