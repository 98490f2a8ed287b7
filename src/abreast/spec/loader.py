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

import yaml

from abreast.errors import SpecError, SpecProblem
from abreast.gcpause import paused_gc

Path_ = tuple[str | int, ...]

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_NODES = 2_000_000  # guards against alias bombs ("billion laughs")
_MAX_DEPTH = 64
_STD_TAGS = frozenset(
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "merge")
)
_MERGE_TAG = "tag:yaml.org,2002:merge"


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


def load_document(path: str | Path) -> Document:
    """Read `path` (YAML, or JSON by its `.json` suffix) into a `Document`."""
    file = str(path)
    try:
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
        raise SpecError(file, [SpecProblem(f"is not UTF-8 text ({e.reason})")]) from None
    except OSError as e:
        raise SpecError(file, [SpecProblem(f"cannot be read: {e.strerror}")]) from None
    if file.endswith(".json"):
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
    return Document(file, data, _find_lines=lambda: _yaml_lines_or_empty(text, file))


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
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = e.problem or "invalid YAML"
            raise SpecError(
                file,
                [
                    SpecProblem(
                        f"invalid YAML: {problem}" + (f" ({e.context})" if e.context else ""),
                        line=mark.line + 1 if mark else None,
                        hint="check the indentation and quoting around this line",
                    )
                ],
            ) from None
        except yaml.YAMLError as e:
            raise SpecError(file, [SpecProblem(f"invalid YAML: {e}")]) from None
        if node is None:
            raise SpecError(
                file,
                [
                    SpecProblem(
                        "the file is empty",
                        hint="a workflow needs at least `version: 1` and `tasks:`",
                    )
                ],
            )
        walker = _Walker(loader, file)
        data = walker.value(node, (), 0)
        return Document(file, data, _lines=walker.lines)
    finally:
        loader.dispose()


class _Walker:
    def __init__(self, loader: Any, file: str) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[Path_, int] = {}
        self.count = 0

    def fail(self, node: yaml.Node, message: str, hint: str | None = None) -> SpecError:
        return SpecError(
            self.file, [SpecProblem(message, line=node.start_mark.line + 1, hint=hint)]
        )

    def value(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.count += 1
        if self.count > _MAX_NODES or depth > _MAX_DEPTH:
            raise self.fail(
                node,
                "the document is too large or too deeply nested (aliases expanding without bound?)",
            )
        if node.tag not in _STD_TAGS:
            raise self.fail(
                node,
                f"unsupported YAML tag {node.tag!r}",
                hint="abreast reads plain YAML only; remove the tag",
            )
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            out = []
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                out.append(self.value(item, (*path, i), depth + 1))
            return out
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise self.fail(node, f"invalid value: {e}") from None

    def mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.key(key_node)
            if key in seen:
                raise self.fail(
                    key_node,
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    hint="each key may appear once in a mapping; merge the two",
                )
            seen[key] = key_node.start_mark.line + 1
        try:
            self.loader.flatten_mapping(node)  # resolves `<<: *anchor`; own keys win
        except yaml.YAMLError as e:
            raise self.fail(node, f"invalid merge key: {e}") from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.key(key_node)
            child = (*path, key)
            self.lines[child] = key_node.start_mark.line + 1  # own keys come last and win
            out[key] = self.value(value_node, child, depth + 1)
        return out

    def key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, "a mapping key must be a plain value, not a list or mapping")
        return str(node.value)
