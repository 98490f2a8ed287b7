"""The shell line every attempt starts as (see `local.py`); no imports, so that
`bench/spawn_floor.py` can start exactly the same processes without loading abreast."""

SHELL = "/bin/sh"
# $1 workdir, $2 exits file, $3 command, $4 log, $5 TASK.ATTEMPT. Names start with
# __abreast_ to stay out of the way. 126: the log could not be opened; 127: no directory.
# The command runs with `set -e`: one of several lines that fails ends it with its status,
# as a CI step's script does (`false` then `echo ok` is a failure, not a success). The
# trap's `|| :`: an exits file it cannot write (a task removed .abreast) must not turn
# the status into 2 under -e; the run reads the status from the process then. A command
# that sets its own EXIT trap (`trap cleanup EXIT`) replaces the wrapper's, so the status
# of one that comes to its end is also written after it: one that ended while abreast was
# down is then taken, not run again (one that calls `exit` itself: see SUBSHELL_WRAPPER).
# Written twice when the trap is the wrapper's: the last line of a key counts.
WRAPPER = (
    'exec >"$4" 2>&1 </dev/null || exit 126; cd -- "$1" || exit 127; '
    "__abreast_exits=$2; __abreast_cmd=$3; __abreast_key=$5; shift 5; "
    'trap \'echo "$__abreast_key $?" >> "$__abreast_exits" || :\' EXIT; '
    'set -e; eval "$__abreast_cmd"; __abreast_st=$?; '
    'echo "$__abreast_key $__abreast_st" >> "$__abreast_exits" || :; exit "$__abreast_st"'
)

# A command that may take the shell's end out of the wrapper's hands (`trap ... EXIT`
# replaces its trap; `exec` replaces the shell; `exit` in a script under its own trap;
# a sourced file may do any of these) runs in a subshell instead: the wrapper outlives
# it and records its status whatever it does. Only those: the subshell is one more fork
# per attempt (`local.wrapper_for` chooses).
SUBSHELL_WRAPPER = WRAPPER.replace(
    'set -e; eval "$__abreast_cmd"; __abreast_st=$?; ',
    '(set -e; eval "$__abreast_cmd"); __abreast_st=$?; ',
)

# What each `shell:` of the workflow runs a command with: the program (a bare name is
# looked up on PATH where the command starts), the options a check's command is given,
# and the wrapper an attempt starts as. bash's pipefail: `pytest | tee log` fails when
# pytest does (dash, Debian's /bin/sh, has no pipefail).
SHELLS = {"sh": (SHELL, ("-e",)), "bash": ("bash", ("-e", "-o", "pipefail"))}
WRAPPERS = {"sh": WRAPPER, "bash": WRAPPER.replace("set -e;", "set -eo pipefail;")}
SUBSHELL_WRAPPERS = {
    "sh": SUBSHELL_WRAPPER,
    "bash": SUBSHELL_WRAPPER.replace("set -e;", "set -eo pipefail;"),
}
