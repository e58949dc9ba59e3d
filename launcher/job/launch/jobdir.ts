/**
 * The job's directory inside each clone, for Open MPI's session files and shared-memory segments
 * (env.ts layer 4 points OMPI_MCA_orte_tmpdir_base and OMPI_MCA_btl_vader_backing_directory at
 * it): a rank that crashes leaves its segment there, and the directory goes with the job.
 *
 * It lives in the clone's own /tmp: a namespace clone's /tmp is a private tmpfs of its mount
 * namespace, a VM clone's is in its RAM. Both are memory (what shared-memory segments want), and
 * both vanish with the clone, so a job torn down by any path, SIGKILL of the launcher included,
 * leaves nothing. The launcher creates it in every clone before the ranks start (vader needs it to
 * exist), and removes it itself only when the clones outlive the job (--keep).
 */
import { ProvisionError } from '../../../src/common/errors.js';
import type { Clone } from '../../../src/providers/clone.js';

/** The same path in every clone: unique to the ticket, so a kept cluster's next job gets its own. */
export function jobDirPath(ticketId: string): string {
  return `/tmp/snowflock-job-${ticketId}`;
}

const PATH = '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin';

/** Runs argv in every clone at once; throws a ProvisionError naming the first clone where it failed. */
async function inEveryClone(clones: Clone[], argv: string[], what: string): Promise<void> {
  await Promise.all(
    clones.map(async (c) => {
      const p = c.spawn(argv, { env: { PATH }, cwd: '/', stdin: 'ignore' });
      let said = '';
      p.stdout.resume();
      p.stderr.on('data', (b: Buffer) => (said = (said + b.toString()).slice(-300)));
      const status = await p.exited;
      if (status.code !== 0) throw new ProvisionError(`clone ${c.hostname}: cannot ${what} (${status.signal ?? `status ${status.code}`}): ${said.trim() || 'no message'}`);
    }),
  );
}

export async function createJobDirs(clones: Clone[], dir: string): Promise<void> {
  const what = `create the job's directory ${dir}`;
  const direct = clones.filter((c) => c.makeDir);
  await Promise.all([
    ...direct.map((c) =>
      c.makeDir!(dir).catch((e: Error) => {
        throw new ProvisionError(`clone ${c.hostname}: cannot ${what}: ${e.message}`);
      }),
    ),
    inEveryClone(clones.filter((c) => !c.makeDir), ['mkdir', '-p', '-m', '0700', dir], what),
  ]);
}

export function removeJobDirs(clones: Clone[], dir: string): Promise<void> {
  return inEveryClone(clones, ['rm', '-rf', dir], `remove the job's directory ${dir}`);
}
