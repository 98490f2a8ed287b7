"""`abreast keys [RUN]`: how each key was used, by fingerprint, from the journal."""

from __future__ import annotations

from typing import Any, TextIO

from abreast.coord.journal import Journal
from abreast.observe.rundata import tokens_line


def usage(journal: Journal, run_id: str) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in journal.events(run_id, types=("api.request", "api.limited", "key.leased")):
        pool, fp = str(e.data.get("pool")), str(e.data.get("fingerprint"))
        row = rows.setdefault(
            (pool, fp),
            {
                "pool": pool,
                "fingerprint": fp,
                "requests": 0,
                "ok": 0,
                "limited": 0,
                "limited_s": 0.0,
                "leases": 0,
            },
        )
        if e.type == "api.request":
            count = int(e.data.get("count", 1))
            row["requests"] += count
            if int(e.data.get("status", 0)) != 429:
                row["ok"] += count
        elif e.type == "api.limited":
            row["limited"] = max(row["limited"], int(e.data.get("limited", 0)))
            row["limited_s"] = max(row["limited_s"], float(e.data.get("limited_s", 0.0)))
        else:
            row["leases"] += 1
    return sorted(rows.values(), key=lambda r: (r["pool"], r["fingerprint"]))


def print_tokens(tokens: dict[str, dict[str, int]], out: TextIO) -> None:
    for pool, use in sorted(tokens.items()):
        out.write(f"tokens through {pool}: {tokens_line(use)}, as the provider counted\n")


def print_usage(rows: list[dict[str, Any]], limits: dict[str, str], out: TextIO) -> None:
    if not rows:
        out.write("no API key use recorded in this run\n")
        return
    out.write(
        f"{'POOL':<12} {'KEY':<8} {'LIMIT':>9} {'REQUESTS':>8} {'OK':>6} {'429s':>5} "
        f"{'LIMITED':>8} {'LEASES':>6}\n"
    )
    for r in rows:
        out.write(
            f"{r['pool']:<12} {r['fingerprint']:<8} {limits.get(r['pool'], '-'):>9} "
            f"{r['requests']:>8} {r['ok']:>6} {r['limited']:>5} "
            f"{r['limited_s']:>7.1f}s {r['leases']:>6}\n"
        )
    out.write("keys are shown by fingerprint: the first 8 hex digits of their SHA-256\n")
