"""What the cgroup abreast runs in allows: a container's memory and CPU limits.

In a container (Docker `--memory 4g --cpus 2`, a Kubernetes pod, a CI runner) the
machine-wide figures psutil gives mislead the resource monitor: tasks can fill the
container's 4 GB while the host's memory is 6% used, and two busy cores of a 64-core
host read as 3% CPU. So the monitor also reads the cgroup's own use against its own
limits, and goes by whichever is fuller.

- Memory: use is the cgroup's usage less its inactive file cache (what the kernel can
  drop at once; the "working set" `docker stats` and the kubelet show), against its
  limit; every level from abreast's cgroup up to the root that sets a limit is read,
  and the fullest counts (a pod's limit above a container's).
- CPU: the cores the cgroup may use (its CFS quota, at the tightest level, and the CPUs
  abreast may run on) and its CPU time, as a percent of those cores since the last
  reading.

cgroup v2 (`0::/path` in /proc/self/cgroup, files under /sys/fs/cgroup/PATH) and v1
(a hierarchy per controller: memory, cpu, cpuacct) are both read. Where nothing is
limited (or nothing can be read) this adds nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_UNLIMITED = 1 << 60  # v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class _MemoryLevel:
    limit: int
    usage: Path  # bytes in use, page cache included
    stat: Path  # memory.stat, for the inactive file cache
    inactive_key: bytes


@dataclass(frozen=True)
class _Cpu:
    cores: float  # what the cgroup may use
    usage: Path  # its CPU time so far
    key: bytes | None  # the line of `usage` to read (cpu.stat), or None: the whole file
    seconds_per_unit: float


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _stat_value(path: Path, key: bytes) -> int | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    for line in data.splitlines():
        name, _, value = line.partition(b" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _levels(mount: Path, path: str) -> list[Path]:
    """The cgroup directories from `path` under `mount` up to `mount` itself, those that
    exist (inside a container the path may be the host's, and only `mount` is there)."""
    here = mount / path.strip("/")
    out = []
    while True:
        if here.is_dir():
            out.append(here)
        if here == mount or mount not in here.parents:
            break
        here = here.parent
    return out


class Cgroup:
    """The limits of the cgroup abreast runs in, and its use against them."""

    def __init__(
        self,
        root: Path = Path("/sys/fs/cgroup"),
        membership: str | None = None,
        host_memory: int | None = None,
        cpus: int | None = None,
        host_cpus: int | None = None,
    ) -> None:
        """`membership`: /proc/self/cgroup's text; `cpus`: the CPUs abreast may run on;
        `host_*`: what the machine-wide figures cover (a limit at or above is none)."""
        if membership is None:
            membership = _read(Path("/proc/self/cgroup")) or ""
        if host_memory is None:
            host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if cpus is None:
            cpus = len(os.sched_getaffinity(0))
        self._host_cpus = host_cpus or os.cpu_count() or cpus
        v1: dict[str, str] = {}
        v2: str | None = None
        for line in membership.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                v2 = parts[2]
            for controller in parts[1].split(","):
                if controller:
                    v1[controller] = parts[2]
        self.memory: list[_MemoryLevel] = []
        self.cpu: _Cpu | None = None
        if "memory" in v1:
            self._memory_v1(root / "memory", v1["memory"], host_memory)
        elif v2 is not None:
            self._memory_v2(root, v2, host_memory)
        if "cpu" in v1 or "cpuacct" in v1:
            self._cpu_v1(root, v1, cpus)
        elif v2 is not None:
            self._cpu_v2(root, v2, cpus)
        self._last_cpu: tuple[float, float] | None = None

    # -- finding the limits -------------------------------------------------------------------

    def _memory_v2(self, root: Path, path: str, host: int) -> None:
        for level in _levels(root, path):
            limit = _read(level / "memory.max")
            if limit and limit.isdigit() and int(limit) < host:
                self.memory.append(
                    _MemoryLevel(
                        int(limit),
                        level / "memory.current",
                        level / "memory.stat",
                        b"inactive_file",
                    )
                )

    def _memory_v1(self, mount: Path, path: str, host: int) -> None:
        for level in _levels(mount, path):
            limit = _read(level / "memory.limit_in_bytes")
            if limit and limit.isdigit() and int(limit) < min(host, _UNLIMITED):
                self.memory.append(
                    _MemoryLevel(
                        int(limit),
                        level / "memory.usage_in_bytes",
                        level / "memory.stat",
                        b"total_inactive_file",
                    )
                )

    def _cpu_v2(self, root: Path, path: str, cpus: int) -> None:
        levels = _levels(root, path)
        cores, where = float(cpus), levels[0] if levels else None
        for level in levels:
            quota, _, period = (_read(level / "cpu.max") or "max").partition(" ")
            if (
                quota.isdigit()
                and period.isdigit()
                and int(period) > 0
                and int(quota) / int(period) <= cores
            ):
                cores, where = int(quota) / int(period), level
        if where is not None and cores < self._host_cpus:
            self.cpu = _Cpu(cores, where / "cpu.stat", b"usage_usec", 1e-6)

    def _cpu_v1(self, root: Path, v1: dict[str, str], cpus: int) -> None:
        cores = float(cpus)
        for level in _levels(root / "cpu", v1.get("cpu", "/")):
            quota = _read(level / "cpu.cfs_quota_us") or "-1"
            period = _read(level / "cpu.cfs_period_us") or "0"
            if quota.isdigit() and period.isdigit() and int(period) > 0:
                cores = min(cores, int(quota) / int(period))
        usage = _levels(root / "cpuacct", v1.get("cpuacct", "/"))
        if usage and cores < self._host_cpus:
            self.cpu = _Cpu(cores, usage[0] / "cpuacct.usage", None, 1e-9)

    # -- use ----------------------------------------------------------------------------------

    def memory_percent(self) -> float | None:
        """The fullest limited level's working set, as a percent of its limit."""
        best = None
        for level in self.memory:
            usage = _read(level.usage)
            if not usage or not usage.isdigit():
                continue
            inactive = _stat_value(level.stat, level.inactive_key) or 0
            pct = 100.0 * max(0, int(usage) - inactive) / level.limit
            best = pct if best is None else max(best, pct)
        return best

    def cpu_percent(self, now: float | None = None) -> float | None:
        """CPU time used since the last call (at `now`, time.monotonic() by default), as a
        percent of the cores the cgroup may use (None on the first call, and where the
        cgroup's CPU is not limited)."""
        cpu = self.cpu
        if cpu is None:
            return None
        if cpu.key is None:
            raw = _read(cpu.usage)
            units = int(raw) if raw and raw.isdigit() else None
        else:
            units = _stat_value(cpu.usage, cpu.key)
        if units is None:
            return None
        now, used = time.monotonic() if now is None else now, units * cpu.seconds_per_unit
        last, self._last_cpu = self._last_cpu, (now, used)
        if last is None or now <= last[0]:
            return None
        return 100.0 * (used - last[1]) / ((now - last[0]) * cpu.cores)
