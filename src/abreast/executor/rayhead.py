"""The local Ray cluster of one run: `python -m abreast.executor.rayhead CPUS`.

Started by the orchestrator in a session of its own (`ray_exec.connect`). It starts a Ray
cluster with CPUS CPUs, prints its address, and stops it when its standard input ends:
when the orchestrator closes it at the end of the run, or dies. SIGTERM stops it too.
"""

from __future__ import annotations

import logging
import os
import signal
import sys


def main() -> None:
    cpus = int(sys.argv[1])

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    import ray

    context = ray.init(
        address="local",  # a new cluster, even where `ray start` left one to join
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        namespace="abreast",
    )
    try:
        # Its address, and how drivers authenticate to it (Ray turns on tokens by default
        # for a local cluster, in this process's environment).
        address = context.address_info["gcs_address"]  # type: ignore[attr-defined]
        print(address, os.environ.get("RAY_AUTH_MODE", ""), flush=True)
        sys.stdin.buffer.read()  # until the orchestrator closes it, or dies
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
