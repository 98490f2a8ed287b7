"""Command-line overrides of the workflow: `--flag NAME[=VALUE]` and the parallelism cap."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from abreast.errors import UsageError, did_you_mean
from abreast.spec.model import MAX_PARALLEL, Scalar, Workflow

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_flag_value(text: str) -> Scalar:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def flag_overrides(wf: Workflow, specs: Sequence[str]) -> dict[str, Scalar]:
    """`NAME` (true) or `NAME=VALUE` for each declared flag; a clear error otherwise."""
    out: dict[str, Scalar] = {}
    for spec in specs:
        name, eq, raw = spec.partition("=")
        name = name.strip()
        if name not in wf.flags:
            where = Path(wf.source).name if wf.source else f"workflow {wf.name}"
            if not wf.flags:
                raise UsageError(
                    f"--flag {spec!r}: {where} declares no flags",
                    hint="declare it under `flags:` in the file (`flags: {NAME: false}`), "
                    "with its default",
                )
            raise UsageError(
                f"--flag {spec!r}: {name!r} is not a flag of {where}"
                + did_you_mean(name, wf.flags),
                hint=f"flags: {', '.join(sorted(wf.flags))}",
            )
        default = wf.flags[name]
        if not eq:
            value: Scalar = True
        elif isinstance(default, bool):
            low = raw.strip().lower()
            if low not in _TRUE | _FALSE:
                raise UsageError(f"--flag {spec!r}: {name!r} is true/false, not {raw!r}")
            value = low in _TRUE
        else:
            value = parse_flag_value(raw)
            if isinstance(default, int | float) and not isinstance(value, int | float | bool):
                # Compared as a number (`when: level > 2`): text would fail there, mid-run.
                raise UsageError(
                    f"--flag {spec!r}: {name!r} is a number (default {default!r}), not {raw!r}",
                    hint=f"write --flag {name}=NUMBER",
                )
        if not eq and not isinstance(default, bool):
            raise UsageError(
                f"--flag {spec!r}: {name!r} needs a value (default {default!r})",
                hint=f"write --flag {name}=VALUE",
            )
        out[name] = value
    return out


def parallel_cap(
    wf: Workflow,
    cli_value: int | None = None,
    sequential: bool = False,
    env: Mapping[str, str] | None = None,
) -> int:
    """The cap on tasks at once: --sequential / ABREAST_PARALLEL=0 mean 1; then
    --max-parallel, then ABREAST_MAX_PARALLEL, then the file's max_parallel."""
    env = os.environ if env is None else env
    switch = env.get("ABREAST_PARALLEL", "").strip().lower()
    if switch and switch not in _TRUE | _FALSE:
        raise UsageError(
            f"ABREAST_PARALLEL={env['ABREAST_PARALLEL']!r} is not understood",
            hint="0 (or false, no, off) runs one task at a time; 1 (or true, yes, on) "
            "or unset runs them side by side",
        )
    if sequential or switch in _FALSE:
        return 1
    if cli_value is not None:
        if cli_value < 1:
            raise UsageError(
                f"--max-parallel {cli_value}: must be at least 1",
                hint="use --sequential to run one task at a time",
            )
        if cli_value > MAX_PARALLEL:
            raise UsageError(f"--max-parallel {cli_value}: must be at most {MAX_PARALLEL}")
        return cli_value
    raw = env.get("ABREAST_MAX_PARALLEL")
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if not 1 <= value <= MAX_PARALLEL:
            raise UsageError(
                f"ABREAST_MAX_PARALLEL={raw!r}: must be a whole number from 1 to {MAX_PARALLEL}"
            )
        return value
    return wf.max_parallel


def listed_names(args: Sequence[str]) -> list[str]:
    """The names a repeatable `--flag NAME[,NAME...]` gives, in order, each once."""
    return list(dict.fromkeys(n.strip() for arg in args for n in arg.split(",") if n.strip()))


def only_tasks(wf: Workflow, names: Sequence[str]) -> Workflow:
    """`--only NAME[,NAME...]` (repeatable): the workflow cut down to the tasks named and
    every task they need, transitively (a signal's task too), in the file's order; the
    others are left out of the run. A clear error for a name that is not a task."""
    wanted = listed_names(names)
    if not wanted:
        raise UsageError("--only names no task", hint="--only TASK[,TASK...] (repeatable)")
    for name in wanted:
        if name not in wf.tasks:
            shown = ", ".join(list(wf.tasks)[:20]) + (", ..." if len(wf.tasks) > 20 else "")
            raise UsageError(
                f"--only {name}: {wf.source or 'the workflow'} has no task {name!r}"
                + did_you_mean(name, wf.tasks),
                hint=f"tasks: {shown}",
            )
    keep: set[str] = set()
    stack = list(wanted)
    while stack:
        tid = stack.pop()
        if tid not in keep:
            keep.add(tid)
            stack += [need.partition(":")[0] for need in wf.tasks[tid].needs]
    if len(keep) == len(wf.tasks):
        return wf
    tasks = {tid: task for tid, task in wf.tasks.items() if tid in keep}
    return wf.evolve(same_needs=False, tasks=tasks)
