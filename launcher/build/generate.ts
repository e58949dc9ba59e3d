/**
 * The build's last step (npm run build, and so prepack): writes what the package carries besides
 * the compiled code, each made from the definitions it describes so that none can drift:
 *
 *   dist/man/          sfmpirun.1, sfmpiexec.1, snowflock.1 (package.json "man" installs them)
 *   dist/completion/   snowflock.bash (also printed by `snowflock completion`)
 *   dist/dropin/       mpirun and mpiexec, which run sfmpirun (put first on PATH by `snowflock shell-env`)
 *   dist/build-info.json   the git commit being built, for --version of an installed package
 *
 * Run: node dist/launcher/build/generate.js
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/common/paths.js';
import { bashCompletion } from '../cli/completion.js';
import { DROPIN_NAMES, dropinDir, dropinScript } from '../cli/shell-env.js';
import { BUILD_INFO, gitCommit, type BuildInfo } from '../cli/version.js';
import { sfmpiexecPage, sfmpirunPage, snowflockPage } from '../man/pages.js';

function write(path: string, text: string, mode = 0o644): void {
  writeFileSync(path, text);
  chmodSync(path, mode);
}

const root = projectRoot();
const dist = join(root, 'dist');
for (const dir of ['man', 'completion']) mkdirSync(join(dist, dir), { recursive: true });
write(join(dist, 'man', 'sfmpirun.1'), sfmpirunPage());
write(join(dist, 'man', 'sfmpiexec.1'), sfmpiexecPage());
write(join(dist, 'man', 'snowflock.1'), snowflockPage());
write(join(dist, 'completion', 'snowflock.bash'), bashCompletion());
mkdirSync(dropinDir(root), { recursive: true });
for (const name of DROPIN_NAMES) write(join(dropinDir(root), name), dropinScript(name), 0o755);
const info: BuildInfo = { commit: gitCommit(root) ?? 'unknown' };
write(join(root, BUILD_INFO), JSON.stringify(info) + '\n');
