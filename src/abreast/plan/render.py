"""An `Analysis` as a table for people, JSON for tools, and Mermaid or DOT for diagrams."""

from __future__ import annotations

import json
from collections.abc import Callable

from abreast.gcpause import paused_gc
from abreast.plan.analysis import Analysis, MergeChecks
from abreast.plan.dispatch import Policy
from abreast.plan.graph import DEFAULT_ESTIMATE_S
from abreast.plan.history import RUNS
from abreast.plan.ownership import nesting_hint
from abreast.spec.durations import counted, listed
from abreast.spec.durations import format_duration as fmt

FORMATS = ("table", "json", "mermaid", "dot")


def render(analysis: Analysis, fmt_name: str) -> str:
    with paused_gc():
        return _RENDERERS[fmt_name](analysis)


def as_json(a: Analysis) -> str:
    # These lists hold only ids, signal names, numbers and booleans, never "}, {".
    return dump_json(a.to_json(), one_call={"tasks", "edges", "waves"})


def dump_json(data: dict[str, object], one_call: set[str] | frozenset[str] = frozenset()) -> str:
    """One key per line and one list item per line: readable, and fast on 100k tasks.

    `json.dumps(indent=...)` falls back to the pure-Python encoder; instead each list is
    encoded by the C encoder, those in `one_call` in a single call split at item borders.
    """
    lines = ["{"]
    items = list(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, list) and value:
            lines.append(f"  {json.dumps(key)}: [")
            if key in one_call and isinstance(value[0], dict | list):
                close, open_ = ("}", "{") if isinstance(value[0], dict) else ("]", "[")
                body = json.dumps(value)[1:-1]
                lines.append("    " + body.replace(f"{close}, {open_}", f"{close},\n    {open_}"))
            else:
                lines.append(",\n".join("    " + json.dumps(x) for x in value))
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines)


def _flag_text(a: Analysis) -> str:
    if not a.flags:
        return ""
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in a.flags.items())
    return f", flags: {shown}"


# After an estimate in the table, by where it came from.
_MARK = {"given": "", "measured": "~", "assumed": "?"}


def table(a: Analysis) -> str:
    e = a.estimates
    crit = set(a.critical_path)
    notes_by_task: dict[str, list[str]] = {t.id: [] for t in a.tasks}
    for (x, y), _ in a.overlaps:
        notes_by_task[x].append(f"not beside {y}")
        notes_by_task[y].append(f"not beside {x}")
    rows = [("WAVE", "TASK", "ESTIMATE", "START", "SLACK", "NOTES")]
    for t in sorted(a.tasks, key=lambda t: (t.wave, t.start_s, t.id)):
        notes = []
        if t.id in crit:
            notes.append("* critical")
        if t.skipped:
            notes.append("skipped by when:")
        if t.conditional:
            notes.append("when: reads outputs (decided at run time)")
        notes += notes_by_task[t.id]
        est = fmt(t.estimate_s) + _MARK[t.estimate_source]
        start = "-" if t.skipped else fmt(t.start_s)
        slack = "-" if t.skipped else fmt(t.slack_s)
        rows.append((str(t.wave), t.id, est, start, slack, ", ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    out = [
        f"{a.workflow}: {counted(len(a.tasks), 'task')} in {counted(len(a.waves), 'wave')}, "
        f"max_parallel {a.max_parallel}{_flag_text(a)}",
        "",
    ]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    out.append("")
    out.append(
        "critical path: "
        + (" -> ".join(a.critical_path) or "(none)")
        + f"  ({fmt(e.critical_path_s)})"
    )
    out.append("")
    seq = e.sequential_s

    def pct(x: float) -> str:
        return f"{100.0 * (seq - x) / seq:5.1f}% saved" if seq else ""

    out += [
        "estimates",
        f"  sequential, one task at a time   {fmt(seq):>9}",
        f"  groups, wave after wave          {fmt(e.groups_s):>9}  {pct(e.groups_s)}",
        f"  abreast's schedule               {fmt(e.scheduled_s):>9}  {pct(e.scheduled_s)}",
        f"  critical path, unlimited slots   {fmt(e.critical_path_s):>9}",
        f"  time saved by abreast: {fmt(e.saved_s)} ({e.saved_pct:.1f}%)",
    ]
    if a.policy is Policy.WAVES:
        out.append("  (here wave-by-wave beats list scheduling, so the run goes wave by wave)")
    if a.merge_checks is not None:
        out.append("")
        out += merge_checks_lines(a.merge_checks, e.scheduled_s)
    if a.limits:
        out.append("")
        out.append("limits: " + ", ".join(f"{k} {v}" for k, v in a.limits.items()))
    contended = a.contended_inside()
    if contended:
        out.append("")
        out.append("locks taken inside commands (`abreast lock`), which the schedule leaves out:")
        for name, tasks in contended.items():
            others = [x for x in a.locks_held.get(name, []) if x not in tasks]
            also = f"; also held by {', '.join(others)}" if others else ""
            out.append(f"  {name}: {', '.join(tasks)}{also}")
        first = next(iter(contended))
        out.append("  while one holds it, the others wait for it running, in their slots;")
        out.append(f"  `locks: [{first}]` on a task plans for that (held for its whole attempt)")
    out.append("")
    if a.overlaps:
        out.append(
            "ownership overlaps (abreast never runs these side by side, nor starts one while "
            "the other's work is still to land):"
        )
        for (x, y), pats in a.overlaps:
            out.append(f"  {x} <-> {y}: {', '.join(pats)}")
            via = a.overlap_via.get((x, y))
            if via:
                out.append(f"    ({nesting_hint(via)})")
    else:
        out.append("ownership overlaps: none")
    if a.skipped:
        out.append("skipped under these flags: " + ", ".join(a.skipped))
    if a.conditional:
        out.append("decided at run time (when: reads outputs): " + ", ".join(a.conditional))
    for reviewer, to, rounds in a.reviews:
        out.append(
            f"review loop: {reviewer} may send {to}'s work back up to {rounds} "
            f"time{'s' if rounds != 1 else ''}, each a run of both again (not in the estimates)"
        )
    if any(t.estimate_source == "measured" for t in a.tasks):
        out.append(
            "~ no estimate given: the median of its time in the latest runs it succeeded in "
            f"(up to {RUNS})"
        )
    if any(not t.estimated for t in a.tasks):
        out.append(f"? no estimate given: counted as {fmt(DEFAULT_ESTIMATE_S)}")
    return "\n".join(out)


def checks_named(names: list[str]) -> str:
    """`a`, `b`, `c` and 2 more: the merge checks, named."""
    return listed(names, 3, lambda n: f"`{n}`")


def checks_took(m: MergeChecks) -> str:
    """A run of the checks' time, measured: `4m12s (the median in the latest 3 runs)`."""
    runs = "the latest run" if m.measured_runs == 1 else f"the latest {m.measured_runs} runs"
    return f"{fmt(m.each_s or 0.0)} (the median in {runs})"


def merge_checks_lines(m: MergeChecks, scheduled_s: float) -> list[str]:
    """What `analyze` says of the merge checks: their time, which the estimates leave
    out, measured in earlier runs where it can be."""
    at_once = "one merge at a time" if m.batch == 1 else f"up to {m.batch} merges at a time"
    out = [
        f"merge checks: {checks_named(m.names)}, on each task's merge before it lands, {at_once}"
    ]
    total = m.total_s
    if m.each_s is None or total is None:
        out.append(
            "  not in the estimates above: a run measures them, and `analyze` counts them "
            "from then on"
        )
        return out
    batches = -(-m.merges // m.batch)
    of = f" ({counted(batches, 'batch', 'batches')})" if m.batch > 1 else ""
    out.append(
        f"  {checks_took(m)} a run: {fmt(total)} for "
        f"{counted(m.merges, 'merge')}{of} if each task changes files and passes at once, "
        "which the estimates above leave out"
    )
    if total > scheduled_s:
        more = "`merge: {batch: N}` checks" if m.batch == 1 else "a larger `merge.batch` checks"
        out.append(
            "  the checks, not the tasks, set the pace: longer than abreast's schedule "
            f"({more} more merges at once)"
        )
    return out


def mermaid(a: Analysis) -> str:
    node = {t.id: f"t{i}" for i, t in enumerate(a.tasks)}
    crit = set(a.critical_path)
    out = ["flowchart TD"]
    for t in a.tasks:
        label = f"{t.id}<br/>{fmt(t.estimate_s)}" + (" (skipped)" if t.skipped else "")
        out.append(f'  {node[t.id]}["{label}"]')
    crit_edges = []
    for i, (x, y, signal) in enumerate(a.edges):
        arrow = f"-. {signal} .->" if signal else "-->"
        out.append(f"  {node[x]} {arrow} {node[y]}")
        if x in crit and y in crit and _consecutive(a.critical_path, x, y):
            crit_edges.append(str(i))
    out.append("  classDef critical stroke:#d62728,stroke-width:3px")
    out.append("  classDef skipped stroke-dasharray:5 5,color:#888")
    if crit:
        out.append("  class " + ",".join(node[t] for t in a.critical_path) + " critical")
    if a.skipped:
        out.append("  class " + ",".join(node[t] for t in a.skipped) + " skipped")
    if crit_edges:
        out.append("  linkStyle " + ",".join(crit_edges) + " stroke:#d62728,stroke-width:3px")
    return "\n".join(out)


def dot(a: Analysis) -> str:
    crit = set(a.critical_path)
    out = [
        f'digraph "{a.workflow}" {{',
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
    ]
    for t in a.tasks:
        attrs = [f'label="{t.id}\\n{fmt(t.estimate_s)}"']
        if t.id in crit:
            attrs += ["color=red", "penwidth=2.5"]
        if t.skipped:
            attrs += ['style="rounded,dashed"', "fontcolor=gray"]
        out.append(f'  "{t.id}" [{", ".join(attrs)}];')
    for x, y, signal in a.edges:
        attrs = []
        if signal:
            attrs += ["style=dashed", f'label="{signal}"']
        if x in crit and y in crit and _consecutive(a.critical_path, x, y):
            attrs += ["color=red", "penwidth=2.5"]
        out.append(f'  "{x}" -> "{y}"' + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    out.append("}")
    return "\n".join(out)


def _consecutive(path: list[str], x: str, y: str) -> bool:
    return any(path[i] == x and path[i + 1] == y for i in range(len(path) - 1))


_RENDERERS: dict[str, Callable[[Analysis], str]] = {
    "table": table,
    "json": as_json,
    "mermaid": mermaid,
    "dot": dot,
}
