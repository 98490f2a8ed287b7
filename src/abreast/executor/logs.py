"""Reading attempts' logs: light, for the commands that only look (report, status)."""

from __future__ import annotations

import os
import re

LOG_TAIL_LINES = 12
KEY_SHOWN = "[key {}]"  # what stands for a key's value, by its fingerprint

# Terminal escape sequences: CSI (colours, cursor moves, clearing), OSC (window titles,
# hyperlinks; ended by BEL or ST, or by the end of the line) and the two-byte ones.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -Z\\-~]?)")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(line: str) -> str:
    """`line` safe to print on a terminal, in a summary or a page: escape sequences
    removed (a task's colours, or a `clear`, must not restyle or wipe what abreast
    prints around them), other control characters shown as \\xNN."""
    if "\x1b" in line:
        line = _ESCAPES.sub("", line)
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


def log_tail(path: str | None, lines: int = LOG_TAIL_LINES, max_bytes: int = 8192) -> list[str]:
    """The last `lines` non-blank lines of a log (from its last `max_bytes`), made
    `visible`; bytes that are not UTF-8 become U+FFFD. [] if it cannot be read."""
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [visible(line) for line in data.splitlines() if line.strip()][-lines:]


def scrub_secrets(path: str, secrets: list[tuple[str, str]], chunk: int = 1 << 22) -> int:
    """Replace each secret value in the file at `path` by `[key FINGERPRINT]` (a key a
    direct-mode task printed); returns how many were replaced. Read in chunks (a log may
    be larger than memory); the file is rewritten, by rename, only when it holds one."""
    pairs = [(value.encode(), KEY_SHOWN.format(fp).encode()) for fp, value in secrets if value]
    if not pairs or not _holds_any(path, [raw for raw, _ in pairs], chunk):
        return 0
    keep = max(len(raw) for raw, _ in pairs) - 1  # a value may straddle two chunks
    found = 0
    tmp = f"{path}.scrub"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        carry = b""
        while True:
            data = src.read(chunk)
            buf = carry + data
            for raw, shown in pairs:
                found += buf.count(raw)
                buf = buf.replace(raw, shown)
            if not data:
                dst.write(buf)
                break
            cut = max(0, len(buf) - keep)
            dst.write(buf[:cut])
            carry = buf[cut:]
    os.replace(tmp, path)
    return found


def _holds_any(path: str, raws: list[bytes], chunk: int) -> bool:
    keep = max(len(raw) for raw in raws) - 1
    try:
        with open(path, "rb") as f:
            tail = b""
            while data := f.read(chunk):
                buf = tail + data
                if any(raw in buf for raw in raws):
                    return True
                tail = buf[-keep:] if keep else b""
    except OSError:
        return False
    return False
