/**
 * `snowflock doctor`: every host check as a table of what is there and what to do about the rest.
 */
import { runAllChecks, type CheckResult } from './checks.js';

export interface DoctorReport {
  checks: CheckResult[];
  /** False when a required check failed. */
  ok: boolean;
}

export async function doctor(nativeDir: string): Promise<DoctorReport> {
  const checks = await runAllChecks(nativeDir);
  return { checks, ok: checks.every((c) => c.ok || !c.required) };
}

export function formatDoctor(report: DoctorReport): string {
  const width = Math.max(...report.checks.map((c) => c.name.length));
  const lines = report.checks.map((c) => {
    const mark = c.ok ? 'ok  ' : c.required ? 'FAIL' : 'warn';
    const fix = c.ok ? '' : `\n${' '.repeat(width + 8)}fix: ${c.fix}`;
    return `${mark}  ${c.name.padEnd(width)}  ${c.detail}${fix}`;
  });
  lines.push(report.ok ? 'snowflock can run on this host.' : 'snowflock cannot run here until the FAIL lines are fixed.');
  // What setup provides (Debian packages, the guest kernel) is most of what a fresh host lacks.
  if (report.checks.some((c) => !c.ok && c.fix.includes('snowflock setup'))) lines.push('snowflock setup installs the Debian packages snowflock drives and fetches the guest kernel.');
  return lines.join('\n');
}
