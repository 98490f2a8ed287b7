"""Every benchmark, one after another (`make bench`); the figures go to docs/benchmarks.md.

    python bench/run_all.py [--quick]

Each benchmark runs as its own process with its default settings (`--quick`: fewer
repeats and the small sizes only, for a smoke run), its output printed as it comes and
kept in bench/out/<name>.txt. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BENCHES: dict[str, tuple[list[str], list[str]]] = {
    # name: (full arguments, --quick arguments)
    "plan": (["--repeat", "5"], ["--sizes", "10000", "--repeat", "1"]),
    "dispatch": (["--repeat", "3"], ["--sizes", "1000", "--shapes", "wide", "--repeat", "1"]),
    "crash": (["--runs", "50"], ["--runs", "3"]),
    "isolation": (["--files", "10000"], ["--files", "2000", "--rounds", "3", "--merges", "10"]),
    "coord": ([], ["--rounds", "200", "--messages", "20000"]),
    "observe": (["--repeat", "7"], ["--repeat", "1"]),
    "keys": ([], ["--requests", "200", "--rounds", "1"]),
    "merge": ([], ["--tasks", "4", "--check", "0.2", "--batches", "1,4", "--repeat", "1"]),
    "ray": ([], ["--tasks", "20", "--repeat", "1"]),
    "scale": ([], ["--sizes", "100", "--repeat", "1"]),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run: small and once")
    ap.add_argument("only", nargs="*", help=f"some of: {', '.join(BENCHES)}")
    args = ap.parse_args()
    unknown = set(args.only) - set(BENCHES)
    if unknown:
        ap.error(f"no benchmark named {', '.join(sorted(unknown))}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, (full, quick) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        argv = [sys.executable, str(ROOT / "bench" / f"{name}_bench.py")]
        argv += quick if args.quick else full
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        t0 = time.monotonic()
        with open(out / f"{name}.txt", "w") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            code = proc.wait()
        print(f"== {name}: exit {code} after {time.monotonic() - t0:.0f} s\n", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
