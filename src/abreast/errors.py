"""The errors a user can meet, by what they must do about them.

Every error a user can cause derives from `AbreastError`; the command line
prints its message (never a traceback) and exits with its `exit_code`.
"""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest choice, or nothing."""
    import difflib  # only on the way to an error message

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class AbreastError(Exception):
    """A problem the user can fix; `str()` is the whole message they read."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(AbreastError):
    """A command was called wrongly: an unknown run, task, flag or option value."""


class SpecProblem:
    """One problem found in a workflow file, with where it is."""

    __slots__ = ("hint", "line", "message", "path")

    def __init__(
        self,
        message: str,
        *,
        path: tuple[str | int, ...] = (),
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.hint = hint

    def __repr__(self) -> str:
        return f"SpecProblem({self.message!r}, path={self.path!r}, line={self.line!r})"


class SpecError(AbreastError):
    """The workflow file is wrong; carries every problem found, each located."""

    def __init__(self, file: str, problems: list[SpecProblem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__(self._render())

    def _render(self) -> str:
        lines = []
        for p in self.problems:
            where = f"{self.file}:{p.line}" if p.line else self.file
            text = f"{where}: {p.message}"
            if p.hint:
                text += f"\n  hint: {p.hint}"
            lines.append(text)
        if len(lines) > 1:
            lines.append(f"({len(lines)} problems in {self.file})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.message


class StateError(AbreastError):
    """The state store cannot be used: unreachable, locked by another version, or corrupt."""


class RunFailed(AbreastError):
    """A run ended with failed tasks; the report has already been printed."""

    exit_code = 1
