"""Where an attempt runs, and what happens to its work after it succeeds.

The engine calls `prepare` before an attempt (returns the directory to run
in) and `integrate` after a successful one (the verdict: landed, sent back
with feedback, or failed). With `isolation: none` tasks run in the project
directory and their work counts as landed at once; the worktree isolation
puts each attempt in its own git worktree and lands work through the merge
queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Outcome(StrEnum):
    LANDED = "landed"
    SEND_BACK = "send_back"  # a conflict or red check: run the task again with feedback
    FAILED = "failed"  # something no retry can fix (e.g. touched files it does not own)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    detail: str = ""  # the feedback or failure reason, for the task and the report
    kind: str = ""  # e.g. "conflict", "check", "ownership": counted in metrics


class Isolation:
    """No isolation: every attempt runs in the project directory."""

    #: True when `prepare` is instant and `integrate` always lands: the engine then skips
    #: both (the fast path the dispatch benchmark measures).
    instant = True

    def __init__(self, root: Path) -> None:
        self.root = root

    async def prepare(self, task_id: str, attempt: int) -> Path:
        return self.root

    async def integrate(self, task_id: str, attempt: int) -> Verdict:
        return Verdict(Outcome.LANDED)

    async def close(self, *, success: bool) -> str | None:
        """Called once at the end of a run; returns a line for the summary, if any."""
        return None
