"""`when:` and `gate:` expressions: parsed once, checked against the workflow, evaluated safely.

An expression is Python-like (`needs_security and outputs.critique.decision == "APPROVED"`,
`output.confidence >= 0.75`) and is evaluated by simpleeval, never by `eval`.
Names it may use: the workflow's flags (bare, or as `flags.NAME`), `outputs.TASK.FIELD`
for tasks upstream of it, `output.FIELD` in a gate (the task's own output), the
literals `true`, `false`, `null`, and the functions len, min, max, abs, round, int,
float, str, bool.

A prompt may hold such expressions as `${{ outputs.research.summary }}`: `template` parses
it, and `Template.render` puts in each value (text as it is, anything else as JSON) when
the task is about to run. `$${{` is the two characters `${{` themselves.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

FUNCTIONS = {
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
}
LITERALS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}


class ConditionError(Exception):
    """An expression could not be evaluated; the message says why, in the user's terms."""


class OutputsUnknown(Exception):
    """The expression reads task outputs, which are unknown before the run."""


class Record:
    """A task's JSON output, readable as `outputs.task.field` or `outputs.task["field"]`.

    Not a Mapping on purpose: it has no methods, so `outputs.a.items` reads a field.
    """

    __slots__ = ("_data", "_name")

    def __init__(self, data: Mapping[str, Any], name: str) -> None:
        self._data = data
        self._name = name

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]

    def __getitem__(self, key: str) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            fields = ", ".join(sorted(map(str, self._data))) or "none"
            if not self._data and self._name == "output":
                fields = "none: the task wrote nothing, or {}, to $ABREAST_OUTPUT"
            elif not self._data and self._name.count(".") == 1 and self._name[:8] == "outputs.":
                fields = f"none: {self._name[8:]} wrote nothing, or {{}}, to its $ABREAST_OUTPUT"
            raise ConditionError(f"{self._name} has no field {key!r} (it has: {fields})") from None
        return wrap(value, f"{self._name}.{key}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record):
            return self._data == other._data
        return self._data == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Record({self._name})"


def wrap(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        return Record(value, name)
    return value


class _UnknownOutputs(Mapping[str, Any]):
    """Stands for `outputs`/`output` when planning: any read means "unknown until run"."""

    def __getattr__(self, key: str) -> Any:
        raise OutputsUnknown(key)

    def __getitem__(self, key: str) -> Any:
        raise OutputsUnknown(key)

    def __iter__(self) -> Iterator[str]:
        raise OutputsUnknown("")

    def __len__(self) -> int:
        raise OutputsUnknown("")


@dataclass(frozen=True)
class Expression:
    """A parsed condition, with the names and upstream tasks it reads."""

    source: str
    flags: frozenset[str]
    tasks: frozenset[str]  # tasks whose outputs it reads by name
    reads_own_output: bool
    reads_outputs: bool = True  # False: `outputs` appears nowhere, any outputs will do
    # True: `outputs` is read only by task name (`outputs.a`, `outputs["a"]`, `"a" in
    # outputs`), so the outputs of `tasks` and `probed` are all it needs (not every task's:
    # a long chain of tasks each reading the one before cost O(tasks) each).
    by_name: bool = False
    probed: frozenset[str] = frozenset()  # names tested with `in outputs`

    def evaluate(
        self,
        flags: Mapping[str, Any],
        outputs: Mapping[str, Any] | None,
        output: Mapping[str, Any] | None = None,
    ) -> bool:
        """True or False; ConditionError when a value is missing or the expression fails.

        `outputs`/`output` as None mean "not known yet": reading them raises OutputsUnknown.
        """
        return bool(self.value(flags, outputs, output))

    def value(
        self,
        flags: Mapping[str, Any],
        outputs: Mapping[str, Any] | None,
        output: Mapping[str, Any] | None = None,
    ) -> Any:
        """The expression's value (a task's output or part of one as a `Record`), as
        `evaluate`."""
        import simpleeval  # only runs that evaluate conditions pay for the import

        names: dict[str, Any] = dict(LITERALS)
        names.update(flags)
        names["flags"] = Record(flags, "flags")
        names["outputs"] = (
            _UnknownOutputs()
            if outputs is None
            else Record({k: wrap(v, f"outputs.{k}") for k, v in outputs.items()}, "outputs")
        )
        names["output"] = _UnknownOutputs() if output is None else Record(output, "output")
        evaluator = simpleeval.SimpleEval(functions=FUNCTIONS, names=names)
        evaluator.ATTR_INDEX_FALLBACK = False
        try:
            return evaluator.eval(self.source)
        except (OutputsUnknown, ConditionError):
            raise
        except simpleeval.NameNotDefined as e:
            raise ConditionError(f"unknown name {e.name!r}") from None
        except simpleeval.InvalidExpression as e:
            raise ConditionError(str(e)) from None
        except TypeError as e:  # `output.confidence >= 0.75` with "high" in it
            raise ConditionError(_in_json_terms(e)) from None
        except (
            ValueError,
            ZeroDivisionError,
            KeyError,
            IndexError,
            AttributeError,
        ) as e:
            raise ConditionError(f"{type(e).__name__}: {e}") from None


# Python's names of the types a value read from JSON (or a literal) has, as JSON says them.
_JSON_TYPES = {
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "null",
    "list": "an array",
    "tuple": "an array",
    "dict": "an object",
    "Record": "an object",
}


def _in_json_terms(e: TypeError) -> str:
    """`'>=' not supported between a string and a number`, for Python's `... between
    instances of 'str' and 'float'`: what an output's author wrote is JSON."""
    text = str(e).replace("between instances of ", "between ")
    joined = re.fullmatch(r'can only concatenate (\w+) \(not "(\w+)"\) to \1', text)
    if joined:  # `output.name + 1`
        one, other = (_JSON_TYPES.get(x, x) for x in joined.groups())
        return f"'+' joins {one} only to {one}, not to {other}"
    return re.sub(r"'(\w+)'", lambda m: _JSON_TYPES.get(m.group(1), m.group(0)), text)


def parse(source: str, *, allow_output: bool) -> Expression:
    """Parse and check the shape of `source`; ValueError with a readable message if wrong."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"is not a valid expression: {e.msg}") from None
    flags: set[str] = set()
    tasks: set[str] = set()
    own = False
    reads_outputs = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
                raise ValueError("may only call " + ", ".join(sorted(FUNCTIONS)))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ValueError(f"may not read {node.attr!r}: names starting with _ are private")
        elif isinstance(
            node,
            ast.Lambda
            | ast.NamedExpr
            | ast.ListComp
            | ast.SetComp
            | ast.DictComp
            | ast.GeneratorExp
            | ast.Await
            | ast.Yield
            | ast.YieldFrom
            | ast.Starred,
        ):
            raise ValueError(f"may not use {type(node).__name__.lower()} expressions")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name) or node.id in FUNCTIONS or node.id in LITERALS:
            continue
        if node.id == "outputs":
            reads_outputs = True
            continue
        if node.id == "output":
            if not allow_output:
                raise ValueError("reads `output`, which only a gate has; use outputs.TASK.FIELD")
            own = True
            continue
        if node.id != "flags":
            flags.add(node.id)
    by_name, probed = _named_reads(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "outputs":
                tasks.add(node.attr)
            elif node.value.id == "flags":
                flags.add(node.attr)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            if node.value.id == "outputs":
                tasks.add(node.slice.value)
            elif node.value.id == "flags":
                flags.add(node.slice.value)
    return Expression(
        source.strip(),
        frozenset(flags),
        frozenset(tasks),
        own,
        reads_outputs,
        by_name and reads_outputs,
        frozenset(probed),
    )


def _named_reads(tree: ast.AST) -> tuple[bool, set[str]]:
    """Whether every read of `outputs` in `tree` names its task (an attribute, a string
    subscript, or a string tested `in` it), and the names so tested."""
    parent: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parent[child] = node
    probed: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == "outputs"):
            continue
        up = parent.get(node)
        if isinstance(up, ast.Attribute) and up.value is node:
            continue
        if (
            isinstance(up, ast.Subscript)
            and up.value is node
            and isinstance(up.slice, ast.Constant)
            and isinstance(up.slice.value, str)
        ):
            continue
        if (
            isinstance(up, ast.Compare)
            and len(up.ops) == 1
            and isinstance(up.ops[0], ast.In | ast.NotIn)
            and up.comparators[0] is node
            and isinstance(up.left, ast.Constant)
            and isinstance(up.left.value, str)
        ):
            probed.add(up.left.value)
            continue
        return False, set()
    return True, probed


# `$${{` (the characters themselves), or `${{ EXPRESSION }}`.
PLACE = re.compile(r"\$\$\{\{|\$\{\{(.*?)\}\}", re.DOTALL)
TEMPLATE_ESCAPE_HINT = "to keep the characters `${{` in a prompt, write `$${{`"


@dataclass(frozen=True)
class Template:
    """A prompt with `${{ EXPRESSION }}` places: text and expressions, in order."""

    parts: tuple[str | Expression, ...]

    @property
    def expressions(self) -> list[Expression]:
        return [p for p in self.parts if isinstance(p, Expression)]

    def render(self, flags: Mapping[str, Any], outputs: Mapping[str, Any]) -> str:
        """The text with each expression's value put in; ConditionError as `evaluate`."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                out.append(as_text(part.value(flags, outputs)))
            except ConditionError as e:
                raise ConditionError(f"${{{{ {part.source} }}}}: {e}") from None
        return "".join(out)


def as_text(value: Any) -> str:
    """A value put into a prompt: text as it is; anything else as JSON (`true`, `null`,
    `0.75`; an object or a list indented, as a model reads it best)."""
    if isinstance(value, Record):
        value = value._data
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list):
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return json.dumps(value, default=str)


def template(source: str) -> Template | None:
    """The template of a prompt, or None when it has no `${{` (nor `$${{`); ValueError
    saying which place is wrong."""
    if "${{" not in source:
        return None
    parts: list[str | Expression] = []
    text: list[str] = []
    at = 0
    for m in [*PLACE.finditer(source), None]:
        between = source[at : len(source) if m is None else m.start()]
        if "${{" in between:
            start = at + between.index("${{")
            raise ValueError(
                f"has `${{{{` with no `}}}}` after it: {source[start : start + 40]!r}; "
                + TEMPLATE_ESCAPE_HINT
            )
        text.append(between)
        if m is None:
            break
        at = m.end()
        if m[1] is None:
            text.append("${{")
            continue
        inner = m[1].strip()
        if not inner:
            raise ValueError(f"{m[0]!r} is empty; {TEMPLATE_ESCAPE_HINT}")
        try:
            expr = parse(inner, allow_output=False)
        except ValueError as e:
            raise ValueError(f"{m[0]!r} {e}") from None
        if text:
            parts.append("".join(text))
            text = []
        parts.append(expr)
    if "".join(text):
        parts.append("".join(text))
    return Template(tuple(parts))
