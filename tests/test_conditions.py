from __future__ import annotations

import re

import pytest

from abreast.spec.conditions import ConditionError, OutputsUnknown, parse, template


def test_when_reads_flags_and_upstream_outputs() -> None:
    expr = parse('needs_security and outputs.critique.decision == "APPROVED"', allow_output=False)
    assert expr.flags == {"needs_security"}
    assert expr.tasks == {"critique"}
    outputs = {"critique": {"decision": "APPROVED"}}
    assert expr.evaluate({"needs_security": True}, outputs) is True
    assert expr.evaluate({"needs_security": False}, outputs) is False


def test_an_expression_knows_whether_it_reads_outputs_at_all() -> None:
    # The engine passes no outputs to one that reads none (O(1) per task, not O(tasks)).
    assert parse("outputs.a.ok", allow_output=False).reads_outputs
    assert parse("len(outputs) > 2", allow_output=False).reads_outputs  # no task named
    assert parse("outputs[flags.which].ok", allow_output=False).reads_outputs
    flag_only = parse("fast and flags.level >= 2", allow_output=False)
    assert not flag_only.reads_outputs
    assert flag_only.evaluate({"fast": True, "level": 3}, {}) is True


def test_gate_reads_own_output() -> None:
    expr = parse("output.confidence >= 0.75", allow_output=True)
    assert expr.reads_own_output
    assert expr.evaluate({}, {}, {"confidence": 0.8}) is True
    assert expr.evaluate({}, {}, {"confidence": 0.5}) is False


def test_missing_field_names_what_exists() -> None:
    expr = parse("output.confidence >= 0.75", allow_output=True)
    with pytest.raises(ConditionError, match=r"output has no field 'confidence' \(it has: score\)"):
        expr.evaluate({}, {}, {"score": 1})


def test_missing_field_of_an_upstream_task_that_wrote_nothing_says_so() -> None:
    expr = parse("outputs.c.score > 2", allow_output=False)
    with pytest.raises(ConditionError, match=r"it has: none: c wrote nothing, or \{\}, to its"):
        expr.evaluate({}, {"c": {}})


def test_outputs_unknown_before_the_run() -> None:
    expr = parse("outputs.a.ok", allow_output=False)
    with pytest.raises(OutputsUnknown):
        expr.evaluate({}, None)


def test_nested_fields_lists_and_functions() -> None:
    expr = parse(
        'len(outputs.a.files) > 1 and "x" in outputs.a.tags and outputs.a.m.n == 2',
        allow_output=False,
    )
    assert expr.evaluate({}, {"a": {"files": [1, 2], "tags": ["x"], "m": {"n": 2}}})


def test_flags_namespace_and_literals() -> None:
    expr = parse("flags.level >= 2 and true", allow_output=False)
    assert expr.flags == {"level"}
    assert expr.evaluate({"level": 3}, {})


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os').system('true')",
        "().__class__",
        "outputs.a.__class__",
        "(lambda: 1)()",
        "[x for x in flags]",
        "open('/etc/passwd')",
    ],
)
def test_unsafe_expressions_are_refused_at_parse(source: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own wording
        parse(source, allow_output=False)


def test_dict_methods_are_not_reachable() -> None:
    expr = parse("outputs.a.items", allow_output=False)
    with pytest.raises(ConditionError, match="has no field 'items'"):
        expr.evaluate({}, {"a": {"x": 1}})


def test_type_errors_become_condition_errors_in_jsons_terms() -> None:
    expr = parse("outputs.a.n > 1", allow_output=False)
    with pytest.raises(ConditionError, match=r"^'>' not supported between a string and a number$"):
        expr.evaluate({}, {"a": {"n": "text"}})
    expr = parse("output.n + 1 > 2", allow_output=True)
    with pytest.raises(ConditionError, match=r"for \+: null and a number$"):
        expr.evaluate({}, {}, {"n": None})
    with pytest.raises(
        ConditionError, match=r"^'\+' joins a string only to a string, not to a number$"
    ):
        expr.evaluate({}, {}, {"n": "1"})
    # A gate reading an output the task never wrote says so.
    expr = parse("output.confidence >= 0.75", allow_output=True)
    with pytest.raises(
        ConditionError, match=r"the task wrote nothing, or \{\}, to \$ABREAST_OUTPUT"
    ):
        expr.evaluate({}, {}, {})


def test_a_prompt_template_puts_in_text_as_it_is_and_other_values_as_json() -> None:
    t = template(
        "Do ${{ outputs.r.summary }}; strict=${{ strict }} score=${{outputs.r.score}} "
        "none=${{ outputs.r.none }}\nrisks: ${{ outputs.r.risks }}\nall: ${{ outputs.r }}"
    )
    assert t is not None
    assert {x.source for x in t.expressions} == {
        "outputs.r.summary",
        "strict",
        "outputs.r.score",
        "outputs.r.none",
        "outputs.r.risks",
        "outputs.r",
    }
    out = {"r": {"summary": "use JWT ${{ x }}", "score": 0.5, "none": None, "risks": ["ü"]}}
    text = t.render({"strict": True}, out)
    assert text == (
        "Do use JWT ${{ x }}; strict=true score=0.5 none=null\n"  # a value is not read again
        'risks: [\n  "ü"\n]\n'
        'all: {\n  "summary": "use JWT ${{ x }}",\n  "score": 0.5,\n  "none": null,\n'
        '  "risks": [\n    "ü"\n  ]\n}'
    )


def test_a_prompt_keeps_escaped_and_other_braces() -> None:
    assert template("no places {{ prompt }} {x}") is None  # other tools' braces: text
    t = template("$${{ secrets.X }} and $${{ unclosed, then ${{ flags.a }}")
    assert t is not None
    assert t.render({"a": 1}, {}) == "${{ secrets.X }} and ${{ unclosed, then 1"


def test_a_prompt_value_that_cannot_be_had_says_which_place() -> None:
    t = template("a ${{ outputs.r.x }}")
    assert t is not None
    with pytest.raises(ConditionError, match=r"^\$\{\{ outputs.r.x \}\}: outputs.r has no field"):
        t.render({}, {"r": {"y": 1}})


@pytest.mark.parametrize(
    ("source", "wrong"),
    [
        ("a ${{ b", "has `${{` with no `}}` after it: '${{ b'"),
        ("${{ a }} ${{ b", "has `${{` with no `}}` after it: '${{ b'"),
        ("${{   }}", "'${{   }}' is empty"),
        ("${{ a === b }}", "'${{ a === b }}' is not a valid expression"),
        ("${{ output.x }}", "reads `output`, which only a gate has"),
        ("${{ __import__('os') }}", "may only call"),
    ],
)
def test_a_wrong_prompt_place_is_refused(source: str, wrong: str) -> None:
    with pytest.raises(ValueError, match=re.escape(wrong)):
        template(source)


@pytest.mark.parametrize(
    ("source", "by_name", "probed"),
    [
        ("outputs.a.ok and outputs['b'].n > 1", True, set()),
        ("'c' in outputs and outputs.c.ok", True, {"c"}),
        ("'d' not in outputs", True, {"d"}),
        ("len(outputs) > 2", False, set()),  # every task's outputs
        ("outputs[flags.which].ok", False, set()),
        ("'e' in outputs.a.tags", True, set()),  # a field's list, not outputs
        ("outputs", False, set()),
        ("fast", False, set()),  # reads no outputs at all
    ],
)
def test_an_expression_knows_whether_it_reads_outputs_by_task_name_only(
    source: str, by_name: bool, probed: set[str]
) -> None:
    # So the engine hands it those tasks' outputs, not every task's (a chain of 3000 tasks
    # each reading the one before took O(tasks) each: 11.1 s against 5.6 s without).
    expr = parse(source, allow_output=False)
    assert (expr.by_name, set(expr.probed)) == (by_name, probed)
