"""The resource monitor: CPU or memory use lowers how many tasks may start (seed US-043).

    use below thresholds[0]        the full cap
    thresholds[0] .. thresholds[1] cap - 1
    thresholds[1] .. thresholds[2] half the cap
    thresholds[2] and above         one task at a time

Use is the larger of CPU and memory percent, smoothed (an exponential moving
average) so a burst does not swing the cap. Running tasks are never stopped;
only new starts wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from abreast.engine.cgroup import Cgroup

Sample = Callable[[], tuple[float, float]]  # (cpu percent, memory percent)


class SystemSample:
    """(CPU %, memory %) of the machine, or of the container's cgroup where that is fuller
    (its own limits: see `engine.cgroup`)."""

    def __init__(self) -> None:
        self._cgroup: Cgroup | None = None

    def __call__(self) -> tuple[float, float]:
        import psutil  # imported on the first tick, not at start-up

        from abreast.engine.cgroup import Cgroup

        if self._cgroup is None:
            self._cgroup = Cgroup()
        cpu, memory = psutil.cpu_percent(interval=None), psutil.virtual_memory().percent
        return (
            max(cpu, self._cgroup.cpu_percent() or 0.0),
            max(memory, self._cgroup.memory_percent() or 0.0),
        )


def adaptive_cap(cap: int, use_pct: float, thresholds: tuple[float, float, float]) -> int:
    low, mid, high = thresholds
    if use_pct < low:
        return cap
    if use_pct < mid:
        return max(1, cap - 1)
    if use_pct < high:
        return max(1, cap // 2)
    return 1


class ResourceMonitor:
    def __init__(
        self,
        thresholds: tuple[float, float, float] = (50.0, 70.0, 80.0),
        sample: Sample | None = None,
        smoothing: float = 0.5,
    ) -> None:
        self.thresholds = thresholds
        self._sample = sample or SystemSample()
        self._alpha = smoothing
        self.cpu_pct = 0.0
        self.memory_pct = 0.0
        self.use_pct: float | None = None
        self._primed = False

    def update(self) -> float | None:
        cpu, mem = self._sample()
        if not self._primed:  # psutil's CPU percent counts from the previous call
            self._primed = True
            return None
        self.cpu_pct, self.memory_pct = cpu, mem
        now = max(cpu, mem)
        self.use_pct = (
            now if self.use_pct is None else (self._alpha * now + (1 - self._alpha) * self.use_pct)
        )
        return self.use_pct

    def cap(self, cap: int) -> int:
        if self.use_pct is None:
            return cap
        return adaptive_cap(cap, self.use_pct, self.thresholds)

    def reason(self, cap: int) -> str | None:
        """Why the cap is lowered, for the live view; None when it is not."""
        lowered = self.cap(cap)
        if lowered >= cap or self.use_pct is None:
            return None
        return (
            f"resources over threshold (cpu {self.cpu_pct:.0f}%, memory "
            f"{self.memory_pct:.0f}%): cap {lowered} of {cap}"
        )
