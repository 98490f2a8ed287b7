"""About how long a run has left, by its tasks' estimates: for the live view and `status`
(stdlib and `spec.durations` only: `status` starts without the planner)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from abreast.spec.durations import format_duration


def time_left(
    left: Sequence[float],
    succs: Sequence[Sequence[int]],
    order: Sequence[int],
    cap: int,
    landing: Sequence[bool] = (),
    check_s: float = 0.0,
    batch: int = 1,
) -> float:
    """The longest of: the longest chain of work `left` (seconds per task, 0 for the
    finished; `order` topological); all of it spread over `cap` slots; and, for the tasks
    whose work is still to land (`landing`) through merge checks of `check_s` a run, one
    merge (or `batch`) at a time, those checks one after another. A task's checks are on
    its chain too: what needs it starts once its work has landed."""
    chain = [0.0] * len(left)
    checking = check_s if landing else 0.0
    for v in reversed(order):
        own = left[v] + checking if checking and landing[v] else left[v]
        chain[v] = own + max((chain[s] for s in succs[v]), default=0.0)
    queue = math.ceil(sum(landing) / max(1, batch)) * checking if checking else 0.0
    return max(max(chain, default=0.0), sum(left) / max(1, cap), queue)


def about(seconds: float) -> str:
    """A time left, as precise as an estimate is: seconds under a minute, then minutes."""
    if seconds < 1:
        return "<1s"
    if seconds < 60:
        return f"about {round(seconds)}s"
    return f"about {format_duration(60 * round(seconds / 60))}"
