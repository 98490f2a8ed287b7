"""Where an attempt runs, and what happens to its work after it succeeds.

The engine calls `prepare` before an attempt (returns the directory to run
in) and `integrate` after a successful one (the verdict: landed, sent back
with feedback, or failed). With `isolation: none` tasks run in the project
directory and their work counts as landed at once; the worktree isolation
puts each attempt in its own git worktree and lands work through the merge
queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from abreast.spec.conditions import PLACE


class Outcome(StrEnum):
    LANDED = "landed"
    SEND_BACK = "send_back"  # a conflict or red check: run the task again with feedback
    FAILED = "failed"  # something no retry can fix (e.g. touched files it does not own)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    detail: str = ""  # the feedback or failure reason, for the task and the report
    kind: str = ""  # e.g. "conflict", "check", "ownership": counted in metrics
    # Why no task's work can land in this run (a check that cannot start): the run starts
    # nothing new. "" for a verdict on this task's work alone.
    stops_run: str = ""
    files: tuple[str, ...] = ()  # of a merge conflict: the files it was in


def integration_branch(run_id: str) -> str:
    """Where a run's work lands (worktree isolation): git cannot hold a branch
    `abreast/<run>` beside the task branches `abreast/<run>/<task>`, and task ids cannot
    start with `_`."""
    return f"abreast/{run_id}/_integration"


# git's convention for a subject line (what `git log --oneline` and hosts show whole).
SUBJECT_MAX = 72


def commit_message(head: str, summary: str | None, run_id: str, attempt: int) -> str:
    """The message of a commit abreast makes of a task's work: `head` ("abreast: TASK",
    "abreast: land TASK") with what the task is for on the subject line, as much as fits
    in 72 columns, and the run and attempt on the line below it."""
    subject = head
    room = SUBJECT_MAX - len(head) - 3
    if summary and room >= 12:
        if len(summary) > room:
            summary = summary[: room - 1].rstrip() + "…"
        subject = f"{head} — {summary}"
    return f"{subject}\n\nrun {run_id}, attempt {attempt}"


def task_summary(description: str | None, prompt: str | None) -> str | None:
    """What a task is for, in a line: its description's first line, else its prompt's
    (its `${{ }}` places, filled in only as the task runs, shown as `…`)."""
    for text in (description, prompt):
        line = next((x.strip() for x in (text or "").splitlines() if x.strip()), "")
        if text is prompt:
            line = PLACE.sub(lambda m: "${{" if m[1] is None else "…", line)
        if line:
            return " ".join(line.split())
    return None


# How the reason of an attempt sent back for writing a key's value into its work begins
# (`abreast diff` does not print such an attempt's lines).
KEY_IN_WORK = "its changes hold the value of an API key"


class Isolation:
    """No isolation: every attempt runs in the project directory."""

    #: True when `prepare` is instant and `integrate` always lands: the engine then skips
    #: both (the fast path the dispatch benchmark measures).
    instant = True
    #: Set by `close` when the run succeeded and `--land` could not bring the result in.
    unlanded = False
    #: What each attempt's wrapper is started under (executor/protect.py), argv first.
    sandbox: tuple[str, ...] = ()

    def __init__(self, root: Path) -> None:
        self.root = root
        self.note: Callable[[str], None] = lambda _text: None  # a line for the user
        self.warnings: list[str] = []  # said as they come, and again in the summary

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.note(f"warning: {text}")

    async def prepare(self, task_id: str, attempt: int) -> Path:
        return self.root

    def phase(self, task_id: str) -> str | None:
        """Where a settled task's work is on its way to landing, in a few words (for the
        live view), or None."""
        return None

    def env_for(self, workdir: str) -> dict[str, str]:
        """What an attempt running in `workdir` needs in its environment beyond the run's
        (the worktree's own Python sources first on PYTHONPATH)."""
        return {}

    def bounds(self, task_id: str) -> str:
        """What an agent is told, after its prompt, of the files its work may change (with
        worktrees: its `owns`, else what tasks beside it own); "" when nothing bounds it."""
        return ""

    def carried(self, task_id: str, attempt: int) -> str:
        """What attempt `attempt` is told of the last attempt's work it starts with (a
        task's `carry_work`, with worktrees); "" when it starts with none."""
        return ""

    def why_failed(self, workdir: str, command: str) -> list[str]:
        """Lines that may explain why a command failed in `workdir`, beyond its exit
        status: files of the user's checkout it names that `workdir` lacks."""
        return []

    async def settle(self, task_id: str, attempt: int) -> Verdict | None:
        """Right after a successful attempt, while it still holds its slot: take in what it
        left (containment checks, commit, ownership). None: ready for `integrate`."""
        return None

    async def integrate(self, task_id: str, attempt: int) -> Verdict:
        """Land the settled attempt's work (the merge queue)."""
        return Verdict(Outcome.LANDED)

    def finished(self, task_id: str, attempt: int, *, keep: bool) -> None:
        """The attempt's fate is known: `keep` its workspace as evidence (the task failed
        or was cancelled), or give it back for reuse."""

    def task_ended(self, task_id: str) -> None:
        """The task reached its final state (landed, failed, cancelled, ...)."""

    def abort(self, grace_s: float) -> None:
        """The run is cancelling: stop integrating (running checks are ended, TERM then
        KILL after `grace_s`); what was not landed yet is not landed."""

    def can_resume_integration(self, task_id: str, attempt: int) -> bool:
        """After a crash: whether this attempt's committed work can go back on the merge
        queue (else the task runs again)."""
        return False

    async def close(self, *, success: bool) -> str | None:
        """Called once at the end of a run; returns a line for the summary, if any."""
        return None
