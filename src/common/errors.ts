/**
 * The error idiom of the TypeScript side: every failure a user can cause or fix is one of these,
 * and the command line prints its message as one line (what was wrong, what to do), prefixed with
 * the program's name in one place (launcher/cli/errors.ts), and exits with its code. Anything else
 * is a bug: "internal error" and its stack.
 *
 *   UsageError      2  bad input; raised only before anything is provisioned
 *   HostError       3  this host lacks something snowflock needs; says how to get it
 *   ProvisionError  4  the cluster could not be made; names the clone or host that failed
 *
 * simcluster, the simulated cluster's own command, has codes of its own (SimClusterError in
 * src/hosts/sim-settings.ts: 2 bad argument, 1 failure, 128+N interrupted).
 */
export class UserError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number) {
    super(message);
    this.name = 'UserError';
    this.exitCode = exitCode;
  }
}

export class UsageError extends UserError {
  constructor(message: string) {
    super(message, 2);
    this.name = 'UsageError';
  }
}

/** A required host tool or capability is missing; `fix` says how to get it. */
export class HostError extends UserError {
  constructor(what: string, fix: string) {
    super(`${what}; ${fix}`, 3);
    this.name = 'HostError';
  }
}

/** Creating the cluster failed (a VM did not boot, a clone did not become ready). */
export class ProvisionError extends UserError {
  constructor(message: string) {
    super(message, 4);
    this.name = 'ProvisionError';
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}
