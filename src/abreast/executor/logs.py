"""Reading attempts' logs: light, for the commands that only look (report, status)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from collections.abc import Collection, Iterable

LOG_TAIL_LINES = 12
KEY_SHOWN = "[key {}]"  # what stands for a key's value, by its fingerprint

# Terminal escape sequences: CSI (colours, cursor moves, clearing), OSC (window titles,
# hyperlinks; ended by BEL or ST, or by the end of the line) and the two-byte ones.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -Z\\-~]?)")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def open_regular(path: str) -> int:
    """A descriptor for reading the regular file at `path`, never following a symlink nor
    waiting on a FIFO: a task can put either where its log or output was (`mkfifo`,
    `ln -s /dev/zero`), and the orchestrator must not block, nor read without end, on
    it. OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device)", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def log_size(path: str) -> int:
    """The size of a log as it stands (0 while it does not exist)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def log_limit_passed(limit: int, size: int, done: str, who: str) -> str:
    """Why a task or check was ended for its log passing `logs.max_size`."""
    from abreast.spec.durations import format_size

    return (
        f"its log passed {format_size(limit)} ({size:,} bytes){done} (a {who} that rightly "
        "prints more: raise `logs.max_size`)"
    )


def _as_hex(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02x}"


def visible(line: str) -> str:
    """`line` safe to print on a terminal, in a summary or a page: escape sequences
    removed (a task's colours, or a `clear`, must not restyle or wipe what abreast
    prints around them), other control characters shown as \\xNN."""
    if "\x1b" in line:
        line = _ESCAPES.sub("", line)
    return _CONTROLS.sub(_as_hex, line)


def visible_name(name: str) -> str:
    """A file's name as a message shows it: a newline or tab in it as \\n or \\t, other
    control characters (an escape sequence's ESC too) as \\xNN: a name must not break the
    lines of a summary, fake new ones or restyle the terminal."""
    name = name.replace("\n", "\\n").replace("\t", "\\t")
    return _CONTROLS.sub(_as_hex, name)


# A run of characters a key could be made of (and that an assignment or header joins it
# with: `KEY=sk-...`, `x-api-key:sk-...`); one at the end of a chunk may go on.
_KEYISH = r"[A-Za-z0-9_\-.+/=:~]"
_TOKEN = re.compile(_KEYISH + "{12,}")
_TAIL = re.compile(_KEYISH + "+$")
_SEPARATORS = "=:"


def mask_keys(text: str, fingerprints: Collection[str]) -> str:
    """`text` with every key whose fingerprint is in `fingerprints` shown as `[key FP]`.

    For a log read while its attempt runs: a direct-mode task may print the key it was
    leased, and the log is rid of it only when the attempt ends (`scrub_secrets`). The
    reader knows the leased keys by fingerprint only (the journal never holds a value), so
    each key-like run of characters, and its parts around `=` and `:`, is hashed and
    compared: a value that matches a leased key's fingerprint is one."""
    if not fingerprints:
        return text

    def masked(m: re.Match[str]) -> str:
        token = m.group()
        cuts = [i for i, c in enumerate(token) if c in _SEPARATORS][:8]
        starts = [0, *(i + 1 for i in cuts)]
        ends = [len(token), *cuts]
        for start in starts:
            for end in ends:
                if end - start < 12:
                    continue
                fp = hashlib.sha256(token[start:end].encode()).hexdigest()[:8]
                if fp in fingerprints:
                    return token[:start] + KEY_SHOWN.format(fp) + masked_rest(token, end)
        return token

    def masked_rest(token: str, end: int) -> str:
        rest = token[end:]
        return rest if len(rest) < 12 else mask_keys(rest, fingerprints)

    return _TOKEN.sub(masked, text)


class KeyMasker:
    """`mask_keys` over a stream read in chunks: a key-like run at a chunk's end is held
    back until the next chunk shows where it ends (at most 4 KiB of it)."""

    def __init__(self, fingerprints: Collection[str]) -> None:
        self._fingerprints = fingerprints
        self._carry = ""

    def feed(self, text: str) -> str:
        if not self._fingerprints:
            return text
        text = self._carry + text
        tail = _TAIL.search(text)
        cut = tail.start() if tail and len(text) - tail.start() < 4096 else len(text)
        self._carry = text[cut:]
        return mask_keys(text[:cut], self._fingerprints)

    def flush(self) -> str:
        out, self._carry = mask_keys(self._carry, self._fingerprints), ""
        return out


# What comes before the end of an attempt's log in the feedback of its next attempt.
TAIL_HEADING = "last lines of its log:"

# make's own last words about a recipe that failed, which say nothing of why (and a make
# run under another make's: where it went in and out).
_MAKE_SAID = re.compile(
    r"g?make(\[\d+\])?: (\*\*\* |(Entering|Leaving) directory )"
    r"|\S*[Mm]akefile:\d+: recipe for target "
)


def telling_line(lines: Iterable[str], most: int = 200) -> str:
    """The line of a log's end that says most in one: its last that is not blank or make's
    `make: *** [Makefile:3: test] Error 1` (pytest's `1 failed, 2 passed in 0.5s`); ""
    when all are blank."""
    said = [line.strip() for line in lines if line.strip()]
    told = [line for line in said if not _MAKE_SAID.match(line)] or said
    return told[-1][:most] if told else ""


def with_last_line(reason: str, tail: Iterable[str]) -> str:
    """An exit status with the telling last line of the log it ended (`exit 1: connection
    refused`), as one-line views say a failure; any other reason as it is."""
    told = telling_line(tail) if reason.startswith("exit ") else ""
    return f"{reason}: {told}" if told else reason


def log_tail(path: str | None, lines: int = LOG_TAIL_LINES, max_bytes: int = 8192) -> list[str]:
    """The last `lines` non-blank lines of a log (from its last `max_bytes`, or up to 32
    times that where those hold fewer lines), made `visible`; bytes that are not UTF-8
    become U+FFFD. [] if it cannot be read. A line is as a terminal left it: a progress
    bar redrawn after carriage returns is its last drawing, not one line a redraw."""
    if path is None:
        return []
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            size = f.seek(0, 2)
            window = max_bytes
            while True:
                f.seek(max(0, size - window))
                data = f.read(window).decode("utf-8", "replace")
                shown = (visible(x.rstrip("\r").rpartition("\r")[2]) for x in data.split("\n"))
                found = [line for line in shown if line.strip()]
                # A line cut by the window's start is one more than the file's last ones.
                if len(found) > lines or window >= size or window >= 32 * max_bytes:
                    return found[-lines:]
                window *= 4
    except OSError:
        return []


def redact(text: str, secrets: list[tuple[str, str]]) -> str:
    """`text` with each secret's value (fingerprint, value) replaced by `[key FP]`: for
    what abreast records or passes on from a task's output (its log's last lines in the
    journal, the feedback to its next attempt, the summary, its output)."""
    for fp, value in _longest_first(secrets):
        if value and value in text:
            text = text.replace(value, KEY_SHOWN.format(fp))
    return text


def _longest_first(secrets: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Secrets in the order they are replaced: one inside another after it."""
    return sorted(secrets, key=lambda pair: -len(pair[1]))


def create_new(path: str) -> int:
    """A file descriptor to write `path` afresh: whatever was there removed first, never
    written through (a task may have put a symlink where abreast writes next to its output:
    writing through it would write wherever it points)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # abreast's own place: what a task made there goes
        import shutil

        shutil.rmtree(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def scrub_secrets(path: str, secrets: list[tuple[str, str]], chunk: int = 1 << 22) -> int:
    """Replace each secret value in the file at `path` by `[key FINGERPRINT]` (a key a
    direct-mode task printed); returns how many were replaced. Read in chunks (a log may
    be larger than memory); the file is rewritten, by rename, only when it holds one."""
    ordered = _longest_first(secrets)
    pairs = [(value.encode(), KEY_SHOWN.format(fp).encode()) for fp, value in ordered if value]
    if not pairs or not _holds_any(path, [raw for raw, _ in pairs], chunk):
        return 0
    keep = max(len(raw) for raw, _ in pairs) - 1  # a value may straddle two chunks
    found = 0
    tmp = f"{path}.scrub"
    with os.fdopen(open_regular(path), "rb") as src, os.fdopen(create_new(tmp), "wb") as dst:
        carry = b""
        while True:
            data = src.read(chunk)
            buf = carry + data
            for raw, shown in pairs:
                found += buf.count(raw)
                buf = buf.replace(raw, shown)
            if not data:
                dst.write(buf)
                break
            cut = max(0, len(buf) - keep)
            dst.write(buf[:cut])
            carry = buf[cut:]
    os.replace(tmp, path)
    return found


def scrub_files(paths: Iterable[str], secrets: list[tuple[str, str]]) -> None:
    """`scrub_secrets` of each of `paths` (an attempt's log and output) that can be read
    and rewritten; one that cannot is left as it is."""
    for path in paths:
        with contextlib.suppress(OSError):
            scrub_secrets(path, secrets)


def _holds_any(path: str, raws: list[bytes], chunk: int) -> bool:
    keep = max(len(raw) for raw in raws) - 1
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            tail = b""
            while data := f.read(chunk):
                buf = tail + data
                if any(raw in buf for raw in raws):
                    return True
                tail = buf[-keep:] if keep else b""
    except OSError:
        return False
    return False


def prompt_file(output: str) -> str:
    """Where the prompt an attempt was given is kept: beside its output file."""
    return output.removesuffix(".json") + ".prompt.txt"
