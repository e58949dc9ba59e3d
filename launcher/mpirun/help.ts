/** sfmpirun --help, written from the option table so it cannot drift from what is accepted (the man page, launcher/man/pages.ts, likewise). */
import { OPTIONS, type OptionDef, type OptionDialect } from './table.js';

export const GROUPS: Array<[OptionDialect, string]> = [
  ['both', 'Options of both dialects'],
  ['hydra', 'MPICH Hydra options'],
  ['openmpi', 'Open MPI options'],
  ['ours', 'snowflock options'],
];

/** Each dialect's own style: Hydra writes -name, Open MPI and we write --name; both are accepted. */
export function spellings(def: OptionDef): string[] {
  const long = def.dialect === 'openmpi' || def.dialect === 'ours' ? '--' : '-';
  return def.names.map((n) => (n.length === 1 ? `-${n}` : `${long}${n}`));
}

function spell(def: OptionDef): string {
  const names = spellings(def).join(', ');
  return def.args ? `${names} ${def.args}` : names;
}

const COLUMN = 30;
const WIDTH = 100;

/** The option column, then its help wrapped to WIDTH under a hanging indent. */
function entry(def: OptionDef): string {
  const left = `  ${spell(def)}`;
  const words = def.help.split(' ');
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && COLUMN + line.length + 1 + w.length > WIDTH) {
      lines.push(line);
      line = w;
    } else {
      line = line ? `${line} ${w}` : w;
    }
  }
  lines.push(line);
  const pad = ' '.repeat(COLUMN);
  const head = left.length < COLUMN ? `${left.padEnd(COLUMN)}${lines[0]}` : `${left}\n${pad}${lines[0]}`;
  return [head, ...lines.slice(1).map((l) => pad + l)].join('\n');
}

export function helpText(): string {
  const out: string[] = [
    'Usage: sfmpirun [options] [-n N] program [args] [: [options] -n N program2 [args] ...]',
    '       sfmpirun [options] -configfile FILE | --app FILE',
    '',
    'Runs an MPI program (MPICH or Open MPI, or any program) on a fresh private cluster of clones,',
    'then throws the cluster away. Options are those of mpiexec (MPICH Hydra) and mpirun (Open MPI),',
    "in either spelling: long options take one or two dashes, '--np=4' works too. Options end at the",
    "program (or at '--'); what follows belongs to the program, up to a ':' that starts the next",
    'MPMD section.',
  ];
  for (const [dialect, title] of GROUPS) {
    out.push('', `${title}:`);
    for (const def of OPTIONS.filter((d) => d.dialect === dialect)) {
      out.push(entry(def));
    }
  }
  out.push(
    '',
    'Environment of the ranks:',
    "  All of the caller's variables pass (-genvall, the default), except the launcher's own and",
    "  other process managers' wiring (SNOWFLOCK_*, NODE_*, npm_*, PMI_*, PMIX_*, HYDRA_*,",
    '  MPIEXEC_*, OMPI_COMM_WORLD_*) and the host identity (HOSTNAME, SSH_*, XDG_RUNTIME_DIR).',
    '  -genvnone passes none, -genvlist A,B only those. Over that: -genv K V, -x K=V and -x K (the',
    "  caller's K) for every rank, then -env K V for the ranks of one section (-x inside an --app",
    '  file line likewise). What ranks need is set last: both process managers\' wiring, PMI-1',
    '  (PMI_*, MPI_LOCALRANKID) for MPICH and PMIx (PMIX_*, OMPI_MCA_schizo) for Open MPI, Open',
    "  MPI's job directory and PWD. Under all: OMPI_MCA_mpi_yield_when_idle=1 when ranks outnumber cores.",
    '',
    'Environment of sfmpirun:',
    '  MPIEXEC_TIMEOUT=SEC   like --timeout',
    '  SNOWFLOCK_STATE_DIR   where the records of live clusters are kept',
    '',
    'Exit status: 0 when every rank exits 0; else the first failing rank\'s status (128+N for signal N,',
    "MPI_Abort's error code; 1 for a rank that left the job unfinished while others waited);",
    '124 after --timeout; 2 for a usage error; 4 when the cluster or our PMIx server failed.',
  );
  return `${out.join('\n')}\n`;
}
