"""Prometheus metrics, built from the event stream (live during a run, replayed from the
journal by the dashboard) plus a few gauges read from the engine's state.

The seeds' names, with their labels:

    parallel_sprint_duration_seconds{sprint_id, status}   each task's time, once it ended
    test_slot_wait_time_seconds{coordinator_id, lock}     time waited for a lock (histogram)
    memory_usage_per_sprint_bytes{sprint_id}              each task's peak RSS
    agent_orphan_cleanup_count{reason}                    orphans killed (counter: `_total`)
    conflict_resolution_count{type, resolved}             send-backs by kind; resolved once
                                                          the task later landed

and abreast's own: tasks by state, ready tasks waiting, running tasks vs the cap,
retries, merges, events, API key use.

A run's metrics are served by its observer process (see `dashboard_process`), replayed
from the journal: the run's own interpreter never spends time on them. prometheus_client
is imported when a `Metrics` is made: by a run's observer as it starts, by `abreast
dashboard` at the first scrape.
"""

from __future__ import annotations

from typing import Any

from abreast.coord.journal import EventRow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SEND_BACK_KINDS = ("conflict", "check", "ownership", "containment", "submodule")
_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, float("inf"))


class Metrics:
    """A registry of the metrics above, folded from events as they are given."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.sprint_duration = PerTaskGauge(
            "parallel_sprint_duration_seconds",
            "Wall time of each task, once it ended",
            ("sprint_id", "status"),
        )
        self.slot_wait = Histogram(
            "test_slot_wait_time_seconds",
            "Time waited for a lock (the test slot and others)",
            ["coordinator_id", "lock"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.memory = PerTaskGauge(
            "memory_usage_per_sprint_bytes", "Peak RSS of each task's tree", ("sprint_id",)
        )
        self.orphans = Counter(
            "agent_orphan_cleanup_count", "Orphaned attempts cleaned up", ["reason"], registry=r
        )
        self.conflicts = Counter(
            "conflict_resolution_count",
            "Work sent back to its agent, and later resolved",
            ["type", "resolved"],
            registry=r,
        )
        self.tasks = Gauge("abreast_tasks", "Tasks by state", ["state"], registry=r)
        self.waiting = Gauge(
            "abreast_ready_tasks_waiting", "Ready tasks not yet started", registry=r
        )
        self.running = Gauge("abreast_running_tasks", "Tasks running or merging", registry=r)
        self.cap = Gauge(
            "abreast_parallel_cap",
            "Tasks allowed at once now (after the resource monitor)",
            registry=r,
        )
        self.retries = Counter(
            "abreast_task_retries", "Attempts sent back or retried", ["kind"], registry=r
        )
        self.merges = Counter("abreast_merges", "Merge queue outcomes", ["outcome"], registry=r)
        self.events = Counter("abreast_events", "Events journaled", ["type"], registry=r)
        self.api_requests = Counter(
            "api_key_requests",
            "Requests made with each API key",
            ["fingerprint", "status"],
            registry=r,
        )
        self.api_limited = Counter(
            "api_key_limited", "Times each API key was rate limited", ["fingerprint"], registry=r
        )
        self.api_tokens = Counter(
            "api_tokens",
            "Tokens the provider's answers said they used, through the key proxy",
            ["pool", "kind"],
            registry=r,
        )
        self.last_seq = 0
        self._pending: dict[str, set[str]] = {}  # task -> send-back kinds awaiting landing

    def consume(self, events: list[EventRow]) -> None:
        for e in events:
            self.last_seq = max(self.last_seq, e.seq)
            self.events.labels(e.type).inc()
            d: dict[str, Any] = e.data
            task = e.task_id or ""
            if e.type == "task.finished":
                if d.get("duration_s") is not None:
                    self.sprint_duration.set((task, str(d.get("state", ""))), d["duration_s"])
                if d.get("peak_rss_bytes"):
                    self.memory.set((task,), d["peak_rss_bytes"])
            elif e.type == "lock.granted" and d.get("wait_s") is not None:
                self.slot_wait.labels(
                    task or str(d.get("holder", "")), str(d.get("lock", ""))
                ).observe(float(d["wait_s"]))
            elif e.type == "orphan.cleaned":
                self.orphans.labels(str(d.get("reason", "unknown"))).inc()
            elif e.type == "task.retrying":
                kind = str(d.get("kind", "retry"))
                self.retries.labels(kind).inc()
                if kind in _SEND_BACK_KINDS:
                    self.conflicts.labels(kind, "false").inc()
                    self._pending.setdefault(task, set()).add(kind)
            elif e.type == "task.sent_back":  # a review sent the work of its task back
                self.retries.labels("review").inc()
            elif e.type == "merge.landed":
                self.merges.labels("landed").inc()
                for kind in self._pending.pop(task, set()):
                    self.conflicts.labels(kind, "true").inc()
            elif e.type == "merge.conflict":
                self.merges.labels("conflict").inc()
            elif e.type == "merge.checks_failed":
                self.merges.labels("red_check").inc()
            elif e.type == "api.request":
                self.api_requests.labels(str(d.get("fingerprint")), str(d.get("status"))).inc(
                    float(d.get("count", 1))
                )
            elif e.type == "api.usage":
                for kind in ("input", "output", "cache_read", "cache_write"):
                    if d.get(kind):
                        self.api_tokens.labels(str(d.get("pool")), kind).inc(float(d[kind]))
            elif e.type == "api.limited":
                self.api_limited.labels(str(d.get("fingerprint"))).inc()
            elif e.type == "run.cap":
                self.cap.set(float(d.get("cap", 0)))

    def observe_tasks(self, states: dict[str, int]) -> None:
        """Task counts by state, as the journal has them."""
        from abreast.engine.states import TaskState

        for state in TaskState:
            self.tasks.labels(state.value).set(states.get(state.value, 0))
        self.running.set(states.get("running", 0) + states.get("integrating", 0))
        self.waiting.set(states.get("ready", 0))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return (
            generate_latest(self.registry)
            + self.sprint_duration.exposition()
            + self.memory.exposition()
        )


class PerTaskGauge:
    """A gauge with a series per task, its text kept as the series change.

    prometheus_client renders every sample of a registry at each scrape (about 10 µs a
    sample): two per-task families made a 1000-task run's exposition 20 ms, 0.1 s at 5000.
    Tasks change rarely and one at a time, so these two families keep their lines and
    re-render only the series that changed; the text follows the exposition format as
    prometheus_client writes it (`promtool check metrics` runs on it in the tests)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self._head = f"# HELP {name} {_escape_help(documentation)}\n# TYPE {name} gauge\n"
        self._labels = labels
        self._lines: dict[tuple[str, ...], str] = {}  # by label values, first set first
        self._text: bytes | None = None

    def set(self, values: tuple[str, ...], value: float) -> None:
        pairs = ",".join(
            f'{k}="{_escape_label(v)}"' for k, v in zip(self._labels, values, strict=True)
        )
        self._lines[values] = f"{self.name}{{{pairs}}} {_number(value)}\n"
        self._text = None

    def exposition(self) -> bytes:
        if self._text is None:
            self._text = (self._head + "".join(self._lines.values())).encode()
        return self._text


def _number(value: float) -> str:
    """A sample value as prometheus_client writes it."""
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
