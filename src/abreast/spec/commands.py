"""What a shell command names: the program it starts, the words that may be paths.

Read from the workflow's `run` commands (and agents' and checks') to say, before a
run and when an attempt fails, what a command will not find where it runs
(`engine/preflight.py`, `workspace/provision.py`). Standard library only: this is
on the way to every run.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

_PLAIN = re.compile(r"[^'\"\\#;&|<>()`$]*")


def first_word(command: str) -> str | None:
    """The program a shell command starts with (after any `VAR=value` assignments), or
    None when it starts otherwise (an operator, a variable) or cannot be parsed."""
    try:
        for word in _words(command):
            if "=" in word and word.split("=", 1)[0].isidentifier():
                continue  # an assignment before the command
            plain = not any(c in word for c in "$*?[`\\") and set(word) - set("();<>|&")
            return word if word and plain else None
    except ValueError:  # an unclosed quote
        pass
    return None


# What /bin/sh runs without looking on PATH (POSIX special and regular built-ins, the
# reserved words), and abreast itself (`.abreast/bin` holds the one tasks call).
_SHELL_OWN_WORDS = (
    ". : [ [[ alias bg break cd command continue echo eval exec exit export false fc fg "
    "getopts hash jobs kill local printf pwd read readonly return set shift test times "
    "trap true type ulimit umask unalias unset wait ! { } case do done elif else esac fi "
    "for function if in then until while time select abreast"
)
SHELL_OWN = frozenset(_SHELL_OWN_WORDS.split())


def _words(command: str) -> Iterable[str]:
    if _PLAIN.fullmatch(command):  # nothing for shlex to do (a microsecond or two a character)
        return command.split()
    import shlex  # only for a command with quotes or operators (not on every start)

    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return lex


# Words of bash (and ksh) that a POSIX /bin/sh need not have (Debian's dash has none of
# them), each with what to write in sh instead, if anything.
BASH_WORDS = {
    "[[": "`[ ... ]`",
    "source": "`. FILE`",
    "function": "`NAME() { ...; }`",
    "pushd": "`cd` (in a subshell: `(cd DIR && ...)`)",
    "popd": "`cd` (in a subshell: `(cd DIR && ...)`)",
    "let": "`VAR=$((...))`",
    "declare": "a plain `VAR=value`",
    "typeset": "a plain `VAR=value`",
    "shopt": "",
    "select": "",
    "mapfile": "",
    "readarray": "",
}
# After these a shell command starts (operators, newlines, reserved words).
_OPERATORS = (";", "&", "&&", "||", "|", "|&", "(", "()", ")", "{", "!", "\n")
_COMMAND_BEFORE = frozenset(_OPERATORS) | {"if", "then", "elif", "else", "do", "while", "until"}


def bash_words(command: str) -> set[str]:
    """The words of BASH_WORDS a shell command starts a command with (its first word, or
    one after an operator, a newline or a reserved word such as `if`); none where it
    cannot tell (an unclosed quote). A here-document's lines are not commands."""
    if not any(w in command for w in BASH_WORDS):
        return set()
    import shlex

    lex = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>\n")
    lex.whitespace = " \t\r"
    lex.whitespace_split = True
    lex.commenters = ""  # a comment's newline still ends a command: seen below
    found: set[str] = set()
    at_start, comment, heredoc, delimiter = True, False, "", ""
    try:
        for word in lex:
            if word == "\n":
                at_start, comment = True, False
                if delimiter:
                    heredoc, delimiter = delimiter, ""
                continue
            if heredoc:  # its lines, up to one that is its delimiter
                heredoc = "" if at_start and word == heredoc else heredoc
                at_start = False
                continue
            if comment or word.startswith("#"):
                comment = True  # to the end of the line (a quoted `#x` word too: missed)
                continue
            if word in ("<<", "<<-"):
                delimiter = "\0"  # the next word
            elif delimiter == "\0":
                delimiter = word
            elif at_start and word in BASH_WORDS:
                found.add(word)
            assignment = "=" in word and word.split("=", 1)[0].isidentifier()
            at_start = word in _COMMAND_BEFORE or (at_start and assignment)
    except ValueError:  # an unclosed quote: /bin/sh will say so
        return set()
    return found


def bash_word_fix(word: str, them: str) -> str:
    """What to do about `word` of BASH_WORDS in a command given to a /bin/sh without it."""
    instead = f"write {BASH_WORDS[word]} instead, or give" if BASH_WORDS[word] else "give"
    return (
        f"{instead} {them} to bash (`shell: bash` on it, or in `defaults` for every task and check)"
    )


def bash_word_hints(command: str) -> list[str]:
    """For a failure of `command` given to /bin/sh: a line for each word of bash it starts
    a command with that /bin/sh here lacks (`source` "not found")."""
    return [
        f"/bin/sh here has no `{word}` (a word of bash): " + bash_word_fix(word, "the command")
        for word in sh_lacks(tuple(sorted(bash_words(command))))
    ]


def run_quietly(
    argv: list[str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str] | str:
    """`argv` run to its end, reading nothing, its output kept as text; why it could not
    be run (or took longer than `timeout` seconds) instead."""
    import subprocess

    try:
        return subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)


def sh_lacks(words: tuple[str, ...]) -> list[str]:
    """Those of `words` that /bin/sh here neither has nor finds on PATH."""
    script = 'for w do type "$w" >/dev/null 2>&1 || echo "$w"; done'
    found = run_quietly(["/bin/sh", "-c", script, "sh", *words], 10)
    if isinstance(found, str):
        return []
    return [w for w in found.stdout.split() if w in words]


def cannot_start(command: str, cwd: Path, path: str, sh: bool) -> str:
    """Why `command`, ended with exit 127 in `cwd` (a git worktree) with PATH `path`, could
    not start whatever that worktree holds: the program it starts is not on PATH, an
    absolute path that does not exist, a path git ignores there (no commit has it: a
    virtual environment's), or a word of bash that /bin/sh (`sh`) lacks. "" when it may
    start with other files there (a script the work was to add) or started (a later
    command was not found)."""
    import shutil

    word = first_word(command)
    if not word:
        return ""
    if word in BASH_WORDS:
        return f"/bin/sh here has no `{word}`" if sh and sh_lacks((word,)) else ""
    if word in SHELL_OWN:
        return ""
    if "/" not in word:
        # Relative entries of PATH (an empty one is the working directory) are the check's.
        dirs = [d if os.path.isabs(d) else str(cwd / d) for d in path.split(os.pathsep)]
        if shutil.which(word, path=os.pathsep.join(dirs)) is not None:
            return ""
        return f"`{word}` is not on the PATH it runs with"
    if os.path.isabs(word):
        return "" if os.path.lexists(word) else f"{word} does not exist"
    if os.path.lexists(cwd / word):
        return ""
    ignored = run_quietly(["git", "check-ignore", "-q", "--", word], 30, cwd)
    if isinstance(ignored, str) or ignored.returncode != 0:
        return ""
    return f"{word} is a path git ignores, not in the merged work"


# Words that make a command's structure (reserved words of sh and bash).
_STRUCTURE = frozenset(
    {"if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do"}
    | {"done", "{", "}", "!", "in", "function", "select", "[[", "]]"}
)
# What `surely_parses` takes, a token at a time: a word's plain part, a quoted part, a
# variable, a redirection, an operator joining commands, blanks; anything else (a
# newline, parentheses, `$(`, a backquote, `#`, a here-document) is left to the shell.
_VAR = r"\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*|[0-9?#@*$!-])"
_TOKEN = re.compile(  # the digits before a redirection are its descriptor (`2>&1`)
    r"""(?P<redirect>[0-9]*(?:>>|>\||>&|<&|<>|>|<(?!<)))"""
    r"""|(?P<plain>[A-Za-z0-9_\-./:=,+%@~^*?]+|[\[\]](?=[ \t;&|<>]|$))"""  # `[ -f x ]`
    r"""|(?P<single>'[^']*')"""
    rf"""|(?P<double>"(?:[^"\\`$]|\\[^\n]|{_VAR})*")"""
    rf"""|(?P<var>{_VAR})"""
    r"""|(?P<escaped>\\[^\n])"""
    r"""|(?P<join>&&|\|\||\|(?!\|))"""
    r"""|(?P<end>;(?!;)|&(?![&>]))"""  # bash's `&>` is a redirection: left to the shell
    r"""|(?P<blank>[ \t]+)"""
)


def surely_parses(command: str) -> bool:
    """Whether `command` is simple commands (words, quoted or not, with `$NAME`s, and
    redirections to words) joined by `&&`, `||`, `|`, `;` and `&`: what no shell can
    fail to parse. False for anything else (a structure, a subshell, a substitution, a
    newline), which may well parse too: `unparsable` asks the shell."""
    expect_command, need_word, in_word, joined = True, False, False, False
    at, end = 0, len(command)
    while at < end:
        m = _TOKEN.match(command, at)
        if m is None:
            return False
        at, kind = m.end(), m.lastgroup
        if kind in ("plain", "single", "double", "var", "escaped"):
            if not in_word and kind == "plain" and m.group() in _STRUCTURE:
                return False  # a reserved word (or an argument that reads as one)
            if in_word and m.group() in ("[", "]"):
                return False  # `a[`: bash reads an array's subscript
            expect_command = need_word = joined = False
            in_word = True
            continue
        in_word = False
        if kind == "blank":
            continue
        if need_word:
            return False  # a redirection to nothing
        if kind == "redirect":
            need_word = True
            if m.group().endswith("&"):  # `2>&1`, `>&2`: to a descriptor, said next
                expect_command = False
        elif expect_command:
            return False  # an operator with no command before it
        else:
            expect_command, joined = True, kind == "join"
    return not need_word and not joined  # `a &&` at the end: the shell wants more


_PARSE_BATCH_BYTES = 1 << 20  # of commands given to one shell run (ARG_MAX is 2 MiB)


def unparsable(commands: list[str], program: str, options: tuple[str, ...] = ()) -> dict[int, str]:
    """Which of `commands` the shell `program` cannot parse (`-n`: read, not run), by
    index: what it says, as `line N: ...`. One shell runs a parse of each (a fork a
    command); a command of plain words is not given to it."""
    wanted = [(i, c) for i, c in enumerate(commands) if not surely_parses(c)]
    found = parse_errors([c for _, c in wanted], program, options)
    return {wanted[i][0]: said for i, said in found.items()}


def parse_errors(
    commands: list[str], program: str, options: tuple[str, ...] = ()
) -> dict[int, str]:
    """What the shell `program` says of each of `commands` it cannot parse, by index."""
    wanted = list(enumerate(commands))[::-1]  # taken from the end
    script = (  # $1 the shell, $2 its options (words without spaces), then the commands
        "p=$1; o=$2; shift 2; i=0; for c do i=$((i+1)); "
        '"$p" -n $o -c -- "$c" abreast </dev/null 2>&1; printf "\036%s %s\n" "$i" "$?"; done'
    )
    out: dict[int, str] = {}
    while wanted:
        batch: list[tuple[int, str]] = []
        size = 0
        while wanted and (not batch or size + len(wanted[-1][1]) < _PARSE_BATCH_BYTES):
            batch.append(wanted.pop())
            size += len(batch[-1][1])
        argv = ["/bin/sh", "-c", script, "sh", program, " ".join(options)]
        ran = run_quietly([*argv, *(c for _, c in batch)], 60)
        if isinstance(ran, str):
            return out
        said, *parts = ran.stdout.split("\x1e")  # each command's output, then its mark
        for part in parts:
            head, _, rest = part.partition("\n")
            number, _, status = head.partition(" ")
            if number.isdigit() and status.strip() not in ("", "0"):
                index = batch[int(number) - 1][0]
                out[index] = _parse_error(said)
            said = rest
    return out


def _parse_error(said: str) -> str:
    """A shell's parse error as `line N: what` (dash: `abreast: 3: Syntax error: ...`;
    bash: `abreast: -c: line 3: syntax error ...`, then the line itself)."""
    first = next((line for line in said.splitlines() if line.strip()), "")
    m = re.match(r"abreast: (?:-c: )?(?:line )?(\d+): (.*)", first)
    return f"line {m.group(1)}: {m.group(2)}" if m else first.strip() or "cannot be parsed"


def command_paths(command: str, limit: int = 64) -> list[str]:
    """The words of a shell command that may be paths relative to where it runs (no
    options, variables, globs, assignments or shell operators), `./` dropped; at most
    `limit`. Words after a `cd` or `pushd` are relative to somewhere else: not taken.
    Unparseable commands name none."""
    out: list[str] = []
    after = ""
    try:
        for word in _words(command):
            if len(out) >= limit or word in ("cd", "pushd"):
                break
            written, after = ">" in after, word
            if written or not word or word[0] in "-~/" or any(c in word for c in "$*?[=`\\"):
                continue  # a file written to (`> log`) is not one the command needs
            if set(word) <= set("();<>|&"):
                continue  # an operator
            parts = [p for p in word.split("/") if p not in ("", ".")]
            if parts and ".." not in parts and parts[0] != ".git":  # git's own, never a file
                path = "/".join(parts)
                if path not in out:
                    out.append(path)
    except ValueError:  # an unclosed quote: /bin/sh said what it thought of it
        return []
    return out


def beside_workflow(root: Path, workflow_dir: Path, paths: list[str]) -> list[tuple[str, str]]:
    """Paths a command names that are not at `root`, where commands run, but are beside
    the workflow file (in a subdirectory of the repository): (path, that path from the
    root). `run: ./build.sh` in `ci/abreast.yaml` means the root's build.sh, not ci's."""
    if workflow_dir.resolve() == root.resolve():
        return []
    try:
        prefix = workflow_dir.resolve().relative_to(root.resolve())
    except ValueError:
        return []
    return [
        (p, f"{prefix.as_posix()}/{p}")
        for p in paths
        if not os.path.lexists(root / p) and os.path.lexists(workflow_dir / p)
    ]


def beside_text(path: str, there: str) -> str:
    return (
        f"{path} is not at the repository's root, where commands run, but {there} is "
        f"(beside the workflow file): write `{there}`"
    )


def crlf_script(directory: Path, command: str) -> str | None:
    """The script a command runs directly (its first word, a path) when its `#!` line
    ends in a carriage return (a file saved with Windows line endings): the kernel then
    looks for an interpreter named `/bin/sh\\r`, and the shell says the script itself is
    "not found". None otherwise."""
    word = first_word(command)
    if not word or "/" not in word:
        return None
    try:
        fd = os.open(directory / word, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, 256)
    finally:
        os.close(fd)
    line = head.split(b"\n", 1)[0]
    return word if line.startswith(b"#!") and line.endswith(b"\r") else None


def crlf_text(script: str) -> str:
    return (
        f"{script} has Windows line endings (CRLF): its #! line names an interpreter ending "
        f"in a carriage return, which does not exist, so the shell says the script is not "
        f"found; convert it to LF (`sed -i 's/\\r$//' {script}`) and commit it "
        "(`* text=auto eol=lf` in .gitattributes keeps it so)"
    )
