"""Reading a workflow file into plain data, remembering where each value came from.

YAML is read with the safe loader only (the C parser when libyaml is present):
it is composed into nodes first, and the nodes are walked here, so every key
and item gets its line, duplicate keys are caught, and a tag other than the
standard ones is refused before anything is constructed. JSON takes the fast
`json` path; lines are only looked up (by reading the text as YAML) when an
error needs one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abreast.errors import SpecError, SpecProblem
from abreast.gcpause import paused_gc

# How deep a document may nest (lists and mappings): what reads it recurses.
MAX_DEPTH = 64

Path_ = tuple[str | int, ...]

# A workflow read from standard input (`abreast analyze -`): its bytes, by the name the
# command was given ("-"), which messages name it by.
STDIN = "-"
_given: dict[str, bytes] = {}


def give(data: bytes) -> None:
    """Make `data` what the workflow file named `-` holds."""
    _given[STDIN] = data


def read_bytes(path: str | Path) -> bytes:
    """The bytes of the workflow file at `path` (or of standard input's, `-`)."""
    given = _given.get(str(path))
    return Path(path).read_bytes() if given is None else given


@dataclass
class Document:
    """The data of a workflow file and a way to find the line of any path in it."""

    file: str
    data: Any
    _lines: dict[Path_, int] | None = None
    _find_lines: Callable[[], dict[Path_, int]] | None = field(default=None, repr=False)

    def line(self, path: Path_) -> int | None:
        """Line (1-based) of `path`, or of its nearest located ancestor."""
        if self._lines is None:
            self._lines = self._find_lines() if self._find_lines else {}
        while True:
            if path in self._lines:
                return self._lines[path]
            if not path:
                return None
            path = path[:-1]


def _not_utf8(data: bytes, at: int, why: str) -> SpecProblem:
    """Where a file stops being UTF-8 text (byte `at`), and in what it was likely saved."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\0" in data[:2]:
        return SpecProblem(
            "is UTF-16 text, not UTF-8 (as Windows PowerShell's `>` and some editors save it)",
            hint="save it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 FILE > FILE.new`",
        )
    line = data.count(b"\n", 0, at) + 1
    if data[at] == 0:
        return SpecProblem(
            "is not text: it holds a NUL byte on this line",
            line=line,
            hint="give the path of a workflow file (YAML or JSON, saved as UTF-8)",
        )
    return SpecProblem(
        f"is not UTF-8 text: byte 0x{data[at]:02x} on this line ({why}), as in a file "
        "saved as Latin-1 or Windows-1252",
        line=line,
        hint="save it as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 FILE > FILE.new`",
    )


def load_document(path: str | Path) -> Document:
    """Read `path` (YAML, or JSON by its `.json` suffix) into a `Document`."""
    file = str(path)
    try:
        if file in _given:  # read as a file is: universal newlines
            text = _given[file].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        else:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            file,
            [
                SpecProblem(
                    "no such file",
                    hint="give the path of a workflow file, e.g. abreast.yaml "
                    "(`abreast init` writes a starter one)",
                )
            ],
        ) from None
    except IsADirectoryError:
        raise SpecError(file, [SpecProblem("is a directory, not a workflow file")]) from None
    except UnicodeDecodeError as e:
        raise SpecError(file, [_not_utf8(e.object, e.start, e.reason)]) from None
    except OSError as e:
        raise SpecError(file, [SpecProblem(f"cannot be read: {e.strerror}")]) from None
    if "\0" in text:  # valid UTF-8, and no text: UTF-16 without its mark, or not text at all
        raise SpecError(file, [_not_utf8(text.encode(), text.index("\0"), "a NUL byte")])
    if file.endswith(".json") or (file in _given and text.lstrip().startswith("{")):
        return parse_json(text, file)
    return parse_yaml(text, file)


def parse_json(text: str, file: str) -> Document:
    try:
        with paused_gc():
            data = json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKey:
        # Read it again as YAML, which knows lines, to say where the duplicate is.
        return parse_yaml(text, file)
    except json.JSONDecodeError as e:
        raise SpecError(
            file, [SpecProblem(f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno)]
        ) from None
    except RecursionError:  # far deeper than allowed
        too_deep = True
    else:
        too_deep = json_depth(data) > MAX_DEPTH
    if too_deep:  # as the YAML reader refuses it
        raise SpecError(file, [SpecProblem(f"the document nests over {MAX_DEPTH} levels deep")])
    return Document(file, data, _find_lines=lambda: _yaml_lines_or_empty(text, file))


def json_depth(value: object) -> int:
    """How deep lists and objects nest in `value` (a scalar: 0), without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _yaml_lines_or_empty(text: str, file: str) -> dict[Path_, int]:
    try:
        return parse_yaml(text, file)._lines or {}
    except SpecError:
        return {}


def parse_yaml(text: str, file: str) -> Document:
    from abreast.spec.yamldoc import parse_yaml as parse  # yaml is imported only for YAML

    return parse(text, file)
