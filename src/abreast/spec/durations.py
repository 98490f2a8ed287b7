"""Durations (`90s`, `45m`, `1h30m`, `2`), rates (`100/min`) and sizes (`100MB`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_RATE_PER = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_SIZE_UNIT = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}

DURATION_HELP = "write a duration like 90s, 45m, 2h, 1h30m or a number of seconds"


# The longest duration taken: ten years. Beyond it a timeout, a lease or a wait means
# "never", which leaving the key out says; and the clocks it is handed to have limits
# (threading's waits refuse more than about 292 years).
MAX_DURATION_S = 3650 * 86400.0
MAX_RATE_COUNT = 1_000_000_000
MAX_SIZE = 2**60  # bytes: within SQLite's integers


def parse_duration(value: object) -> float:
    """Seconds in `value`; raises ValueError with the accepted forms."""
    if isinstance(value, str):
        return _parse_duration_text(value)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; {DURATION_HELP}")
    if isinstance(value, int | float):
        return _in_range(float(value), value)
    raise ValueError(f"{value!r} is not a duration; {DURATION_HELP}")


@lru_cache(maxsize=1024)  # workflows repeat a few durations many times
def _parse_duration_text(value: str) -> float:
    text = value.strip().lower().replace(" ", "")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _in_range(number, value)
    if text and _WHOLE.fullmatch(text):
        return _in_range(sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(text)), value)
    raise ValueError(f"{value!r} is not a duration; {DURATION_HELP}")


def _in_range(seconds: float, written: object) -> float:
    if not math.isfinite(seconds):  # NaN, infinity
        raise ValueError(f"{written!r} is not a duration; {DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"{written!r} is negative; {DURATION_HELP}")
    if seconds > MAX_DURATION_S:
        raise ValueError(
            f"{written!r} is longer than 3650d, the longest duration abreast takes "
            "(for no limit at all, leave the key out)"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form: 3.7ms, 169ms, 1.25s, 45s, 12m, 1h30m, 2h."""
    if 0 < seconds < 1:
        ms = seconds * 1000
        return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.2g}ms"
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds != int(seconds) else f"{int(seconds)}s"
    total = round(seconds)
    d, rest = divmod(total, 86400) if total >= 2 * 86400 else (0, total)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{d}d" if d else "", f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s else ""]
    return "".join(parts) or "0s"


def parse_rate(value: object) -> tuple[int, float]:
    """(count, window_s) from `100/min`, `10/s`, `1000/1h`."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?|\.\d+)?\s*([a-z]+)\s*", value.lower())
        if m and m.group(3) in _RATE_PER:
            count = int(m.group(1))
            window = (float(m.group(2)) if m.group(2) else 1.0) * _RATE_PER[m.group(3)]
            if not 0 < count <= MAX_RATE_COUNT:
                raise ValueError(f"{value!r}: the count must be from 1 to {MAX_RATE_COUNT:,}")
            if not 0.001 <= window <= MAX_DURATION_S:
                raise ValueError(f"{value!r}: the window must be from 1ms to 3650d")
            return count, window
    raise ValueError(
        f"{value!r} is not a rate; write a count per window like 100/min, 10/s, 5000/h or 50/10s"
    )


def parse_size(value: object) -> int:
    """Bytes in `100MB`, `2GiB`, `512` (bytes)."""
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value.lower())
        if m and m.group(2) in _SIZE_UNIT:
            size = float(m.group(1)) * _SIZE_UNIT[m.group(2)]
    if size is not None:
        if size > MAX_SIZE:  # infinity too, from a float of 400 digits
            raise ValueError(f"{value!r} is more than 1EiB, the largest size abreast takes")
        return int(size)
    raise ValueError(f"{value!r} is not a size; write bytes like 100MB, 2GiB or a number")


def format_size(size: int) -> str:
    """`512 kB`, `12.3 MB`, `1.1 GB`: a size for a person (decimal units)."""
    if size >= 10**9:
        return f"{size / 1e9:.1f} GB"
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 task`, `2 tasks`: a count with its noun (`plural`, else a regular plural)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def listed(items: Sequence[str], limit: int, name: Callable[[str], str] | None = None) -> str:
    """`a, b, c and 2 more`: the first `limit` of `items` (each as `name` gives it, when
    given), and how many were left out."""
    head = items[:limit] if name is None else [name(x) for x in items[:limit]]
    return ", ".join(head) + (f" and {len(items) - limit} more" if len(items) > limit else "")
