from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from abreast.errors import SpecError
from abreast.spec import load_workflow
from abreast.spec.durations import format_duration, parse_duration, parse_rate, parse_size
from abreast.spec.loader import parse_json, parse_yaml


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("45m", 2700),
        ("2h", 7200),
        ("1h30m", 5400),
        (30, 30),
        (1.5, 1.5),
        ("2.5d", 216000),
        ("250ms", 0.25),
        ("120", 120),
        (" 5m ", 300),
        ("1h 30m", 5400),
    ],
)
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["five", "5 minutes", "", "-3", -1, True, "1x", "m5", None, "nan", float("nan"), "inf", -1e999],
)
def test_bad_durations_say_what_is_accepted(text: object) -> None:
    with pytest.raises(ValueError, match="90s, 45m, 2h, 1h30m"):
        parse_duration(text)


def test_durations_beyond_ten_years_are_refused() -> None:
    assert parse_duration("3650d") == 3650 * 86400
    for text in ("3651d", 1e30, "1e30", "99999999999h"):
        with pytest.raises(ValueError, match="longer than 3650d"):
            parse_duration(text)


def test_a_huge_backoff_factor_stops_at_its_max() -> None:
    from abreast.spec.model import Backoff

    backoff = Backoff(initial=0.5, factor=1e300, max=8.0)
    assert [backoff.delay_s(n) for n in (1, 2, 3, 10)] == [0.5, 8.0, 8.0, 8.0]


def test_durations_format_compactly() -> None:
    assert [format_duration(s) for s in (0.00093, 0.00366, 0.169, 1.254)] == [
        "0.93ms",
        "3.7ms",
        "169ms",
        "1.25s",
    ]
    assert [format_duration(s) for s in (0, 45, 2700, 5400, 7200, 216000)] == [
        "0s",
        "45s",
        "45m",
        "1h30m",
        "2h",
        "2d12h",
    ]


def test_rates_and_sizes() -> None:
    assert parse_rate("100/min") == (100, 60.0)
    assert parse_rate("10/s") == (10, 1.0)
    assert parse_rate("50/10s") == (50, 10.0)
    assert parse_size("100MB") == 100_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    with pytest.raises(ValueError, match="100/min"):
        parse_rate("lots")


def test_yaml_locates_every_key_and_item() -> None:
    doc = parse_yaml("version: 1\ntasks:\n  a:\n    needs:\n      - b\n      - c\n", "f.yaml")
    assert doc.line(("tasks", "a")) == 3
    assert doc.line(("tasks", "a", "needs", 1)) == 6
    # An unknown path falls back to its nearest located parent.
    assert doc.line(("tasks", "a", "nope")) == 3


def test_json_lines_are_found_when_an_error_needs_them() -> None:
    doc = parse_json('{\n "version": 1,\n "tasks": {\n  "a": {"run": "x"}\n }\n}', "f.json")
    assert doc.data["tasks"]["a"]["run"] == "x"
    assert doc.line(("tasks", "a")) == 4


def test_yaml_anchors_and_merge_keys_work() -> None:
    doc = parse_yaml("base: &b {run: x, retries: 2}\nt:\n  <<: *b\n  retries: 3\n", "f.yaml")
    assert doc.data["t"] == {"run": "x", "retries": 3}


def test_unsafe_tag_is_refused_with_no_side_effect(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "w.yaml"
    path.write_text(
        f'version: 1\ntasks:\n  a: !!python/object/apply:os.system ["touch {marker}"]\n'
    )
    with pytest.raises(SpecError, match=r"w.yaml:3: unsupported YAML tag"):
        load_workflow(path)
    assert not marker.exists()


def test_alias_bomb_is_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    # Refused where the expansion grows too large (g: a few lines of anchors make ten
    # million values), sized without expanding it (walking the expansion took 5 s).
    with pytest.raises(SpecError, match=r"^bomb\.yaml:7: the document is too large or too deeply"):
        parse_yaml("\n".join(lines), "bomb.yaml")
    # An alias inside what it names is unbounded too; anchors used sanely are fine.
    with pytest.raises(SpecError, match=r"^loop\.yaml:2: the document is too large"):
        parse_yaml("x: 1\na: &a [1, {b: [*a]}]\n", "loop.yaml")
    shared = parse_yaml("d: &d {x: [1, 2]}\ne: [*d, *d]\nf: {<<: *d, y: 3}\n", "ok.yaml")
    assert shared.data == {
        "d": {"x": [1, 2]},
        "e": [{"x": [1, 2]}, {"x": [1, 2]}],
        "f": {"x": [1, 2], "y": 3},
    }


def test_workflow_merges_defaults_and_records_its_source(write) -> None:  # type: ignore[no-untyped-def]
    path = write("""
        version: 1
        defaults: {timeout: 2h, retries: 1, agent: claude}
        agents: {claude: {run: 'claude -p "$ABREAST_PROMPT"'}}
        tasks:
          a: {prompt: hi}
          b: {run: make, retries: 3}
    """)
    wf = load_workflow(path)
    assert wf.tasks["a"].agent == "claude"
    assert wf.tasks["a"].timeout == 7200
    assert wf.tasks["b"].agent is None  # an explicit command wins over the default agent
    assert wf.tasks["b"].retries == 3
    assert wf.name == "abreast"  # from the file name when not given
    assert len(wf.source_sha256) == 64
    assert wf.source == str(path.resolve())


def test_top_level_x_keys_hold_anchors_and_are_ignored(write) -> None:  # type: ignore[no-untyped-def]
    # As in Docker Compose: a place for what tasks merge with `<<:`, in the file and the schema.
    import jsonschema

    from abreast.spec.schema import json_schema

    path = write("""
        version: 1
        x-quick: &quick {timeout: 5m, retries: 0}
        x-echo: &echo
          <<: *quick
          run: echo hi
        tasks:
          a: {<<: *echo}
          b: {<<: *quick, needs: [a], run: make}
    """)
    wf = load_workflow(path)
    assert (wf.tasks["a"].run, wf.tasks["a"].timeout, wf.tasks["a"].retries) == ("echo hi", 300, 0)
    assert (wf.tasks["b"].run, wf.tasks["b"].timeout) == ("make", 300)
    validator = jsonschema.Draft202012Validator(json_schema())
    doc = {"version": 1, "x-quick": {"anything": 1}, "tasks": {"a": {"run": "true"}}}
    assert not list(validator.iter_errors(doc))
    # Only `x-` keys, and only at the top: a typo elsewhere is still an error.
    assert list(validator.iter_errors({**doc, "xquick": 1}))
    with pytest.raises(SpecError, match=r"unknown key 'x-note' in tasks\.a"):
        load_workflow(write("version: 1\ntasks:\n  a: {run: 'true', x-note: hi}\n"))


def test_json_workflow_loads(write) -> None:  # type: ignore[no-untyped-def]
    path = write('{"version": 1, "tasks": {"a": {"run": "true"}}}', "w.json")
    assert list(load_workflow(path).tasks) == ["a"]


def test_schema_accepts_the_examples_and_rejects_unknown_keys() -> None:
    import json
    import subprocess
    import sys

    import jsonschema
    import yaml

    out = subprocess.run(
        [sys.executable, "-m", "abreast", "schema"], capture_output=True, text=True, check=True
    ).stdout
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        doc = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(doc)), path
    bad = {"version": 1, "tasks": {"a": {"run": "true", "retires": 2}}}
    assert any("retires" in e.message for e in validator.iter_errors(bad))
    assert list(validator.iter_errors({"version": 1, "tasks": {"a": {"timeout": "soon"}}}))


@pytest.mark.parametrize(
    "top",
    [
        {"max_parallel": 0},
        {"max_parallel": 10_001},
        {"tasks": {"a": {"run": "true", "retries": 101}}},
        {"tasks": {"a": {"run": ""}}},
        {"tasks": {}},
        {"isolation": "vm"},
        {"pools": {"p": 0}},
        {"keys": {"k": {"from": []}}},
        {"keys": {"k": {"from": ["1A"]}}},
        {"keys": {"k": {"from": ["A"], "style": "mistral"}}},
        {"keys": {"k": {"from": ["A"], "upstream": "ftp://x"}}},
        {"agents": {"x": {"run": "a", "max_instances": 0}}},
        {"events": {"nats": "http://x"}},
        {"name": "Bad Name"},
        {"defaults": {"backoff": {"factor": 0.5}}},
        {"locks": {"l": {"ttl": "soon"}}},
    ],
)
def test_the_schema_and_the_validator_refuse_the_same_values(top: dict[str, Any]) -> None:
    # Both come from one walk of the model's types (spec/schema.py).
    import jsonschema

    from abreast.spec.loader import Document
    from abreast.spec.schema import json_schema
    from abreast.spec.validate import parse_workflow

    doc = {"version": 1, "tasks": {"a": {"run": "true"}}, **top}
    assert list(jsonschema.Draft202012Validator(json_schema()).iter_errors(doc))
    with pytest.raises(SpecError):
        parse_workflow(Document("w.json", doc))


@pytest.mark.parametrize(
    ("value", "expanded", "wrong"),
    [
        ("$A/${A}", "a/a", None),
        ("${B:-d}|${E:-d}|${B-d}|${E-d}", "d|d|d|", None),  # `-`: unset only; `:-`: or empty
        ("${A:?why}|${E?why}", "a|", None),
        ("5$$ $1 x$", "5$ $1 x$", None),
        ("${B:?give B}", "", "$B is not set in abreast's environment (give B)"),
        ("${E:?}", "", "$E is empty in abreast's environment"),
        ("${A/a/b}", "", "${A/a/b} is not a form abreast expands"),
        ("${#A}", "", "${#A} is not a form abreast expands"),
    ],
)
def test_env_values_expand_as_the_shell_would_or_say_why_not(
    value: str, expanded: str, wrong: str | None
) -> None:
    from abreast.spec.envsubst import expand

    said: list[str] = []
    assert expand(value, {"A": "a", "E": ""}, said) == expanded
    assert len(said) == (1 if wrong else 0)
    assert not wrong or said[0].startswith(wrong)
