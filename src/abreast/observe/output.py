"""Standard output that survives its reader going away.

`abreast run wf.yaml | head`, or a pager quit early: the pipe breaks, and a write
raises BrokenPipeError. A run must not die of it (its tasks and the journal are the
point, the lines are a view of them), so from then on the stream's file descriptor
points at /dev/null and writes succeed quietly; the journal, `abreast status` and
`abreast logs` still have everything.
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

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
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


def reader_gone(stream: object) -> bool:
    """Whether a PipeSafe stream's reader went away: a command that only follows
    something (`logs -f`, `status --watch`) then stops; a run carries on."""
    return bool(getattr(stream, "broken", False))


def guard_standard_streams() -> None:
    """Make sys.stdout and sys.stderr PipeSafe (once)."""
    import sys

    if not isinstance(sys.stdout, PipeSafe):
        sys.stdout = PipeSafe(sys.stdout)
    if not isinstance(sys.stderr, PipeSafe):
        sys.stderr = PipeSafe(sys.stderr)
