/**
 * The PMI-1 wire format (MPICH's "simple" PMI, src/pmi/maint/pmi-1.1.txt): one command per line,
 * `cmd=NAME key=value key=value\n`; spawn alone is a multi-line `mcmd=spawn` block ending in
 * `endcmd`. Values are opaque tokens: MPICH 4.0 clients never put spaces in them, newer clients
 * escape with backslashes; either way we store and return the bytes exactly as they came.
 */

/** Longest line we accept; MPICH's own limit for a PMI command is 64 KiB. */
export const MAX_LINE = 64 * 1024;
/** Most key=value arguments of one command (MPICH's MAX_PMI_ARGS); more is not a PMI command. */
export const MAX_ARGS = 1000;

export interface PmiCommand {
  cmd: string;
  args: Map<string, string>;
}

/** Parses one line (without its newline); null when it is not a PMI-1 command. */
export function parseLine(line: string): PmiCommand | null {
  const tokens = splitTokens(line);
  if (tokens.length > MAX_ARGS + 1) return null;
  const first = tokens.shift();
  if (!first?.startsWith('cmd=') || first.length === 4) return null;
  const args = new Map<string, string>();
  for (const token of tokens) {
    const eq = token.indexOf('=');
    if (eq <= 0) return null;
    const key = token.slice(0, eq);
    if (!isKey(key)) return null;
    args.set(key, token.slice(eq + 1));
  }
  const cmd = first.slice(4);
  return isKey(cmd) ? { cmd, args } : null;
}

/**
 * Splits on spaces, keeping a backslash-escaped space inside its token. By slices, in one pass: a
 * line can be 64 KiB long, and building tokens character by character cost 16 ms per such line,
 * enough for one client to keep the server from everyone else.
 */
function splitTokens(line: string): string[] {
  const tokens: string[] = [];
  let start = -1;
  // One token past MAX_ARGS + 1 is enough to refuse the line.
  for (let i = 0; i < line.length && tokens.length <= MAX_ARGS + 1; i++) {
    const c = line.charCodeAt(i);
    if (c === 0x5c && i + 1 < line.length) {
      // A backslash and the character it escapes stay in the token, as they came.
      if (start < 0) start = i;
      i++;
    } else if (c === 0x20 || c === 0x09 || c === 0x0d) {
      if (start >= 0) tokens.push(line.slice(start, i));
      start = -1;
    } else if (start < 0) {
      start = i;
    }
  }
  if (start >= 0) tokens.push(line.slice(start));
  return tokens;
}

function isKey(s: string): boolean {
  return /^[A-Za-z0-9_\-/]+$/.test(s);
}

/**
 * Formats a reply line. Values we make up ourselves (messages) must be single tokens: MPICH 4.0's
 * client parser splits on spaces and rejects a token without '='.
 */
export function formatReply(cmd: string, args: Record<string, string | number> = {}): string {
  const parts = [`cmd=${cmd}`];
  for (const [k, v] of Object.entries(args)) parts.push(`${k}=${String(v)}`);
  return `${parts.join(' ')}\n`;
}

/** A message made safe as one wire token: spaces become underscores, anything odd is dropped. */
export function token(text: string): string {
  return text.replace(/\s+/g, '_').replace(/[^\x21-\x7e]/g, '').slice(0, 200) || '_';
}

/**
 * Splits a byte stream into lines. Lines longer than MAX_LINE are reported once as overlong and
 * their rest is skipped up to the next newline, so one hostile client costs bounded memory.
 */
export class LineSplitter {
  private buffered = '';
  private skipping = false;

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly onOverlong: () => void,
  ) {}

  /** Characters of an unfinished line held (at most MAX_LINE plus one chunk). */
  get pending(): number {
    return this.buffered.length;
  }

  /** Whether a line has begun and not ended (an overlong one being skipped counts). */
  get midLine(): boolean {
    return this.skipping || this.buffered.length > 0;
  }

  push(chunk: string): void {
    let data = chunk;
    for (;;) {
      const nl = data.indexOf('\n');
      if (nl < 0) {
        if (!this.skipping) {
          this.buffered += data;
          if (this.buffered.length > MAX_LINE) this.startSkipping();
        }
        return;
      }
      const piece = data.slice(0, nl);
      data = data.slice(nl + 1);
      if (this.skipping) {
        this.skipping = false;
        continue;
      }
      const line = this.buffered + piece;
      this.buffered = '';
      if (line.length > MAX_LINE) this.onOverlong();
      else this.onLine(line);
    }
  }

  private startSkipping(): void {
    this.buffered = '';
    this.skipping = true;
    this.onOverlong();
  }
}
