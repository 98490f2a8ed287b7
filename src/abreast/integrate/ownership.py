"""Which of a task's changed paths it was not allowed to change."""

from __future__ import annotations

from collections.abc import Sequence

from abreast.executor.logs import visible_name
from abreast.plan.ownership import owns_match


def violations(
    changed: Sequence[str], owns: Sequence[str], neighbours: Sequence[tuple[str, Sequence[str]]]
) -> list[str]:
    """Paths outside `owns`; or, for a task without `owns`, paths owned by a task that
    could run beside it (`neighbours`: (task id, its owns)). Each names why."""
    if owns:
        return [
            f"{visible_name(p)} (not in owns: {', '.join(owns)})"
            for p in changed
            if not any(owns_match(g, p) for g in owns)
        ]
    bad = []
    for p in changed:
        owner = next((tid for tid, pats in neighbours if any(owns_match(g, p) for g in pats)), None)
        if owner:
            bad.append(f"{visible_name(p)} (owned by {owner}, which may run beside it)")
    return bad
