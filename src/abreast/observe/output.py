"""Standard output that survives its reader going away.

`abreast run wf.yaml | head`, or a pager quit early: the pipe breaks, and a write
raises BrokenPipeError. A run must not die of it (its tasks and the journal are the
point, the lines are a view of them), so from then on the stream's file descriptor
points at /dev/null and writes succeed quietly; the journal, `abreast status` and
`abreast logs` still have everything.

Any other failure to write (a full disk behind `> file`, an I/O error) silences the
stream the same way, and is kept in `failed`: the command ends as it would have, then
says so and exits non-zero (as `cat` does).
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import TextIO


class PipeSafe(io.TextIOBase):
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False
        self.failed: OSError | None = None  # a write failed other than by a broken pipe

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except OSError as e:
                self._silence(e)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError as e:
                self._silence(e)

    def _silence(self, error: OSError) -> None:
        if not isinstance(error, BrokenPipeError):
            self.failed = error
        self.broken = True
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            redirect_fd(self._stream.fileno(), os.devnull)

    def close(self) -> None:
        # The stream wrapped belongs to whoever made it (the interpreter, a test's
        # capture): closing this wrapper, as collecting it does, leaves that alone.
        pass

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding


def redirect_fd(fd: int, path: str) -> None:
    """Point file descriptor `fd` at `path` (appending; created if missing)."""
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(target, fd)
    finally:
        os.close(target)


def keep_bytes(stream: object) -> None:
    """Let text decoded with `surrogateescape` (bytes that are not UTF-8) be written to
    `stream` (a PipeSafe, or a standard stream) as the bytes it was read from, as `cat`
    would: a task's log shown by `abreast logs` is its bytes, not U+FFFD."""
    inner = getattr(stream, "_stream", stream)
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        inner.reconfigure(errors="surrogateescape")  # type: ignore[attr-defined]


def reader_gone(stream: object) -> bool:
    """Whether a PipeSafe stream's reader went away: a command that only follows
    something (`logs -f`, `status --watch`) then stops; a run carries on."""
    return bool(getattr(stream, "broken", False))


def guard_standard_streams() -> None:
    """Make sys.stdout and sys.stderr PipeSafe (once). A standard descriptor that is
    closed (`abreast run ... >&-`) is opened on /dev/null first: else the next file
    opened (the journal) would take its number, and what is written to it would land
    there."""
    import sys

    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if getattr(sys, name) is None:
                setattr(sys, name, os.fdopen(fd, "r" if fd == 0 else "w", closefd=False))
    if not isinstance(sys.stdout, PipeSafe):
        sys.stdout = PipeSafe(sys.stdout)
    if not isinstance(sys.stderr, PipeSafe):
        sys.stderr = PipeSafe(sys.stderr)
