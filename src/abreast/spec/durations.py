"""Durations (`90s`, `45m`, `1h30m`, `2`), rates (`100/min`) and sizes (`100MB`)."""

from __future__ import annotations

import re
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


def parse_duration(value: object) -> float:
    """Seconds in `value`; raises ValueError with the accepted forms."""
    if isinstance(value, str):
        return _parse_duration_text(value)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; {DURATION_HELP}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative; {DURATION_HELP}")
        return float(value)
    raise ValueError(f"{value!r} is not a duration; {DURATION_HELP}")


@lru_cache(maxsize=1024)  # workflows repeat a few durations many times
def _parse_duration_text(value: str) -> float:
    text = value.strip().lower().replace(" ", "")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if number < 0:
            raise ValueError(f"{value!r} is negative; {DURATION_HELP}")
        return number
    if text and _WHOLE.fullmatch(text):
        return sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(text))
    raise ValueError(f"{value!r} is not a duration; {DURATION_HELP}")


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
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*", value.lower())
        if m and m.group(3) in _RATE_PER and int(m.group(1)) > 0:
            mult = float(m.group(2)) if m.group(2) else 1.0
            if mult > 0:
                return int(m.group(1)), mult * _RATE_PER[m.group(3)]
    raise ValueError(
        f"{value!r} is not a rate; write a count per window like 100/min, 10/s, 5000/h or 50/10s"
    )


def parse_size(value: object) -> int:
    """Bytes in `100MB`, `2GiB`, `512` (bytes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value.lower())
        if m and m.group(2) in _SIZE_UNIT:
            return int(float(m.group(1)) * _SIZE_UNIT[m.group(2)])
    raise ValueError(f"{value!r} is not a size; write bytes like 100MB, 2GiB or a number")
