/**
 * Errors a user can cause or fix. The CLIs print `message` as one line (what was wrong, what to do)
 * and exit with `exitCode`; anything else is a bug and shows its stack (always under --debug).
 */
export class UserError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = 2) {
    super(message);
    this.name = 'UserError';
    this.exitCode = exitCode;
  }
}

/** A required host tool or capability is missing; `fix` says how to get it. */
export class HostError extends UserError {
  constructor(what: string, fix: string) {
    super(`${what}; ${fix}`, 3);
    this.name = 'HostError';
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}
