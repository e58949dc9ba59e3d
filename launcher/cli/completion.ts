/**
 * Bash completion for snowflock and sfmpirun/sfmpiexec, written from the same definitions the
 * commands parse with (definitions.ts, launcher/mpirun/table.ts), so it offers exactly what is
 * accepted. Static: a tab press runs no node, except to list live tickets where a ticket is asked.
 * `snowflock completion` prints it; the build also writes it to dist/completion/snowflock.bash.
 * zsh can load it with `autoload -U +X bashcompinit && bashcompinit`.
 */
import type { Options } from 'yargs';
import { spellings } from '../mpirun/help.js';
import { OPTIONS, type OptionDef } from '../mpirun/table.js';
import { COMMANDS, GLOBAL_OPTIONS, optionFlags, type CommandDef } from './definitions.js';

/** Words that may be put in a bash single-quoted string as they are (our flags and names are). */
function words(list: string[]): string {
  const bad = list.find((w) => !/^[A-Za-z0-9_.:=,+-]+$/.test(w));
  if (bad) throw new Error(`completion: ${JSON.stringify(bad)} cannot be a completion word`);
  return list.join(' ');
}

const takesValue = (o: Options): boolean => o.type === 'string' || o.type === 'number' || o.type === 'array';

function flagsWithValues(options: Record<string, Options> = {}): string[] {
  return Object.entries(options)
    .filter(([, o]) => takesValue(o))
    .flatMap(([name, o]) => optionFlags({ [name]: o }));
}

/** The values an option offers, where its placeholder lists them (`auto|netns|vm`). */
function choices(def: OptionDef): string[] {
  return def.args && /^[a-z]+(\|[a-z]+)+$/.test(def.args) ? def.args.split('|') : [];
}

function commandCase(def: CommandDef): string {
  const flags = words([...optionFlags(def.options), ...optionFlags(GLOBAL_OPTIONS), '--help']);
  const tickets = def.positionals && Object.keys(def.positionals).some((p) => p.startsWith('ticket'));
  const positional = tickets ? `\n        [[ $cur != -* ]] && COMPREPLY=($(compgen -W "$(_snowflock_tickets)" -- "$cur"))` : '';
  return `      ${def.name})\n        [[ $cur == -* ]] && COMPREPLY=($(compgen -W '${flags}' -- "$cur"))${positional}\n        ;;`;
}

function snowflockPart(): string {
  const valueFlags = words([...flagsWithValues(GLOBAL_OPTIONS), ...COMMANDS.flatMap((c) => flagsWithValues(c.options))]);
  const names = words(COMMANDS.map((c) => c.name));
  const globals = words([...optionFlags(GLOBAL_OPTIONS), '--help', '--version']);
  return `_snowflock_tickets() {
  snowflock ps 2>/dev/null | awk 'NR > 1 { print $1 }'
}

_snowflock() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} cmd= i w
  COMPREPLY=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    # After --: the command's own words (bash's default completion).
    [[ $w == -- ]] && return 0
    if [[ " ${valueFlags} " == *" $w "* ]]; then
      ((i++))
    elif [[ $w != -* && -z $cmd ]]; then
      cmd=$w
    fi
  done
  case $prev in
    --provider) COMPREPLY=($(compgen -W 'auto netns vm' -- "$cur")); return 0 ;;
    --log-file | --state-dir | -n) return 0 ;;
  esac
  case $cmd in
    '') COMPREPLY=($(compgen -W '${names} ${globals}' -- "$cur")) ;;
${COMMANDS.map(commandCase).join('\n')}
  esac
}
complete -o default -F _snowflock snowflock`;
}

function sfmpirunPart(): string {
  // Spelled as --help spells them (Hydra's one dash, Open MPI's and ours two).
  const flags = words(OPTIONS.flatMap(spellings));
  // Every spelling of an option that takes values, with how many: words to skip before the program.
  const arity = OPTIONS.filter((d) => d.arity > 0)
    .flatMap((d) => d.names.flatMap((n) => [`-${n}`, `--${n}`].map((f) => `[${f}]=${d.arity}`)))
    .join(' ');
  const valued = OPTIONS.filter((d) => choices(d).length > 0)
    .map((d) => `    ${words(d.names.flatMap((n) => [`-${n}`, `--${n}`])).replace(/ /g, ' | ')}) COMPREPLY=($(compgen -W '${words(choices(d))}' -- "$cur")); return 0 ;;`)
    .join('\n');
  return `declare -gA _sfmpirun_arity=(${arity})

_sfmpirun() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} i w n
  COMPREPLY=()
  # Options end at the program (or --); a ':' starts the next MPMD section and its options.
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    n=\${_sfmpirun_arity[\${w%%=*}]:-}
    if [[ $w == : ]]; then continue
    elif [[ -n $n && $w != *=* ]]; then ((i += n))
    elif [[ $w == -- ]]; then return 0
    elif [[ $w != -* ]]; then
      # Inside the program's words until a ':'.
      local j
      for ((j = i + 1; j < COMP_CWORD; j++)); do [[ \${COMP_WORDS[j]} == : ]] && break; done
      ((j == COMP_CWORD)) && return 0
      i=$j
    fi
  done
  case $prev in
${valued}
  esac
  [[ $cur == -* ]] && COMPREPLY=($(compgen -W '${flags}' -- "$cur"))
}
complete -o default -F _sfmpirun sfmpirun sfmpiexec`;
}

export function bashCompletion(): string {
  return `# bash completion for snowflock and sfmpirun (snowflock completion prints this; it is generated
# from the commands' own definitions). Load it with: source <(snowflock completion)
${snowflockPart()}

${sfmpirunPart()}
`;
}

export async function completionCommand(): Promise<number> {
  process.stdout.write(bashCompletion());
  return 0;
}
