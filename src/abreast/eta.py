"""About how long a run has left, by its tasks' estimates: for the live view and `status`
(stdlib and `spec.durations` only: `status` starts without the planner)."""

from __future__ import annotations

from collections.abc import Sequence

from abreast.spec.durations import format_duration


def time_left(
    left: Sequence[float], succs: Sequence[Sequence[int]], order: Sequence[int], cap: int
) -> float:
    """The longer of the longest chain of work `left` (seconds per task, 0 for the
    finished; `order` topological) and all of it spread over `cap` slots."""
    chain = [0.0] * len(left)
    for v in reversed(order):
        chain[v] = left[v] + max((chain[s] for s in succs[v]), default=0.0)
    return max(max(chain, default=0.0), sum(left) / max(1, cap))


def about(seconds: float) -> str:
    """A time left, as precise as an estimate is: seconds under a minute, then minutes."""
    if seconds < 1:
        return "<1s"
    if seconds < 60:
        return f"about {round(seconds)}s"
    return f"about {format_duration(60 * round(seconds / 60))}"
