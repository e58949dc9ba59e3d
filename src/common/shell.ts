/** Quoting for POSIX shells: the guests' /bin/sh (SSH commands) and the wrappers we write on the host. */

/** Quotes one word for a POSIX shell (left bare when it needs no quoting). */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
