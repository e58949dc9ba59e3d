/**
 * The little of man(7) our pages need, with its escaping in one place: text is escaped once, when it
 * becomes roff, so option tables and help lines can be written as plain strings.
 */

/**
 * Plain text as roff: backslashes doubled, every `-` written as `\-` (option dashes that render as
 * ASCII and can be searched and pasted; Debian's man.local renders them so), and a line that starts
 * with `.` or `'` protected from being read as a request.
 */
export function esc(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    // groff would typeset ' as a curly quote, which no one can search for or paste.
    .replace(/'/g, '\\(aq')
    .split('\n')
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join('\n');
}

export const bold = (text: string): string => `\\fB${esc(text)}\\fR`;
export const italic = (text: string): string => `\\fI${esc(text)}\\fR`;

/** The page header: name, section 1, the source (package and version) and the manual's title. */
export function header(name: string, source: string): string {
  return `.TH ${name.toUpperCase()} 1 "" "${esc(source)}" "User Commands"`;
}

export const section = (title: string): string => `.SH ${title.toUpperCase()}`;
export const subsection = (title: string): string => `.SS "${esc(title)}"`;
export const paragraph = (text: string): string => `.PP\n${esc(text)}`;

/** A tagged paragraph: the tag (already roff) on its own line, the text indented under it. */
export const tagged = (tag: string, text: string): string => `.TP\n${tag}\n${esc(text)}`;

/** Lines shown as they are (examples), without filling. */
export function literal(lines: string[]): string {
  return ['.PP', '.nf', '.RS 4', ...lines.map(esc), '.RE', '.fi'].join('\n');
}
