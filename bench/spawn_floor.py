"""The floor under `abreast run`: the least a Python scheduler can do for the same work.

    python bench/spawn_floor.py WORKFLOW.json -j N [--no-log] [--logs DIR]

Reads the workflow the dispatch benchmark writes and runs its tasks in dependency
order, at most N at a time, with nothing but `os.posix_spawn` and `os.wait`: no
journal, no planning, no validation, no supervision, no event loop. Each task starts
exactly as abreast starts an attempt (abreast's own wrapper line, in its own session,
its output in a log file of its own, its end appended to an exits file), so the
difference between this and `abreast run` is what abreast itself spends; the
difference between this and `make` is what the work abreast must do per task costs on
this machine. `--no-log` starts `/bin/sh -c COMMAND` with output to /dev/null instead:
the process alone, as `make` runs a recipe through a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from abreast.executor.wrapper import SHELL, WRAPPER  # a module that imports nothing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workflow")
    ap.add_argument("-j", type=int, required=True)
    ap.add_argument("--no-log", action="store_true")
    ap.add_argument("--logs", default="floor-logs", help="a new directory for this run's logs")
    args = ap.parse_args()
    tasks = json.loads(Path(args.workflow).read_text())["tasks"]
    here = os.getcwd()
    logs = Path(here) / args.logs
    if not args.no_log:
        logs.mkdir(parents=True)
    exits = str(logs / "exits")
    env = dict(os.environ)
    restored = (signal.SIGPIPE, signal.SIGXFSZ)
    waiting = {t: len(spec["needs"]) for t, spec in tasks.items()}
    dependents: dict[str, list[str]] = {t: [] for t in tasks}
    for t, spec in tasks.items():
        for need in spec["needs"]:
            dependents[need].append(t)
    ready = [t for t, n in waiting.items() if n == 0]
    running: dict[int, str] = {}
    devnull = os.open(os.devnull, os.O_WRONLY)
    while ready or running:
        while ready and len(running) < args.j:
            t = ready.pop()
            cmd = tasks[t]["run"]
            if args.no_log:
                pid = os.posix_spawn(
                    SHELL,
                    [SHELL, "-c", cmd],
                    env,
                    setsid=True,
                    setsigdef=restored,
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, devnull, 1),
                        (os.POSIX_SPAWN_DUP2, devnull, 2),
                    ],
                )
            else:
                argv = [SHELL, "-c", WRAPPER, "task", here, exits, cmd, f"{logs}/{t}.1.log"]
                pid = os.posix_spawn(SHELL, [*argv, f"{t}.1"], env, setsid=True, setsigdef=restored)
            running[pid] = t
        pid, status = os.wait()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{running[pid]} failed")
        for d in dependents[running.pop(pid)]:
            waiting[d] -= 1
            if waiting[d] == 0:
                ready.append(d)


if __name__ == "__main__":
    main()
