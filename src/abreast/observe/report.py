"""`abreast report RUN`: what a run did and what parallelism saved, from the journal alone.

Every number comes from the journal: per-task times (first start to end), the
wall time of each attempt, the sum of those (the time one task at a time would
have taken), the run's wall time, the critical path by the estimates (kept with
the run when it started) and by what actually happened, the timeline, and every
failure with the end of its log. `--json` prints the same data; `--html FILE`
writes one self-contained page (inline style and SVG, no scripts, nothing
fetched).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from abreast.coord.journal import Journal
from abreast.errors import UsageError
from abreast.executor.logs import log_tail, mask_keys
from abreast.observe import rundata
from abreast.spec.durations import counted
from abreast.spec.durations import format_duration as fmt


def build(journal: Journal, run_id: str) -> dict[str, Any]:
    data = rundata.load(journal, run_id)
    if data is None:
        raise UsageError(f"no run {run_id!r}")
    run = data.run
    start = run.started_at
    elapsed = data.task_elapsed()
    hosts = rundata.attempt_hosts(journal, run_id)
    busy: dict[str, float] = {}
    for a in data.attempts:
        busy[a.task_id] = busy.get(a.task_id, 0.0) + (a.wall_s or 0.0)
    waited = rundata.waited_s(data.waits)  # for locks, in attempts: no work
    warned = rundata.warnings(journal, run_id)  # what the run said as warnings, of whom
    for task, seconds in waited.items():
        busy[task] = max(0.0, busy.get(task, 0.0) - seconds)
    plan = data.plan or {}
    estimates = plan.get("estimates", {})
    measured = set(plan.get("measured", []))
    assumed = set(plan.get("assumed", []))
    wall = data.wall_s()
    checks = rundata.checks_s(journal, run_id)  # a run one task at a time checks them too
    sequential = sum(busy.values()) + checks
    saved = sequential - wall
    latest: dict[str, Any] = {}
    for a in data.attempts:
        latest[a.task_id] = a
    # What each task's work changed: its latest committed attempt (worktree isolation).
    changes = rundata.work_changes(journal, run_id)
    tokens = rundata.token_use(journal, run_id)
    failures = []
    masked = rundata.leased_fingerprints(journal, run_id)  # a log a crash left unscrubbed
    for t in data.tasks:
        if t.state in ("failed", "timed_out"):
            last = latest.get(t.task_id)
            log = rundata.log_of(journal, last) if last else None
            failures.append(
                {
                    "task": t.task_id,
                    "state": t.state,
                    "attempt": t.attempts,
                    "reason": t.reason,
                    "log": log,
                    "log_tail": [mask_keys(line, masked) for line in log_tail(log)],
                }
            )
    return {
        "run_id": run.id,
        "workflow": run.workflow,
        "state": _state(run),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "wall_s": wall,
        "sequential_s": sequential,
        "checks_s": checks,
        "lock_waited_s": sum(waited.values()),
        "saved_s": saved,
        "saved_pct": round(100 * saved / sequential, 1) if sequential > 0 else 0.0,
        "estimated": {
            "scheduled_s": plan.get("scheduled_s"),
            "sequential_s": plan.get("sequential_s"),
            # tasks with no estimate, neither given nor measured: each the default's
            "assumed": len(assumed),
            "default_s": _default_estimate(plan),
        },
        "critical_path": _critical_path(data),
        "tasks": [
            {
                "id": t.task_id,
                "state": t.state,
                "attempts": t.attempts,
                "started_at": t.started_at,
                "finished_at": t.finished_at,
                "elapsed_s": elapsed.get(t.task_id, 0.0),
                "busy_s": busy.get(t.task_id, 0.0),  # its attempts, less their lock waits
                "lock_waited_s": waited.get(t.task_id, 0.0),
                "estimate_s": estimates.get(t.task_id),
                "estimate_measured": t.task_id in measured,  # in earlier runs, not given
                "estimate_assumed": t.task_id in assumed,  # neither: the default's
                "exit_code": t.exit_code,
                "peak_rss_bytes": t.peak_rss_bytes,
                "reason": t.reason,
                "changes": changes.get(t.task_id),
                "tokens": tokens.get(t.task_id),  # through the key proxy; else null
            }
            for t in data.tasks
        ],
        "tokens": _total(tokens),
        "timeline": [
            {
                "task": a.task_id,
                "attempt": a.attempt,
                "state": a.state,
                # (a task's last attempt has its log's end under failures)
                "reason": rundata.with_last_words(journal, a, masked)
                if a is not latest[a.task_id]
                else rundata.first_line(a.reason),
                # Seconds of the run's own time (a pause before a resume left out).
                "start_s": run.active_s(start, a.started_at),
                "end_s": run.active_s(start, a.ended_at or run.finished_at or a.started_at),
                "host": hosts.get((a.task_id, a.attempt)),  # a Ray node's, else None
            }
            for a in data.attempts
            if a.started_at is not None
        ],
        # Waits for locks inside attempts (`abreast lock NAME -- CMD`), on the timeline.
        "lock_waits": [
            {
                "task": w.task,
                "attempt": w.attempt,
                "lock": w.lock,
                "start_s": run.active_s(start, w.since),
                "end_s": run.active_s(start, w.since + w.wait_s),
                "granted": w.granted,  # else it gave up (--timeout), or:
                "attempt_ended": w.cut_short,  # its attempt ended as it waited (killed)
            }
            for w in data.waits
        ],
        "failures": failures,
        "warnings": [text for _, text in warned],
        "warned": _by_task(warned),
        "cap": rundata.cap_story(journal, run_id),  # what the resource monitor did to it
        "landing": (run.summary or {}).get("landing"),
        "merges": _merges(journal, run_id),
        # each time a reviewing task sent the work of the one it reviews back (send_back)
        "reviews": [
            {
                "task": ev.task_id,
                "attempt": ev.data.get("attempt"),
                "sent_back": ev.data.get("to"),
                "round": ev.data.get("round"),
                "feedback": ev.data.get("feedback"),
            }
            for ev in journal.events(run_id, types=("task.sent_back",))
        ],
    }


def _hosts_line(timeline: list[dict[str, Any]]) -> str | None:
    """Which Ray nodes' hosts ran the attempts, in a line (None: all ran here)."""
    counts: dict[str, int] = {}
    for item in timeline:
        if item.get("host"):
            counts[item["host"]] = counts.get(item["host"], 0) + 1
    if not counts:
        return None
    each = ", ".join(
        f"{n} on {host}" for host, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    total = sum(counts.values())
    return f"ran on Ray: {total} attempt{'s' if total != 1 else ''}, {each}"


def _merges(journal: Journal, run_id: str) -> dict[str, int]:
    """What the merge queue did: merges landed, how many of them in batches (and in how
    many batches), batches whose checks were red (and were split), conflicts, red checks."""
    out = {"landed": 0, "in_batches": 0, "batches": 0, "red_batches": 0}
    out |= {"conflicts": 0, "red_checks": 0}
    batch_ends: set[str] = set()  # where each batch moved the branch to
    kinds = ("merge.landed", "merge.batch_failed", "merge.conflict", "merge.checks_failed")
    for e in journal.events(run_id, types=kinds):
        if e.type == "merge.landed" and not e.data.get("already"):
            out["landed"] += 1
            if e.data.get("batch"):
                out["in_batches"] += 1
                batch_ends.add(str(e.data.get("moved_to")))
        elif e.type == "merge.batch_failed":
            out["red_batches"] += 1
        elif e.type == "merge.conflict":
            out["conflicts"] += 1
        elif e.type == "merge.checks_failed":
            out["red_checks"] += 1
    out["batches"] = len(batch_ends)
    return out


def _merge_line(m: dict[str, int]) -> str | None:
    """The merge queue's work in a line (None when it did nothing: isolation none)."""
    if not (m["landed"] or m["conflicts"] or m["red_checks"]):
        return None
    batches = counted(m["batches"], "batch", "batches")
    batched = f", {m['in_batches']} of them in {batches}" if m["in_batches"] else ""
    reds = counted(m["red_batches"], "red batch", "red batches")
    red = f"; {reds} split" if m["red_batches"] else ""
    return (
        f"merge queue: {m['landed']} landed{batched}{red}; "
        f"{counted(m['conflicts'], 'conflict')}, {counted(m['red_checks'], 'red check')}"
    )


def _critical_path(data: rundata.RunData) -> dict[str, Any]:
    est_path, est_s = data.estimated_critical_path()
    act_path, act_s = data.actual_critical_path()
    plan = data.plan or {}
    assumed = set(plan.get("assumed", ()))
    return {
        # given: False when no task has an estimate (each counted as the default);
        # assumed: the path's tasks that have none (neither given nor measured before)
        "estimated": {
            "tasks": est_path,
            "seconds": est_s,
            "given": plan.get("estimates_given", True),
            "assumed": [t for t in est_path if t in assumed],
            "default_s": _default_estimate(plan),
        },
        "actual": {"tasks": act_path, "seconds": act_s},
    }


def closing(journal: Journal, run_id: str) -> str:
    """`short()` of the run's report, reading only what it needs (no attempts): the
    lines `abreast run` ends with, which a run of thousands of tasks should not wait on."""
    data = rundata.load(journal, run_id, attempts=False)
    if data is None:
        raise UsageError(f"no run {run_id!r}")
    tokens = _total(rundata.token_use(journal, run_id))
    return short({"run_id": run_id, "critical_path": _critical_path(data), "tokens": tokens})


def _total(tokens: dict[str, dict[str, int]]) -> dict[str, int] | None:
    """Every task's tokens together (None when none were counted)."""
    if not tokens:
        return None
    return {k: sum(t[k] for t in tokens.values()) for k in rundata.TOKEN_KINDS}


def _state(run: Any) -> str:
    from abreast.observe.status import run_state

    return str(run_state(run))


def short(rep: dict[str, Any]) -> str:
    """The lines `abreast run` ends with, after the per-task summary."""
    cp = rep["critical_path"]
    est, act = cp["estimated"], cp["actual"]
    lines = []
    if act["tasks"]:
        line = f"critical path: {_path(act['tasks'])} took {fmt(act['seconds'])}"
        if _estimate_says(est):
            line += f" (estimated {fmt(est['seconds'])}: {_path(est['tasks'])}{_assumed(est)})"
        lines.append(line)
    if rep["tokens"]:
        lines.append(f"tokens: {rundata.tokens_line(rep['tokens'])}, as the provider counted")
    lines.append(f"report: abreast report {rep['run_id']} (--html FILE for a page)")
    return "\n".join(f"  {line}" for line in lines)


def _estimate_says(est: dict[str, Any]) -> bool:
    """Whether the estimated critical path is worth quoting: some task on it has an
    estimate (given, or measured in earlier runs), not only the default each."""
    return (
        bool(est["tasks"])
        and est.get("given", True)
        and (len(est.get("assumed", ())) < len(est["tasks"]))
    )


def _assumed(est: dict[str, Any]) -> str:
    """What of the estimated path is the default's, not the user's: `; left, after
    without an estimate, counted as 1m each`."""
    names = est.get("assumed", ())
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
    return _by_default(shown, len(names), est["default_s"])


def _estimate_cell(t: dict[str, Any]) -> str:
    """A task's estimate in the report's table: `~` after one measured in earlier runs,
    `?` after the default counted for want of any."""
    if t["estimate_s"] is None:
        return "-"
    mark = "~" if t["estimate_measured"] else "?" if t.get("estimate_assumed") else ""
    return fmt(t["estimate_s"]) + mark


def _estimate_marks(rep: dict[str, Any]) -> list[str]:
    """What the table's marks mean, for those it shows (as `abreast analyze` says it)."""
    out = []
    if any(t["estimate_measured"] for t in rep["tasks"]):
        out.append("~: an estimate measured in earlier runs: the task gives none")
    if any(t.get("estimate_assumed") for t in rep["tasks"]):
        out.append(f"?: no estimate given: counted as {fmt(rep['estimated']['default_s'])}")
    return out


def _by_default(who: str, n: int, default_s: float) -> str:
    each = " each" if n > 1 else ""
    return f"; {who} without an estimate, counted as {fmt(default_s)}{each}"


def _default_estimate(plan: dict[str, Any]) -> float:
    """What the run counted a task without an estimate as (the plan says; runs journaled
    before it did counted 1m)."""
    return float(plan.get("default_estimate_s", 60.0))


def _path(tasks: list[str], keep: int = 3) -> str:
    """A path for a terminal line: a long one keeps its ends and says how long it is."""
    if len(tasks) <= 2 * keep + 1:
        return " -> ".join(tasks)
    return (
        f"{' -> '.join(tasks[:keep])} -> ... -> {' -> '.join(tasks[-keep:])} ({len(tasks)} tasks)"
    )


def _wall(rep: dict[str, Any]) -> str:
    """The run's wall time, and what running side by side saved (when more than one task
    ran: with one, nothing could have run beside it)."""
    if sum(1 for t in rep["tasks"] if t["attempts"]) == 1:
        return f"wall {fmt(rep['wall_s'])} (one task ran)"
    checked = rundata.sequential_said(
        rep.get("checks_s") or 0.0, rep.get("lock_waited_s") or 0.0, fmt
    )
    return (
        f"wall {fmt(rep['wall_s'])}; one task at a time {fmt(rep['sequential_s'])}{checked}; "
        + rundata.saved_phrase(rep["saved_s"], rep["saved_pct"], fmt, digits=1)
    )


def text(rep: dict[str, Any]) -> str:
    out = [f"run {rep['run_id']} ({rep['workflow']}): {rep['state']}", f"  {_wall(rep)}"]
    est = rep["estimated"]
    if est["scheduled_s"] is not None and rep["critical_path"]["estimated"].get("given", True):
        n = est.get("assumed", 0)
        of = f"{n} of {counted(len(rep['tasks']), 'task')}"
        assumed = _by_default(of, n, est["default_s"]) if n else ""
        out.append(
            f"  estimated beforehand: {fmt(est['scheduled_s'])} "
            f"(one at a time {fmt(est['sequential_s'])}{assumed})"
        )
    out.append(short(rep).splitlines()[0] if rep["critical_path"]["actual"]["tasks"] else "")
    width = max([len(t["id"]) for t in rep["tasks"]] + [4])
    has_tokens = rep["tokens"] is not None
    out.append(
        f"\n  {'TASK':<{width}}  {'STATE':<11} {'TRIES':>5} {'TIME':>8} {'WORK':>8} {'ESTIMATE':>8}"
        + (f" {'TOKENS IN/OUT':>13}" if has_tokens else "")
        + ("  CHANGED" if any(t["changes"] for t in rep["tasks"]) else "")
    )
    for t in rep["tasks"]:
        est = _estimate_cell(t)
        out.append(
            f"  {t['id']:<{width}}  {t['state']:<11} {t['attempts']:>5} "
            f"{fmt(t['elapsed_s']):>8} {fmt(t['busy_s']):>8} {est:>8}"
            + (f" {_in_out(t['tokens']):>13}" if has_tokens else "")
            + (f"  {rundata.changed(t['changes'])}" if t["changes"] else "")
        )
    out += [f"  ({line})" for line in _estimate_marks(rep)]
    if has_tokens:
        out.append(
            f"\n  tokens: {rundata.tokens_line(rep['tokens'])}, as the provider's answers "
            "said through the key proxy"
        )
    out += timeline_lines(rep)
    retried = _sent_back(rep)
    if retried:  # what sent attempts back, the ones that failed the task aside
        out.append("\n  attempts sent back or retried:")
        out += [f"    {x['task']} attempt {x['attempt']}: {x['reason']}" for x in retried]
    if rep["reviews"]:
        out.append("\n  work sent back by its review:")
        out += [f"    {_review_line(x)}" for x in rep["reviews"]]
    if rep["warnings"]:
        out.append("")
        out += [f"  warning: {w}" for w in rep["warnings"]]
    committed = {t["id"] for t in rep["tasks"] if t["changes"]}
    views = [
        rundata.FailureView(
            f["task"],
            f["state"],
            f["attempt"],
            f["reason"],
            tuple(f["log_tail"]),
            f["log"],
            rundata.diff_command(rep["run_id"], f["task"], f["reason"])
            if f["task"] in committed
            else None,
        )
        for f in rep["failures"]
    ]
    out += rundata.failures_text(views, rep["run_id"])
    queue = _merge_line(rep["merges"])
    if queue:
        out.append(f"\n  {queue}")
    capped = _cap_line(rep.get("cap"))
    if capped:
        out.append(f"  {capped}" if queue else f"\n  {capped}")
    ray = _hosts_line(rep["timeline"])
    if ray:
        out.append(f"  {ray}" if queue else f"\n  {ray}")
    if rep["landing"]:
        out.append(f"\n  {rep['landing']}")
    return "\n".join(line for line in out if line is not None)


# How an attempt is drawn in the text timeline, by its state (others: "-").
_MARKS = {"succeeded": "=", "failed": "x", "interrupted": "~", "running": ">"}
_SAID = {"failed": "failed or sent back"}
_WAIT = "."  # an attempt waiting for a lock (`abreast lock`)


def timeline_lines(rep: dict[str, Any], columns: int = 50, rows: int = 40) -> list[str]:
    """The timeline for a terminal: a row per task (by first start), its attempts drawn
    over the run's span, each at least one column; up to `rows` tasks."""
    timeline = sorted(rep["timeline"], key=lambda x: (x["start_s"], x["attempt"]))
    if not timeline:
        return []
    span = max([x["end_s"] for x in timeline] + [rep["wall_s"], 0.001])
    per_task: dict[str, list[dict[str, Any]]] = {}
    for x in timeline:
        per_task.setdefault(x["task"], []).append(x)
    shown = list(per_task.items())[:rows]
    waits: dict[str, list[dict[str, Any]]] = {}
    for w in rep.get("lock_waits", []):
        waits.setdefault(w["task"], []).append(w)
    width = max(len(task) for task, _ in shown)
    drew_wait = False
    out = [f"\n  timeline ({fmt(span)}; a column is {fmt(span / columns)}):"]
    for task, attempts in shown:
        bar = [" "] * columns
        for x in attempts:
            first = min(columns - 1, int(x["start_s"] / span * columns))
            last = max(first, min(columns - 1, int(x["end_s"] / span * columns - 1e-9)))
            bar[first : last + 1] = _MARKS.get(x["state"], "-") * (last - first + 1)
        for w in waits.get(task, []):  # a wait of a column or more, over its attempt
            first = round(w["start_s"] / span * columns)
            last = min(columns, round(w["end_s"] / span * columns))
            bar[first:last] = _WAIT * max(0, last - first)
            drew_wait = drew_wait or last > first
        begin, end = attempts[0]["start_s"], attempts[-1]["end_s"]
        tries = f" ({len(attempts)} attempts)" if len(attempts) > 1 else ""
        out.append(f"    {task:<{width}}  |{''.join(bar)}|  {fmt(begin)} to {fmt(end)}{tries}")
    if len(per_task) > rows:
        out.append(f"    (+{len(per_task) - rows} more tasks: --html FILE draws them all)")
    states = {x["state"] for x in timeline}
    legend = [
        f"{mark} {_SAID.get(state, state)}" for state, mark in _MARKS.items() if state in states
    ]
    others = sorted(states - set(_MARKS))
    legend += [f"- {', '.join(others)}"] if others else []
    if drew_wait:  # (not a `.` in the lines: their times have them)
        legend.append(f"{_WAIT} waiting for a lock")
    out.append("    " + "  ".join(legend))
    return out


def _in_out(tokens: dict[str, int] | None) -> str:
    if not tokens:
        return "-"
    return f"{rundata.count(tokens['input'])}/{rundata.count(tokens['output'])}"


def _review_line(x: dict[str, Any]) -> str:
    """A send-back by a review, in a line: what it asked for, its first line."""
    asked = rundata.first_line(x["feedback"]) or ""
    return f"{x['task']} sent {x['sent_back']}'s work back (round {x['round']}): {asked}"


def _sent_back(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts that failed or were sent back, but for the last of a failed task (the
    failures say those)."""
    final = {(f["task"], f["attempt"]) for f in rep["failures"]}
    return [
        x
        for x in rep["timeline"]
        if x["state"] == "failed" and x["reason"] and (x["task"], x["attempt"]) not in final
    ]


def as_json(rep: dict[str, Any]) -> str:
    return json.dumps(rep, indent=2, default=str)


_COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "interrupted": "#ef6c00",
    "running": "#1565c0",
}


def html_page(rep: dict[str, Any]) -> str:
    import html  # only for the page

    e = html.escape
    rows = "".join(
        f"<tr><td>{e(t['id'])}</td><td class='{e(t['state'])}'>{e(t['state'])}</td>"
        f"<td>{t['attempts']}</td><td>{e(fmt(t['elapsed_s']))}</td>"
        f"<td>{e(fmt(t['busy_s']))}</td>"
        f"<td>{e(_estimate_cell(t))}</td>"
        f"<td>{e(rundata.changed(t['changes'])) if t['changes'] else '-'}</td>"
        + (f"<td>{e(_in_out(t['tokens']))}</td>" if rep["tokens"] else "")
        + f"<td>{e(rundata.headline(t['reason']))}</td></tr>"
        for t in rep["tasks"]
    )
    span = max([x["end_s"] for x in rep["timeline"]] + [rep["wall_s"], 0.001])
    ids = list(dict.fromkeys(x["task"] for x in rep["timeline"]))
    bars = []
    top = 24  # the time axis's marks above the rows
    at = max([60.0, *map(_label_px, ids)]) + 12  # the bars start right of the longest id
    for x in rep["timeline"]:
        y = top + ids.index(x["task"]) * 20
        left = at + x["start_s"] / span * 760
        width = max(2.0, (x["end_s"] - x["start_s"]) / span * 760)
        colour = _COLOURS.get(x["state"], "#9e9e9e")
        bars.append(
            f"<rect x='{left:.1f}' y='{y}' width='{width:.1f}' height='15' rx='3' "
            f"fill='{colour}'><title>{e(x['task'])} attempt {x['attempt']}: "
            f"{e(x['state'])}{e(f' ({why})' if (why := x['reason']) else '')}</title></rect>"
        )
    for w in rep.get("lock_waits", []):  # over its attempt's bar: a paler, striped part
        if w["task"] not in ids:
            continue
        left = at + w["start_s"] / span * 760
        width = (w["end_s"] - w["start_s"]) / span * 760
        how = (
            "then got it"
            if w["granted"]
            else "until its attempt ended"
            if w.get("attempt_ended")
            else "and gave up"
        )
        bars.append(
            f"<rect x='{left:.1f}' y='{top + ids.index(w['task']) * 20}' width='{width:.1f}'"
            " height='15' fill='url(#waiting)' class='waiting'><title>"
            f"{e(w['task'])} attempt {w['attempt']}: waited {e(fmt(w['end_s'] - w['start_s']))}"
            f" for the lock {e(w['lock'])}, {how}</title></rect>"
        )
    labels = "".join(
        f"<text x='0' y='{top + i * 20 + 11}'>{e(t)}</text>" for i, t in enumerate(ids)
    )
    bottom = top + 20 * len(ids)
    axis = "".join(
        f"<text x='{(x := at + t / span * 760):.1f}' y='{top - 10}' text-anchor='middle'"
        f" fill='#666'>{e(fmt(t))}</text><line x1='{x:.1f}' y1='{top - 4}' x2='{x:.1f}'"
        f" y2='{bottom}' stroke='#e0e0e0'/>"
        for t in ticks(span)
    )
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{at + 780:.0f}' height='{bottom + 8}'"
        f" font-size='12'>{_STRIPES}{axis}{labels}{''.join(bars)}</svg>"
    )
    failures = "".join(
        f"<h3>{e(f['task'])} ({e(f['state'])}"
        f"{f' after {n} attempts' if (n := f['attempt']) > 1 else ''})</h3>"
        f"<pre>{e(f['reason'] or '')}</pre>"
        + (
            f"<p>last lines of the task's log:</p><pre>{e(chr(10).join(f['log_tail']))}</pre>"
            if f["log_tail"]
            else "<p><i>the task's log is empty</i></p>"
            if f["attempt"]
            else "<p><i>its command did not start: no log</i></p>"
        )
        for f in rep["failures"]
    )
    cp = rep["critical_path"]
    title = e(f"run {rep['run_id']} ({rep['workflow']}): {rep['state']}")
    saved = e(_wall(rep))
    actual = e(f"{' → '.join(cp['actual']['tasks'])} ({fmt(cp['actual']['seconds'])})")
    est = cp["estimated"]
    estimated = e(f"{' → '.join(est['tasks'])} ({fmt(est['seconds'])}{_assumed(est)})")
    fail_part = "<h2>failures</h2>" + failures if failures else ""
    retried = "".join(
        f"<li>{e(x['task'])} attempt {x['attempt']}: {e(x['reason'])}</li>" for x in _sent_back(rep)
    )
    if retried:
        fail_part = f"<h2>attempts sent back or retried</h2><ul>{retried}</ul>" + fail_part
    reviewed = "".join(f"<li>{e(_review_line(x))}</li>" for x in rep["reviews"])
    if reviewed:
        fail_part = f"<h2>work sent back by its review</h2><ul>{reviewed}</ul>" + fail_part
    warned = "".join(f"<li>{e(w)}</li>" for w in rep["warnings"])
    if warned:
        fail_part = f"<h2>warnings</h2><ul>{warned}</ul>" + fail_part
    landing = "".join(
        f"<p>{e(line.strip())}</p>" for line in (rep["landing"] or "").splitlines() if line.strip()
    )
    queue = _merge_line(rep["merges"])
    capped = _cap_line(rep.get("cap"))
    if capped:
        landing = f"<p>{e(capped)}</p>" + landing
    if queue:
        landing = f"<p>{e(queue)}</p>" + landing
    ray = _hosts_line(rep["timeline"])
    if ray:
        landing = f"<p>{e(ray)}</p>" + landing
    tokens_th, tokens_p = "", ""
    if rep["tokens"]:
        tokens_th = "<th>tokens in/out</th>"
        tokens_p = (
            f"<p>tokens: {e(rundata.tokens_line(rep['tokens']))}, as the provider counted</p>"
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>abreast report {e(rep['run_id'])}</title><style>{_CSS}</style></head><body>"
        f"<h1>{title}</h1><p>{saved}</p>"
        f"<p>critical path, actual: {actual}; estimated: {estimated}</p>"
        f"<h2>timeline</h2>{svg}"
        "<h2>tasks</h2><table><tr><th>task</th><th>state</th><th>tries</th><th>time</th>"
        f"<th>work</th><th>estimate</th><th>changed</th>{tokens_th}<th>note</th></tr>"
        f"{rows}</table>{''.join(f'<p><small>{e(x)}</small></p>' for x in _estimate_marks(rep))}"
        f"{tokens_p}"
        f"{fail_part}{landing}</body></html>"
    )


# How a wait for a lock is drawn over its attempt: pale, striped (as run.js draws it).
_STRIPES = (
    "<defs><pattern id='waiting' width='6' height='6' patternUnits='userSpaceOnUse'"
    " patternTransform='rotate(45)'><rect width='6' height='6' fill='#e0e0e0'/>"
    "<rect width='3' height='6' fill='#bdbdbd'/></pattern></defs>"
)


def _cap_line(cap: dict[str, Any] | None) -> str | None:
    """`resource monitor: cap 4, lowered 3 times, to 1 at the lowest (...)`; None when
    it never lowered the cap."""
    if not cap or cap["lowest"] >= cap["first"]:
        return None
    times = "once" if cap["lowered"] == 1 else f"{cap['lowered']} times"
    why = f" ({cap['lowest_reason']})" if cap.get("lowest_reason") else ""
    lowest = f"to {cap['lowest']} at the lowest{why}"
    return f"resource monitor: cap {cap['first']}, lowered {times}, {lowest}"


def _label_px(task_id: str) -> float:
    """About how wide a task id is drawn at 12px in a sans-serif font (a page cannot be
    asked before it is shown): by DejaVu Sans's advances, a wide font, so rarely short."""
    return sum(11.7 if c in "mw" else 4.6 if c in "fijlrt-" else 7.6 for c in task_id)


# Steps a time axis is marked in: 1, 2, 5 times a power of ten below a minute, then
# what a clock is read in (as run.js's STEPS).
_STEPS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60]
_STEPS += [120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]


def ticks(span: float, most: int = 8) -> list[float]:
    """Where a time axis over `span` seconds is marked: from 0, at the smallest step
    that needs no more than `most` marks."""
    step = next((x for x in _STEPS if span / x <= most), span)
    return [i * step for i in range(int(span / step + 1e-9) + 1)]


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse}"
    "td,th{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "td:not(:last-child){white-space:nowrap}"
    ".succeeded{color:#2e7d32}.failed,.timed_out{color:#c62828}"
    ".blocked,.cancelled{color:#ef6c00}"
    "pre{background:#111;color:#ddd;padding:.8em;overflow:auto}"
)


# -- JUnit XML, for CI ------------------------------------------------------------------------

# What a task that did not succeed is in JUnit's terms: a failure, or skipped (it did not
# run to an end of its own: blocked by a failed dependency, skipped by `when:`, cancelled,
# or still to run).
_JUNIT_FAILED = ("failed", "timed_out")


def _by_task(warned: list[tuple[str | None, str]]) -> dict[str, list[str]]:
    """Task -> the warnings the run said of it (a check of its merge red, then green when
    run again; files tools generate left out of its work; ...)."""
    out: dict[str, list[str]] = {}
    for task, text in warned:
        if task:
            out.setdefault(task, []).append(text)
    return out


def junit_xml(rep: dict[str, Any]) -> str:
    """The run as a JUnit XML report (one test suite, a test case per task), the format CI
    systems (GitHub Actions, GitLab, Jenkins, ...) show results of: a test case's class is
    the workflow's name, so that a task keeps its history from run to run."""
    import xml.etree.ElementTree as ET

    tasks = rep["tasks"]
    failed = sum(t["state"] in _JUNIT_FAILED for t in tasks)
    skipped = sum(t["state"] not in (*_JUNIT_FAILED, "succeeded") for t in tasks)
    started = datetime.fromtimestamp(rep["started_at"], UTC).strftime("%Y-%m-%dT%H:%M:%S")
    counts = {
        "tests": str(len(tasks)),
        "failures": str(failed),
        "errors": "0",
        "skipped": str(skipped),
        "time": f"{rep['wall_s']:.3f}",
    }
    suites = ET.Element("testsuites", {"name": "abreast", **counts})
    workflow = rep["workflow"] or "workflow"
    suite = ET.SubElement(suites, "testsuite", {"name": workflow, **counts, "timestamp": started})
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="run", value=rep["run_id"])
    ET.SubElement(props, "property", name="state", value=rep["state"])
    failures = {f["task"]: f for f in rep["failures"]}
    for t in tasks:
        case = ET.SubElement(
            suite, "testcase", classname=workflow, name=t["id"], time=f"{t['elapsed_s']:.3f}"
        )
        reason = _xml_text(t["reason"] or "")
        first = rundata.headline(reason) or t["state"]
        if t["state"] in _JUNIT_FAILED:
            tail = failures.get(t["id"], {}).get("log_tail") or []
            body = reason + (
                "\n\nlast lines of its log:\n" + "\n".join(_xml_text(x) for x in tail)
                if tail
                else ""
            )
            attempts = f" after {n} attempts" if (n := t["attempts"]) > 1 else ""
            failure = ET.SubElement(case, "failure", message=first + attempts, type=t["state"])
            failure.text = body
        elif t["state"] != "succeeded":
            message = first if t["state"] in first else f"{t['state']}: {first}"
            ET.SubElement(case, "skipped", message=message)
        said = []
        if t["state"] == "succeeded":
            # Green in the end after attempts that were not: worth a look (flaky?).
            earlier = [x for x in rep["timeline"] if x["task"] == t["id"] and x["reason"]]
            if earlier:
                said.append(f"succeeded on attempt {t['attempts']}; before it:")
                said += [f"attempt {x['attempt']}: {x['state']} ({x['reason']})" for x in earlier]
        # What the run warned of it (a check red, then green: flaky?; its work rewritten
        # by a check; files left out of it), whatever its state.
        said += [f"warning: {w}" for w in (rep.get("warned") or {}).get(t["id"], [])]
        if said:
            out = ET.SubElement(case, "system-out")
            out.text = _xml_text("\n".join(said))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def _xml_text(text: str) -> str:
    """`text` without the characters XML 1.0 has no place for (a log's escape sequences'
    ESC, NUL, ...): a parser refuses the whole file over one of them."""
    return "".join(
        c if c in "\t\n\r" or 0x20 <= ord(c) < 0xD800 or 0xE000 <= ord(c) < 0xFFFE else "\ufffd"
        for c in text
    )
