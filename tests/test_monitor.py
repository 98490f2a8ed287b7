"""The adaptive cap (seed US-043's table), and the engine honouring it on a real run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from abreast.engine.engine import EngineOptions
from abreast.engine.monitor import ResourceMonitor, adaptive_cap
from tests.helpers import engine_for, intervals, max_concurrency, write_recorder


@pytest.mark.parametrize(
    ("use", "cap"), [(10, 4), (49.9, 4), (50, 3), (69, 3), (70, 2), (79.9, 2), (80, 1), (100, 1)]
)
def test_the_seed_table_with_cap_4(use: float, cap: int) -> None:
    assert adaptive_cap(4, use, (50, 70, 80)) == cap


def test_thresholds_are_configurable_and_never_below_one() -> None:
    assert adaptive_cap(8, 35, (30, 40, 60)) == 7
    assert adaptive_cap(8, 45, (30, 40, 60)) == 4
    assert adaptive_cap(1, 75, (50, 70, 80)) == 1
    assert adaptive_cap(2, 55, (50, 70, 80)) == 1


def test_monitor_smooths_and_takes_the_larger_of_cpu_and_memory() -> None:
    samples = iter([(0, 0), (90, 10), (10, 10), (10, 10)])
    m = ResourceMonitor(sample=lambda: next(samples), smoothing=0.5)
    assert m.update() is None  # the first sample only primes psutil's CPU counter
    assert m.update() == 90
    assert m.update() == 50  # smoothed: one quiet sample does not undo a burst at once
    assert m.cap(4) == 3
    assert "cpu 10%" in (m.reason(4) or "")


@pytest.mark.parametrize(("use", "expected"), [(90.0, 1), (60.0, 2)])
def test_engine_starts_no_more_than_the_monitor_allows(
    tmp_path: Path, use: float, expected: int
) -> None:
    rec = write_recorder(tmp_path)
    wf = tmp_path / "w.json"
    wf.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "mon",
                "isolation": "none",
                "max_parallel": 3,
                "tasks": {f"t{i}": {"run": f"{rec} 0.3"} for i in range(5)},
            }
        )
    )
    monitor = ResourceMonitor(sample=lambda: (use, 20.0))
    monitor.update()
    monitor.update()
    options = EngineOptions(cap=3, flags={}, monitor=monitor, tick_s=0.05)
    with engine_for(wf, tmp_path / "state.db", options) as engine:
        outcome = asyncio.run(engine.run())
        reasons = engine.waiting_reasons()
    assert outcome.state == "succeeded"
    assert max_concurrency(intervals(tmp_path)) == expected
    assert reasons == {}  # nothing waits once the run is over
