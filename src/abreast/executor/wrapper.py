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
# down is then taken, not run again (one that calls `exit` itself: OWN_SHELL_WRAPPER).
# The trap writes only when that line was not written. (Each name the trap and the
# function read is set first: a command may `set -u`.)
#
# The line is "TASK.ATTEMPT STATUS UPTIME BOOT_ID": when it ended, as /proc/uptime had it
# (seconds since boot; read by the shell itself, no process started), and which boot of
# which machine that is of. One that ended while abreast was down is then given the time
# it took, not the time until `abreast resume` (executor/exits.py).
_END = (
    "__abreast_end() { __abreast_up=; __abreast_boot=; "
    "read -r __abreast_up __abreast_x 2>/dev/null </proc/uptime || :; "
    "read -r __abreast_boot 2>/dev/null </proc/sys/kernel/random/boot_id || :; "
    'echo "$__abreast_key $1 $__abreast_up $__abreast_boot" >> "$__abreast_exits" || :; }; '
)
WRAPPER = (
    'exec >"$4" 2>&1 </dev/null || exit 126; cd -- "$1" || exit 127; '
    "__abreast_exits=$2; __abreast_cmd=$3; __abreast_key=$5; __abreast_said=; shift 5; "
    + _END
    + 'trap \'__abreast_st=$?; [ -n "$__abreast_said" ] || __abreast_end "$__abreast_st"\' EXIT; '
    'set -e; eval "$__abreast_cmd"; __abreast_st=$?; '
    '__abreast_end "$__abreast_st"; __abreast_said=1; exit "$__abreast_st"'
)

# A command that may take the shell's end out of the wrapper's hands (`trap ... EXIT`
# replaces its trap; `exec` replaces the shell; `exit` in a script under its own trap;
# a sourced file may do any of these) is given to a shell of its own ($6, the wrapper's
# program, with the options of SHELLS, `eval`ing it as WRAPPER does), which the wrapper
# waits for and records whatever it does. Only those: one more exec per attempt
# (`local.own_shell` chooses). A shell of its own, not a subshell: `$$` stays the
# command's shell (`kill $$`). The wrapper waits out a TERM sent to the group (the
# command's shell takes its own, trapped or not), so the attempt ends when the command
# does, as with WRAPPER, and then dies of the TERM the command died of (143), as a TERMed
# shell does, recording nothing. Its own stderr is /dev/null (it would say "Terminated"
# of the command); the command's shell puts its stderr back on the log first thing.
OWN_SHELL_WRAPPER = (
    'exec >"$4" 2>&1 </dev/null || exit 126; cd -- "$1" || exit 127; exec 2>/dev/null; '
    "__abreast_exits=$2; __abreast_key=$5; trap : TERM; "
    + _END
    + '"$6" OPTIONS -c \'exec 2>&1; __abreast_cmd=$1; shift; eval "$__abreast_cmd"\' '
    'abreast-task "$3"; __abreast_st=$?; '
    'if [ "$__abreast_st" = 143 ]; then trap - TERM; kill -TERM $$; fi; '
    '__abreast_end "$__abreast_st"; exit "$__abreast_st"'
)

# What each `shell:` of the workflow runs a command with: the program (a bare name is
# looked up on PATH where the command starts), the options a check's command is given,
# and the wrapper an attempt starts as. bash's pipefail: `pytest | tee log` fails when
# pytest does (dash, Debian's /bin/sh, has no pipefail).
SHELLS = {"sh": (SHELL, ("-e",)), "bash": ("bash", ("-e", "-o", "pipefail"))}

# bash also records which line of the command ended it under -e: "TASK.ATTEMPT line LINE
# STATUS" (in the exits file, whose readers of ends skip it), so that a multi-line `run:`
# that fails at a line that printed nothing (`grep -q`, `test -f`) is not said with the
# last line an earlier one printed alone (exits.failed_line). bash runs the ERR trap where
# -e ends the shell, and where a command fails with -e off (`set +e`): the line is written
# only under -e, once. The command is `eval`ed on the wrapper's first line, so LINENO is
# the line of the command; not in a file it sources (BASH_SOURCE names that file; it is
# "environment" in a function the command defines, whose LINENO is the command's). dash
# (Debian's /bin/sh) has no ERR trap (and, in a trap, no LINENO): under sh the line is
# not known.
_FAILED_LINE = (
    "trap '__abreast_s=$?; [[ $- != *e* || ${BASH_SOURCE[0]:-environment} != environment ]] || "
    'echo "$__abreast_key line $LINENO $__abreast_s" >> "$__abreast_exits" || :\' ERR; '
)
WRAPPERS = {
    "sh": WRAPPER,
    "bash": WRAPPER.replace("set -e;", _FAILED_LINE + "set -eo pipefail;"),
}
OWN_SHELL_WRAPPERS = {
    name: OWN_SHELL_WRAPPER.replace("OPTIONS", " ".join(options))
    for name, (_program, options) in SHELLS.items()
}
# A merge check of several lines given to bash: `bash -e -o pipefail -c CHECK_BASH
# abreast-check COMMAND FILE` records the line as "check line LINE STATUS" in FILE.
CHECK_BASH = (
    "__abreast_cmd=$1; __abreast_exits=$2; __abreast_key=check; shift 2; "
    + _FAILED_LINE
    + 'eval "$__abreast_cmd"'
)
# The command's own shell is given the exits file and the attempt's key after it, to
# record the line too.
OWN_SHELL_WRAPPERS["bash"] = (
    OWN_SHELL_WRAPPERS["bash"]
    .replace(
        "__abreast_cmd=$1; shift;",
        "__abreast_cmd=$1; __abreast_exits=$2; __abreast_key=$3; shift 3; "
        + _FAILED_LINE.replace("'", "'\\''"),
    )
    .replace('abreast-task "$3";', 'abreast-task "$3" "$__abreast_exits" "$__abreast_key";')
)

_FOUND: dict[str, str | None] = {}


def shell_path(shell: str) -> str | None:
    """Where the program of `shell:` (a key of SHELLS) is here; None when it is not
    installed. (shutil imported here, on first use: this module has no imports.)"""
    if shell not in _FOUND:
        import shutil

        program = SHELLS[shell][0]
        _FOUND[shell] = program if "/" in program else shutil.which(program)
    return _FOUND[shell]
