"""Task states and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "pending"  # waiting for dependencies, or for a retry's backoff
    READY = "ready"  # may start when a slot, its pools, locks and exclusions allow
    RUNNING = "running"  # an attempt's process is alive
    INTEGRATING = "integrating"  # succeeded; its work is on the merge queue
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    BLOCKED = "blocked"  # a dependency failed
    SKIPPED = "skipped"  # its `when:` was false
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def done_for_dependents(self) -> bool:
        """Dependents may go on after this state."""
        return self in (TaskState.SUCCEEDED, TaskState.SKIPPED)


TERMINAL = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.TIMED_OUT,
        TaskState.BLOCKED,
        TaskState.SKIPPED,
        TaskState.CANCELLED,
    }
)
FAILED_STATES = frozenset({TaskState.FAILED, TaskState.TIMED_OUT})

_ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset(
        {
            TaskState.READY,
            TaskState.SKIPPED,
            TaskState.BLOCKED,
            TaskState.CANCELLED,
            TaskState.FAILED,
        }
    ),
    TaskState.READY: frozenset(
        {TaskState.RUNNING, TaskState.BLOCKED, TaskState.CANCELLED, TaskState.PENDING}
    ),
    TaskState.RUNNING: frozenset(
        {
            TaskState.INTEGRATING,
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.TIMED_OUT,
            TaskState.PENDING,
            TaskState.CANCELLED,
        }
    ),
    TaskState.INTEGRATING: frozenset(
        {TaskState.SUCCEEDED, TaskState.PENDING, TaskState.FAILED, TaskState.CANCELLED}
    ),
    # Only when the task that reviews its work sends it back (`send_back`).
    TaskState.SUCCEEDED: frozenset({TaskState.PENDING}),
}


class InvalidTransition(RuntimeError):
    """A bug: the engine tried a transition the state machine forbids."""

    def __init__(self, task_id: str, old: TaskState, new: TaskState) -> None:
        allowed = ", ".join(sorted(_ALLOWED.get(old, frozenset()))) or "none (terminal)"
        super().__init__(f"task {task_id!r}: cannot go from {old} to {new} (allowed: {allowed})")


def check_transition(task_id: str, old: TaskState, new: TaskState) -> None:
    if new not in _ALLOWED.get(old, frozenset()):
        raise InvalidTransition(task_id, old, new)


RUN_ENDED = ("succeeded", "failed", "cancelled")  # the states of a run that ended
