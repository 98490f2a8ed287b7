"""YAML into plain data with a line for every key and item, read with the safe loader.

The document is composed into nodes (the C parser when libyaml is present) and
the nodes are walked here: every key and list item gets its line, duplicate
keys are caught, and a tag other than the standard ones is refused before
anything is constructed.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from abreast.errors import SpecError, SpecProblem
from abreast.spec.loader import MAX_DEPTH, Document, Path_

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_NODES = 2_000_000  # guards against alias bombs ("billion laughs")
_TOO_LARGE = "the document is too large or too deeply nested (aliases expanding without bound?)"
_STD_TAGS = frozenset(
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "merge")
)
_MERGE_TAG = "tag:yaml.org,2002:merge"


def parse_yaml(text: str, file: str) -> Document:
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            raise SpecError(file, [_yaml_problem(e, text)]) from None
        except yaml.reader.ReaderError as e:  # a character YAML does not allow
            raise SpecError(file, [_reader_problem(e, text)]) from None
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
        bomb = _expanding_node(node, text)
        if bomb is not None:
            raise walker.fail(bomb, _TOO_LARGE)
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
        if self.count > _MAX_NODES or depth > MAX_DEPTH:
            raise self.fail(node, _TOO_LARGE)
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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


# An alias (`*name`) where a value starts; only a document with one can expand.
_ALIAS = re.compile(r"(?:^|[\s\[{,:-])\*[^\s\[\]{},]")


def _expanding_node(root: yaml.Node, text: str) -> yaml.Node | None:
    """The node where aliases make the document expand past `_MAX_NODES` values (an
    alias bomb: ten lines, a billion values), or None. An alias is the node it names,
    so each distinct collection is sized once: time in the file's size, not in what it
    expands to (walking the expansion took 5 s to refuse ten lines). A node that
    contains itself (`&a [*a]`) is unbounded too."""
    if not _ALIAS.search(text):
        return None
    over = _MAX_NODES + 1
    sizes: dict[int, int] = {}
    sizing: set[int] = set()  # the collections whose parts are being sized: the path down
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    scalar = yaml.ScalarNode
    while stack:
        node, parts_sized = stack.pop()
        key = id(node)
        if parts_sized:
            sizing.discard(key)
            total = 1
            for part in _children(node):
                total += 1 if part.__class__ is scalar else sizes.get(id(part), over)
            sizes[key] = min(over, total)
        elif key not in sizes:
            if key in sizing:  # it contains itself
                sizes[key] = over
                continue
            sizing.add(key)
            stack.append((node, True))
            for part in _children(node):
                if part.__class__ is not scalar and id(part) not in sizes:
                    stack.append((part, False))
    if sizes.get(id(root), 1) < over:
        return None
    node, seen = root, {id(root)}
    while True:  # down to the node whose own expansion is too large, for its line
        inner = next((k for k in _children(node) if sizes.get(id(k), 0) >= over), None)
        if inner is None or id(inner) in seen:
            return node
        node = inner
        seen.add(id(node))


def _yaml_problem(e: yaml.MarkedYAMLError, text: str) -> SpecProblem:
    """Where and what: a construct left open when the file ends (an unclosed quote or
    bracket), or a line that is not `key: value`, is reported on the line where it
    starts, not on the line where the parser gave up (the next one, or past the end)."""
    fence = _fence_line(text)
    if fence is not None:
        return SpecProblem(
            "invalid YAML: this line is a Markdown code fence (```), not YAML",
            line=fence,
            hint="the file holds the text around the YAML too (copied from a page or a "
            "chat's answer): keep only the lines between the ``` fences",
        )
    mark = e.problem_mark or e.context_mark
    context = e.context or ""
    hint = "check the indentation and quoting around this line"
    line = mark.line + 1 if mark else None
    end = len(text.rstrip())
    opened = e.context_mark is not None and (
        "simple key" in context or (mark is not None and mark.index >= end)
    )
    if opened and e.context_mark is not None:
        mark = e.context_mark
        line = mark.line + 1
        if mark.index >= end:  # the parser places it at the end too: the last line then
            line = text.count("\n", 0, end) + 1
        if "simple key" in context:
            hint = "write `key: value` (a colon and a space after the key), or remove the line"
        elif "quoted" in context or "flow" in context:
            hint = "close the quote or bracket this line opens"
        context = f"{context} that starts on this line" if context else "that starts on this line"
    elif mark is not None and _tab_at(text, mark.index):
        hint = "YAML indents with spaces only: replace the tab on this line with spaces"
    elif mark is not None:
        hint = _plain_value_hint(text, mark.line) or hint
    return SpecProblem(
        f"invalid YAML: {e.problem or 'invalid YAML'}" + (f" ({context})" if context else ""),
        line=line,
        hint=hint,
    )


def _reader_problem(e: yaml.reader.ReaderError, text: str) -> SpecProblem:
    """A character YAML does not allow (a control character: a terminal's colour codes
    pasted in), said with its line rather than its offset in "<unicode string>"."""
    at = min(max(e.position, 0), len(text))
    char = e.character if isinstance(e.character, str) else chr(e.character)
    what = "an escape character (a terminal's colour codes?)" if char == "\x1b" else None
    return SpecProblem(
        f"invalid YAML: character U+{ord(char):04X} on this line is not allowed in YAML"
        + (f": {what}" if what else ""),
        line=text.count("\n", 0, at) + 1,
        hint="remove it; in a double-quoted value write it as an escape (\\e, \\t, \\x07)",
    )


def _fence_line(text: str) -> int | None:
    """The line number of the first Markdown code fence (```) at the start of a line: YAML
    cannot hold one there (one inside an indented block, `prompt: |`, is text)."""
    return next((n for n, line in enumerate(text.splitlines(), 1) if line[:3] == "```"), None)


def _tab_at(text: str, index: int) -> bool:
    """Whether the character at `index` is a tab in the line's indentation (or the one
    the parser stopped at), which YAML forbids."""
    if text[index : index + 1] == "\t":
        return True
    start = text.rfind("\n", 0, index) + 1
    return "\t" in text[start:index] and not text[start:index].strip(" \t")


_KEY_VALUE = re.compile(r"^(\s*)(?:-\s+)?([\w.-]+):\s+(\S.*)$")
_OPENS = {
    "[": "`[` opens a list",
    "{": "`{` opens a mapping",
    "&": "`&` names an anchor",
    "*": "`*` refers to an anchor",
    "!": "`!` gives a tag",
    "`": "a backquote is reserved",
    "@": "`@` is reserved",
    "%": "`%` starts a directive",
}


# Keys whose values are text (commands, prompts, conditions): a value of theirs that
# starts with `[`, `{`, `&`, ... was meant as text, not as YAML's syntax.
_TEXT_KEYS = frozenset({"run", "prompt", "gate", "when", "description", "name"})


def _plain_value_hint(text: str, line_no: int) -> str | None:
    """The hint for a line `key: value` whose value YAML does not take as plain text: a
    shell command or a prompt holding `: ` (read as a second key), starting with `[`,
    `&`, a backquote, ..., or quoted only in part (`"echo" x`)."""
    lines = text.splitlines()
    if line_no >= len(lines):
        return None
    m = _KEY_VALUE.match(lines[line_no])
    if m is None or m[3][0] in "|>":
        return None
    value = m[3]
    if value[0] in _OPENS:
        if m[2] not in _TEXT_KEYS:  # `tasks: {...}`, `defaults: &d`: YAML meant as such
            return None
        why = _OPENS[value[0]]
    elif value[0] in "'\"" and value.rstrip().rfind(value[0]) < len(value.rstrip()) - 1:
        why = "a quote that starts it must end it"
    elif ": " in value:
        why = "`: ` in it reads as another key"
    else:
        return None
    shown = value if len(value) <= 80 else value[:77] + "..."
    return (
        f"the value of `{m[2]}` is not plain text to YAML ({why}): write it as a block, "
        f"the value on the next line indented further,\n      {m[2]}: |\n        {shown}\n"
        "  or put the whole value in single quotes (doubling any ' in it)"
    )
