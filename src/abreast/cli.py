"""The command line: parse, call one function, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from abreast import __version__
from abreast.errors import AbreastError, UsageError

DEFAULT_FILE = "abreast.yaml"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own wording, but through our one error path (exit 2, no traceback).
        m = re.search(r"invalid choice: '([^']*)'", message)
        if m and self._subparsers is not None:
            choices = [
                c
                for a in self._subparsers._group_actions
                for c in (getattr(a, "choices", None) or {})
            ]
            message += did_you_mean(m.group(1), choices)
        raise UsageError(f"{message}", hint=f"see `{self.prog} --help`")


def _workflow_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file", nargs="?", default=DEFAULT_FILE, help=f"workflow file (default: {DEFAULT_FILE})"
    )


def _flag_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flag",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="set a workflow flag (repeatable); NAME alone means true",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="abreast", description="Run a workflow's tasks side by side, safely.")
    parser.add_argument("--version", action="version", version=f"abreast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("analyze", help="show waves, critical path, estimates and overlaps")
    _workflow_arg(p)
    p.add_argument("--format", choices=("table", "json", "mermaid", "dot"), default="table")
    p.add_argument("--max-parallel", type=int, metavar="N")
    _flag_arg(p)

    p = sub.add_parser("schema", help="print the JSON Schema of the workflow file")

    p = sub.add_parser("validate", help="check a workflow file and say what is wrong")
    _workflow_arg(p)

    p = sub.add_parser("init", help="write a starter abreast.yaml here")
    p.add_argument("file", nargs="?", default=DEFAULT_FILE)
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


def cmd_analyze(args: argparse.Namespace) -> int:
    from abreast.plan import analyze
    from abreast.plan.render import render
    from abreast.spec import load_workflow
    from abreast.spec.overrides import flag_overrides, parallel_cap

    wf = load_workflow(args.file)
    analysis = analyze(
        wf, flags=flag_overrides(wf, args.flag), max_parallel=parallel_cap(wf, args.max_parallel)
    )
    print(render(analysis, args.format))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from abreast.spec.model import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from abreast.spec import load_workflow

    wf = load_workflow(args.file)
    print(f"{args.file}: ok ({len(wf.tasks)} tasks)")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from abreast.starter import STARTER

    path = Path(args.file)
    if path.exists() and not args.force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    path.write_text(STARTER, encoding="utf-8")
    print(f"wrote {path}; try `abreast analyze {path}`")
    return 0


COMMANDS = {
    "analyze": cmd_analyze,
    "schema": cmd_schema,
    "validate": cmd_validate,
    "init": cmd_init,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except AbreastError as e:
        print(f"abreast: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("abreast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
