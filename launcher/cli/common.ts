/**
 * What every snowflock command line shares: the global flags (-v, --log-file, --debug, --state-dir,
 * defined in definitions.ts), logging set up from them, and the package's version. The error rule is cli/errors.ts.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Argv } from 'yargs';
import { projectRoot } from '../../src/common/paths.js';
import { configureLogging } from '../../src/common/log.js';
import { GLOBAL_OPTIONS } from './definitions.js';

export interface GlobalArgs {
  verbose: number;
  logFile?: string;
  debug: boolean;
  stateDir?: string;
}

export function withGlobalOptions<T>(y: Argv<T>): Argv<T & GlobalArgs> {
  return y.options(GLOBAL_OPTIONS) as unknown as Argv<T & GlobalArgs>;
}

export function setupLogging(args: GlobalArgs): void {
  configureLogging({ verbosity: args.verbose ?? 0, logFile: args.logFile });
}

export function packageVersion(): string {
  return (JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}
