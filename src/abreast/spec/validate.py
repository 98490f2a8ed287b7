"""From a loaded document to a `Workflow`: shapes, ids, references, conditions, cycles.

Every problem found is collected with its line, and all of them are raised
together in one `SpecError`, so a user fixes a file in one pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic_core import ValidationError

from abreast import dag
from abreast.errors import SpecError, SpecProblem, did_you_mean
from abreast.gcpause import paused_gc
from abreast.spec import conditions, schema
from abreast.spec.loader import Document, load_document, read_bytes
from abreast.spec.model import (
    ENV_PATTERN,
    FLAG_PATTERN,
    ID_RULE,
    NAME_PATTERN,
    TASK_ID_PATTERN,
    Task,
    TaskFields,
    Workflow,
)

_TASK_ID = re.compile(TASK_ID_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_FLAG = re.compile(FLAG_PATTERN)
_ENV = re.compile(ENV_PATTERN)
_RESERVED_ENV = "ABREAST_"
_TASK_ID_RULE = f"a task id is {ID_RULE} (it becomes a branch and directory name)"


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate the workflow file at `path`."""
    doc = load_document(path)
    workflow = parse_workflow(doc)
    raw = read_bytes(path)
    object.__setattr__(workflow, "source", str(Path(path).resolve()))
    object.__setattr__(workflow, "source_sha256", hashlib.sha256(raw).hexdigest())
    return workflow


def parse_workflow(doc: Document) -> Workflow:
    with paused_gc():
        return _Validator(doc).run()


def _clipped(text: str, limit: int = 100) -> str:
    """`text` quoted, its middle left out past `limit` characters (a condition a thousand
    characters long is not repeated whole in each message about it)."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit // 2]) + " … " + repr(text[-limit // 4 :])


def describe_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# What to declare for the agents people name most, shown when one is used undeclared: each
# edits files without asking (an attempt has nobody to ask), and takes the prompt from the
# environment. Not built in: their flags change from version to version.
AGENT_EXAMPLES = {
    "claude": 'claude -p "$ABREAST_PROMPT" --permission-mode acceptEdits',
    "codex": 'codex exec --sandbox workspace-write "$ABREAST_PROMPT"',
    "aider": 'aider --yes-always --message "$ABREAST_PROMPT"',
    "gemini": 'gemini --approval-mode auto_edit -p "$ABREAST_PROMPT"',
}


# How other tools' command templates name the prompt; abreast's is an environment variable.
_PLACEHOLDER = re.compile(r"\{\{\s*prompt\s*\}\}|\{prompt\}|\$\{?PROMPT\b\}?", re.IGNORECASE)


def _extension(key: object) -> bool:
    """A top-level `x-…` key: the user's own, ignored (a place for YAML anchors that tasks
    merge with `<<: *name`, as in Docker Compose files)."""
    return isinstance(key, str) and key.startswith("x-")


class _Validator:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[SpecProblem] = []
        self._finished: dict[str, frozenset[str]] = {}  # _finished_before's

    def problem(self, path: tuple[str | int, ...], message: str, hint: str | None = None) -> None:
        self.problems.append(SpecProblem(message, path=path, line=self.doc.line(path), hint=hint))

    def fail(self) -> SpecError:
        self.problems.sort(key=lambda p: p.line or 0)
        return SpecError(self.doc.file, self.problems)

    def run(self) -> Workflow:
        data = self.doc.data
        if not isinstance(data, dict):
            self.problem(
                (),
                f"the top level must be a mapping of keys, not {_kind(data)}",
                hint="start the file with `version: 1`",
            )
            raise self.fail()
        if "version" not in data:
            self.problem(
                (),
                "missing `version: 1` at the top level",
                hint="add `version: 1` as the first line",
            )
        elif data["version"] != 1 or isinstance(data["version"], bool):
            self.problem(
                ("version",),
                f"unsupported version {data['version']!r}",
                hint="this abreast reads `version: 1`",
            )
        tasks_raw = data.get("tasks")
        if "tasks" in data and not isinstance(tasks_raw, dict):
            self.problem(
                ("tasks",), f"`tasks` must be a mapping of task id to task, not {_kind(tasks_raw)}"
            )
            raise self.fail()
        defaults_raw = data.get("defaults") or {}
        if not isinstance(defaults_raw, dict):
            self.problem(("defaults",), f"`defaults` must be a mapping, not {_kind(defaults_raw)}")
            raise self.fail()
        if defaults_raw and self._checked(TaskFields, defaults_raw, ("defaults",)) is None:
            # Reported once, where they are written; the tasks are checked without the keys
            # at fault, so that their own problems are reported in the same pass.
            at_fault = [p.path[1:2] for p in self.problems if p.path[:1] == ("defaults",)]
            if () in at_fault:  # `defaults` as a whole: nothing of it to merge
                raise self.fail()
            defaults_raw = {k: v for k, v in defaults_raw.items() if (k,) not in at_fault}

        merged: dict[str, Any] = {}
        own_shell: set[str] = set()  # tasks that set `shell` themselves
        for tid, raw_body in (tasks_raw or {}).items():
            body = {} if raw_body is None else raw_body
            if not isinstance(body, dict):
                self.problem(
                    ("tasks", tid),
                    f"task {tid!r} must be a mapping of keys, not {_kind(body)}",
                    hint="e.g. `run: make build`",
                )
                continue
            if not _TASK_ID.fullmatch(str(tid)):
                self.problem(("tasks", tid), f"task id {tid!r} is not allowed", hint=_TASK_ID_RULE)
            if "id" in body:
                self.problem(("tasks", tid, "id"), "a task's id is its key; remove `id:`")
            if "shell" in body:
                own_shell.add(tid)
            if defaults_raw:
                inherited = {k: v for k, v in defaults_raw.items() if k not in body}
                if "run" in body:
                    inherited.pop("agent", None)  # an explicit command wins over the default
                merged[tid] = {**inherited, **body, "id": tid}
            else:
                merged[tid] = {**body, "id": tid}
        self._tasks_raw = tasks_raw or {}
        top = {k: v for k, v in data.items() if k != "tasks" and not _extension(k)}
        if "defaults" in top:
            top["defaults"] = defaults_raw
        if tasks_raw is not None:
            top["tasks"] = merged
        workflow: Workflow | None = self._checked(Workflow, top, ())
        if self.problems or workflow is None:
            raise self.fail()
        self._references(workflow)
        if self.problems:
            raise self.fail()
        self._agent_shells(workflow, own_shell)
        if any(c.shell is None for c in workflow.checks):  # a check's shell is the tasks'
            shell = workflow.defaults.shell
            checks = [
                c if c.shell else dataclasses.replace(c, shell=shell) for c in workflow.checks
            ]
            object.__setattr__(workflow, "checks", checks)
        self._syntax(workflow)
        if self.problems:
            raise self.fail()
        if not workflow.name:
            stem = Path(self.doc.file).stem.lower()
            name = re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")[:63] or "workflow"
            object.__setattr__(workflow, "name", name)
        return workflow

    def _syntax(self, workflow: Workflow) -> None:
        """Commands their shell cannot parse (an unclosed quote, an `if` without `fi`):
        each would fail every attempt with exit 2 once the run had started, found by the
        shell itself (`sh -n`: read, not run), before anything runs."""
        from abreast.executor.wrapper import shell_path
        from abreast.spec.commands import unparsable

        wanted: dict[str, dict[str, tuple[str | int, ...]]] = {}  # shell -> command -> where
        for tid, task in workflow.tasks.items():
            agent = task.agent if task.run is None else None
            where: tuple[str | int, ...] = (
                ("agents", agent, "run") if agent else ("tasks", tid, "run")
            )
            command = task.run if task.run is not None else workflow.agents[agent or ""].run
            wanted.setdefault(task.shell, {}).setdefault(command, where)
        for i, check in enumerate(workflow.checks):
            wanted.setdefault(check.shell or "sh", {}).setdefault(check.run, ("checks", i, "run"))
        for shell, commands in wanted.items():
            found = shell_path(shell)
            if found is None:
                continue  # a run refuses for want of the shell itself
            texts = list(commands)
            options = ("-O", "extglob") if shell == "bash" else ()  # set before eval parses
            for i, said in unparsable(texts, found, options).items():
                name = "/bin/sh" if shell == "sh" else shell
                number = re.match(r"line (\d+):", said)
                lines = texts[i].splitlines()
                at = int(number.group(1)) - 1 if number else -1
                shown = f": {_clipped(lines[at].strip(), 80)}" if 0 <= at < len(lines) else ""
                self.problem(
                    commands[texts[i]],
                    f"{describe_path(commands[texts[i]])}: {name} cannot parse it ({said}){shown}",
                    hint="fix its quoting or structure; `sh -n -c 'COMMAND'` (`bash -n` for "
                    "`shell: bash`) checks a command without running it",
                )

    @staticmethod
    def _agent_shells(workflow: Workflow, own_shell: set[str]) -> None:
        """An agent's `shell` is its tasks' (those that run its command) unless a task sets
        its own: the agent's command is written for it, over `defaults.shell`."""
        for tid, task in workflow.tasks.items():
            agent = workflow.agents.get(task.agent) if task.agent and task.run is None else None
            if agent and agent.shell and tid not in own_shell and task.shell != agent.shell:
                workflow.tasks[tid] = dataclasses.replace(task, shell=agent.shell)

    # -- shapes and values (schema.py), errors in the user's terms ----------------------------

    def _checked(self, model: type, data: Any, prefix: tuple[str | int, ...]) -> Any:
        try:
            return schema.validator(model).validate_python(data)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                self._translate(err, prefix, model)
            return None

    def _translate(self, err: Any, prefix: tuple[str | int, ...], model: type) -> None:
        loc = tuple(err["loc"])
        path = (*prefix, *loc)
        # A task's field that came from `defaults` is reported there.
        if (
            len(path) >= 3
            and path[0] == "tasks"
            and isinstance(path[2], str)
            and path[2] not in (self._tasks_raw.get(path[1]) or {})
        ):
            path = ("defaults", *path[2:])
        kind = err["type"]
        if path == ("version",):
            return  # reported already, in plainer words
        where = describe_path(path) or "top level"
        if kind == "extra_forbidden":
            key = str(path[-1])
            allowed, hint = _allowed_keys(model, loc[:-1])
            parent = describe_path(path[:-1]) or "the top level"
            self.problem(
                path, f"unknown key {key!r} in {parent}{did_you_mean(key, allowed)}", hint=hint
            )
        elif kind == "missing":
            parent = describe_path(path[:-1]) or "the top level"
            self.problem(path[:-1], f"missing required key {path[-1]!r} in {parent}")
        elif kind in ("value_error", "assertion_error"):
            msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            self.problem(path, f"{where}: {msg}")
        elif kind == "too_short" and path[-1:] == ("tasks",):
            self.problem(path, "the workflow has no tasks", hint="add at least one under `tasks:`")
        elif kind == "list_type" and isinstance(err.get("input"), str | int | float):
            key, value = path[-1], err["input"]
            self.problem(
                path,
                f"{where}: should be a list (got {value!r})",
                hint=f"write {key}: [{json.dumps(value)}]",
            )
        elif kind == "dict_type":
            self.problem(
                path,
                f"{where}: should be a mapping of names to values",
                hint=f"write {path[-1]}: {{NAME: value}}, or one NAME: value per line below it",
            )
        elif kind == "model_type":
            shown = _value_at(self.doc.data, path, err.get("input"))
            hint = _allowed_keys(model, loc)[1]
            self.problem(path, f"{where} must be a mapping of keys, not {_kind(shown)}", hint=hint)
        elif kind == "string_type" and self._commands_listed(path, err.get("input")):
            self.problem(
                path,
                f"{where}: should be text, not a list of commands",
                hint=f"write them as a block, `{path[-1]}: |` and one command a line below it, "
                "indented further: as in a CI step's script, one that fails ends the command",
            )
        elif kind == "string_type" and isinstance(err.get("input"), dict | list):
            shown = err["input"]
            opener = "[" if isinstance(shown, list) else "{"
            self.problem(
                path,
                f"{where}: should be text, not {_kind(shown)}",
                hint=f"YAML reads a value that starts with `{opener}` as {_kind(shown)}"
                f"{' (a shell test `[ -f x ]` too)' if opener == '[' else ''}: write it as a "
                f"block, `{path[-1]}: |` and the value on the next line indented further, "
                "or quote it",
            )
        elif kind == "string_pattern_mismatch" and err["ctx"]["pattern"] in _PATTERN_RULES:
            rule, hint = _PATTERN_RULES[err["ctx"]["pattern"]]
            self.problem(path, f"{where}: {err.get('input')!r} is not {rule}", hint=hint)
        else:
            # What the file says (`0`), not the value a parser made of it (`0.0`).
            shown = _value_at(self.doc.data, path, err.get("input"))
            got = f" (got {shown!r})" if not isinstance(shown, dict | list) else ""
            self.problem(path, f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}{got}")

    def _commands_listed(self, path: tuple[str | int, ...], value: Any) -> bool:
        """Whether `value` at `path` is a `run:` written as YAML's block list of commands
        (`- npm ci` a line), as GitLab's `script:` is: not `run: [ -f x ]` (flow, one line)."""
        if path[-1:] != ("run",) or not isinstance(value, list) or not value:
            return False
        return all(isinstance(v, str) for v in value) and (
            (self.doc.line((*path, 0)) or 0) > (self.doc.line(path) or 0)
        )

    # -- references between sections ---------------------------------------------------------

    def _references(self, wf: Workflow) -> None:
        for section, names in (
            ("agents", wf.agents),
            ("pools", wf.pools),
            ("keys", wf.keys),
            ("locks", wf.locks),
        ):
            for name in names:
                if not _NAME.fullmatch(name):
                    self.problem(
                        (section, name),
                        f"{section} name {name!r} is not allowed; "
                        "use letters, digits, '_', '.' and '-' (max 63)",
                    )
        for flag in wf.flags:
            if (
                not _FLAG.fullmatch(flag)
                or flag in conditions.FUNCTIONS
                or flag in ("outputs", "output", "flags")
                or flag in conditions.LITERALS
            ):
                self.problem(
                    ("flags", flag),
                    f"flag name {flag!r} cannot be used in conditions",
                    hint="a flag name is a Python-style identifier, not a reserved word",
                )
        if wf.name and not _TASK_ID.fullmatch(wf.name):
            self.problem(
                ("name",),
                f"workflow name {wf.name!r} is not allowed: it is used in run ids and branch names",
                hint=_TASK_ID_RULE.replace("task id", "name"),
            )
        for name, agent in wf.agents.items():
            self._ref(("agents", name, "keys"), agent.keys, wf.keys, "key pool")
            self._env(("agents", name, "env"), agent.env)
            for key, value in agent.env.items():
                if "${{" in value.replace("$${{", ""):
                    self.problem(
                        ("agents", name, "env", key),
                        f"agents.{name}.env.{key}: a `${{{{ }}}}` place is filled in from the "
                        "outputs a task reads, so it belongs in a task's env, not an agent's",
                        hint="move the variable to the `env` of the tasks (or `defaults.env`); "
                        + conditions.TEMPLATE_ESCAPE_HINT.replace("a prompt", "a value"),
                    )
            self._placeholder(("agents", name, "run"), agent.run, agent.env)
            self._place_in_command(("agents", name, "run"), agent.run, wf)
            self._blank(("agents", name, "run"), agent.run)
        for tid, task in wf.tasks.items():
            if task.prompt is not None and task.run is not None:
                self._placeholder(("tasks", tid, "run"), task.run, task.env)
            if task.run is not None:
                self._place_in_command(("tasks", tid, "run"), task.run, wf)
            self._blank(("tasks", tid, "run"), task.run)
        for i, check in enumerate(wf.checks):
            self._ref(("checks", i, "lock"), check.lock, wf.locks, "lock")
            self._blank(("checks", i, "run"), check.run)
        self._ref(("defaults", "agent"), wf.defaults.agent, wf.agents, "agent")

        ids = list(wf.tasks)
        index = {tid: i for i, tid in enumerate(ids)}
        preds: list[list[int]] = [[] for _ in ids]
        for tid, task in wf.tasks.items():
            self._task_refs(wf, task, ("tasks", tid), index, preds[index[tid]])
        if not self.problems and any(t.send_back for t in wf.tasks.values()):
            preds = self._send_backs(wf, ids, index, preds)
        # Cycles among the needs that name tasks, even beside needs that do not: every
        # problem of a file is said at once.
        wrong_refs = bool(self.problems)
        waves, level = dag.generations(preds)
        if not wrong_refs and min(level, default=0) >= 0:
            object.__setattr__(wf, "_dependency_levels", (preds, waves, level))
        for cycle in dag.find_cycles(preds):
            cycle_ids = [ids[v] for v in cycle]
            self.problem(
                ("tasks", cycle_ids[0], "needs"),
                "dependency cycle: " + " -> ".join(cycle_ids) + " (each needs the next)",
                hint="remove one of these needs so the tasks can be ordered",
            )
        if self.problems:
            return
        for task in wf.tasks.values():
            self._conditions(wf, task, ids, index, preds)

    def _send_backs(
        self, wf: Workflow, ids: list[str], index: dict[str, int], preds: list[list[int]]
    ) -> list[list[int]]:
        """Check each `send_back` (its `to` a task it needs whole, nothing between the two),
        and make the other tasks that need `to` wait for the reviewing task too: `to`'s
        work is done only once its review lets it be. The needs with those added."""
        reviewers: dict[str, str] = {}
        for tid, task in wf.tasks.items():
            back = task.send_back
            if back is None:
                continue
            at = ("tasks", tid, "send_back", "to")
            if back.to not in task.needs:
                said = (
                    " is not a task" + did_you_mean(back.to, ids)
                    if back.to not in index
                    else f", which {tid!r} does not need"
                    if back.to != tid
                    else ", which is itself"
                )
                self.problem(
                    at,
                    f"send_back.to: {back.to!r}{said}",
                    hint=f"name a task in the `needs` of {tid!r}: the one whose work it reviews",
                )
                continue
            if back.to in reviewers:
                self.problem(
                    at,
                    f"send_back.to: {back.to!r} is reviewed by {reviewers[back.to]!r} too",
                    hint="one task sends a task's work back; let one review the other's output",
                )
                continue
            reviewers[back.to] = tid
            between = sorted(ids[v] for v in _between(index[back.to], index[tid], preds))
            if between:
                self.problem(
                    at,
                    f"send_back.to: {', '.join(between)} "
                    f"{'needs' if len(between) == 1 else 'need'} {back.to!r} and {tid!r} "
                    f"needs {'it' if len(between) == 1 else 'them'}: "
                    f"they would have run on the work {tid!r} sends back",
                    hint=f"let {tid!r} need {back.to!r} directly and nothing between them, or "
                    "move the review in front of the tasks that build on the work",
                )
        if self.problems or not reviewers:
            return preds
        for tid, task in wf.tasks.items():
            deps = {n.partition(":")[0] for n in task.needs}
            added = [reviewers[d] for d in sorted(deps & reviewers.keys()) if reviewers[d] != tid]
            added = [r for r in added if r not in deps]
            if added:
                wf.tasks[tid] = dataclasses.replace(task, needs=[*task.needs, *added])
                preds[index[tid]].extend(index[r] for r in added)
        return preds

    def _task_refs(
        self,
        wf: Workflow,
        task: Task,
        base: tuple[str | int, ...],
        index: dict[str, int],
        out_preds: list[int],
    ) -> None:
        tid = task.id
        if _plain(task, index, wf):
            # Nothing here can be wrong; big generated workflows are mostly such tasks.
            preds = [index[n] for n in task.needs]
            out_preds.extend(dict.fromkeys(preds) if len(preds) > 1 else preds)
            return
        seen: set[int] = set()
        for i, need in enumerate(task.needs):
            dep, _, signal = need.partition(":")
            where = (*base, "needs", i)
            if dep not in index:
                self.problem(
                    where,
                    f"task {tid!r} needs {dep!r}, which is not a task" + did_you_mean(dep, index),
                )
                continue
            if dep == tid:
                self.problem(where, f"task {tid!r} needs itself")
                continue
            if signal:
                declared = wf.tasks[dep].signals
                if signal not in declared:
                    self.problem(
                        where,
                        f"task {tid!r} waits for signal {signal!r} of {dep!r}, "
                        f"which {dep!r} does not declare",
                        hint=f"add `signals: [{signal}]` to task {dep!r}",
                    )
            if index[dep] not in seen:
                seen.add(index[dep])
                out_preds.append(index[dep])
        for sig in task.signals:
            if not _NAME.fullmatch(sig):
                self.problem((*base, "signals"), f"signal name {sig!r} is not allowed")
        if task.run is None and task.agent is None:
            self.problem(
                base,
                f"task {tid!r} has nothing to run",
                hint="give it `run: COMMAND`, an `agent:`, or set `defaults.agent`",
            )
        if (
            task.run is not None
            and task.agent is not None
            and "agent" in (self._tasks_raw.get(tid) or {})
        ):
            self.problem(
                (*base, "agent"),
                f"task {tid!r} has both `run` and `agent`",
                hint="keep `run` for a plain command or `agent` for an agent profile",
            )
        self._ref((*base, "agent"), task.agent if task.run is None else None, wf.agents, "agent")
        self._ref((*base, "keys"), task.keys, wf.keys, "key pool")
        if task.max_tokens is not None and "max_tokens" in (self._tasks_raw.get(tid) or {}):
            self._max_tokens(wf, tid, task, base)
        for j, pool in enumerate(task.pools):
            self._ref((*base, "pools", j), pool, wf.pools, "pool")
        for j, lock in enumerate(task.locks):
            self._ref((*base, "locks", j), lock, wf.locks, "lock")
        self._env((*base, "env"), task.env)
        for j, pattern in enumerate(task.owns):
            problem = owns_problem(pattern)
            if problem:
                self.problem(
                    (*base, "owns", j),
                    f"owns pattern {pattern!r} {problem}",
                    hint="write a path glob relative to the repository root, "
                    "like 'backend/**' or 'src/auth/*.py'",
                )

    def _conditions(
        self,
        wf: Workflow,
        task: Task,
        ids: list[str],
        index: dict[str, int],
        preds: list[list[int]],
    ) -> None:
        base = ("tasks", task.id)
        upstream: set[str] | None = None
        exprs: list[tuple[str, str, conditions.Expression]] = []
        places: dict[str, tuple[str | int, ...]] = {}  # where a template's places are
        paths: dict[str, tuple[str | int, ...]] = {}  # where a condition is, if not `field`
        fields: list[tuple[str, str | None]] = [("when", task.when), ("gate", task.gate)]
        if task.send_back is not None:  # over the task's own output, as a gate
            fields += [("send_back.when", task.send_back.when)]
            fields += [("send_back.feedback", task.send_back.feedback)]
            paths["send_back.when"] = ("send_back", "when")
            paths["send_back.feedback"] = ("send_back", "feedback")
        for field, source in fields:
            if source is None:
                continue
            try:
                expr = conditions.parse(source, allow_output=field != "when")
            except ValueError as e:
                where = paths.get(field, (field,))
                self.problem((*base, *where), f"{field}: {_clipped(source)} {e}")
            else:
                exprs.append((field, source, expr))
        texts: list[tuple[str, tuple[str, ...], str | None]] = [
            ("prompt", ("prompt",), task.prompt)
        ]
        texts += [(f"env.{key}", ("env", key), value) for key, value in task.env.items()]
        for field, where, text in texts:
            if text is None or "${{" not in text:
                continue
            places[field] = where
            try:
                template = conditions.template(text)
            except ValueError as e:
                self.problem((*base, *where), f"{field} {e}")
                continue
            assert template is not None
            exprs += [(field, f"${{{{ {x.source} }}}}", x) for x in template.expressions]
        for field, source, expr in exprs:
            at = (*base, *places.get(field, paths.get(field, (field,))))
            for flag in sorted(expr.flags - set(wf.flags)):
                hint = "declare it under `flags:` (with a default value)"
                if field in places:
                    hint += "; " + conditions.TEMPLATE_ESCAPE_HINT
                self.problem(
                    at,
                    f"{field}: {_clipped(source)} reads {flag!r}, which is "
                    "not a flag" + did_you_mean(flag, [*wf.flags, "outputs"]),
                    hint=hint,
                )
            for ref in sorted(expr.tasks):
                if ref not in index:
                    self.problem(
                        at,
                        f"{field}: {_clipped(source)} reads outputs of "
                        f"{ref!r}, which is not a task" + did_you_mean(ref, ids),
                    )
                    continue
                if ref in self._finished_before(wf, task.id):
                    continue
                if upstream is None:
                    upstream = {ids[v] for v in dag.ancestors(index[task.id], preds)}
                if ref == task.id:
                    shared = field.startswith("env.") and wf.defaults.env.get(field[4:])
                    self.problem(
                        at,
                        f"{field}: {_clipped(source)} reads the outputs of {ref!r} itself, "
                        "which are not there before it ends"
                        + (
                            " (the value is from `defaults.env`, given to every task)"
                            if shared
                            else ""
                        ),
                        hint="read them in a task that needs it"
                        + (", in that task's own `env`" if shared else "")
                        + (
                            "; a gate reads the task's own: output.FIELD"
                            if field in ("when", "send_back.when", "send_back.feedback")
                            else ""
                        ),
                    )
                elif ref not in upstream:
                    self.problem(
                        at,
                        f"{field}: {_clipped(source)} reads outputs of "
                        f"{ref!r}, which {task.id!r} does not depend on",
                        hint=f"add {ref!r} to the `needs` of {task.id!r}",
                    )
                else:
                    self.problem(
                        at,
                        f"{field}: {_clipped(source)} reads outputs of {ref!r}, which "
                        f"{task.id!r} waits for only a signal of: {ref!r} writes its output "
                        f"when it ends, and {task.id!r} starts before that",
                        hint=f"add {ref!r} itself to the `needs` of {task.id!r}, or "
                        "read the output in a task that needs it",
                    )

    def _finished_before(self, wf: Workflow, tid: str) -> frozenset[str]:
        """The tasks sure to have finished when `tid` starts: those it needs whole, and
        those sure to have finished when each task it needs (whole or a signal of) began."""
        memo = self._finished
        stack = [tid]
        while stack:
            t = stack[-1]
            if t in memo:
                stack.pop()
                continue
            needs = [n.partition(":") for n in wf.tasks[t].needs]
            todo = [dep for dep, _, _ in needs if dep not in memo]
            if todo:
                stack.extend(todo)
                continue
            done: set[str] = set()
            for dep, _, signal in needs:
                done |= memo[dep]
                if not signal:
                    done.add(dep)
            memo[t] = frozenset(done)
            stack.pop()
        return memo[tid]

    def _ref(
        self,
        path: tuple[str | int, ...],
        name: str | None,
        known: typing.Mapping[str, Any],
        kind: str,
    ) -> None:
        if name is not None and name not in known:
            section = {"agent": "agents", "key pool": "keys", "pool": "pools", "lock": "locks"}[
                kind
            ]
            hint = f"declare it under `{section}:`" + (
                f" (known: {', '.join(sorted(known))})" if known else ""
            )
            if kind == "agent" and name in AGENT_EXAMPLES:
                hint += (
                    f", for example:\n    agents:\n      {name}:\n        run: "
                    f"{AGENT_EXAMPLES[name]}\n  (abreast has no built-in agents: "
                    f"check the flags against your version's `{name} --help`)"
                )
            self.problem(path, f"unknown {kind} {name!r}" + did_you_mean(name, known), hint=hint)

    def _blank(self, path: tuple[str | int, ...], command: str | None) -> None:
        """A command of only spaces: the shell runs nothing and it succeeds, unnoticed."""
        if command and not command.strip():
            self.problem(
                path,
                f"{describe_path(path)} is blank: a command of only spaces runs nothing, "
                "and succeeds",
                hint="write the command it is to run",
            )

    def _placeholder(
        self, path: tuple[str | int, ...], run: str, env: typing.Mapping[str, str]
    ) -> None:
        """A command that receives a prompt and names it as other tools' templates do
        (`{prompt}`, `{{prompt}}`, `$PROMPT`): nothing replaces it, and the agent would be
        given those characters for its prompt."""
        m = _PLACEHOLDER.search(run)
        if m is None or (m[0].startswith("$") and "PROMPT" in env):
            return
        what = "is no variable abreast sets" if m[0].startswith("$") else "is replaced by nothing"
        self.problem(
            path,
            f"{describe_path(path)}: {m[0]!r} {what}: the prompt reaches the command in "
            "$ABREAST_PROMPT, never in its text",
            hint=f'write "$ABREAST_PROMPT" where {m[0]} is (in double quotes)',
        )

    def _place_in_command(self, path: tuple[str | int, ...], run: str, wf: Workflow) -> None:
        """`${{ outputs.build.tag }}` (or a flag) in a command, as GitHub Actions has it:
        abreast never fills in a command (an output would run as shell), and the shell
        fails on it ("Bad substitution"). Other `${{ }}` text (a workflow file a command
        writes, `${{ github.ref }}`) is the command's own."""
        if "${{" not in run:
            return
        for m in conditions.PLACE.finditer(run):
            if m[1] is None:  # `$${{`: the characters themselves
                continue
            inner = m[1].strip()
            head = re.match(r"[A-Za-z_][A-Za-z0-9_]*", inner)
            if head is None or not (head[0] in ("outputs", "flags") or head[0] in wf.flags):
                continue
            self.problem(
                path,
                f"{describe_path(path)}: {m[0]!r}: abreast fills in no `${{{{ }}}}` place in a "
                "command (an output would run as shell code), and the shell fails on it; "
                "a task's `env` or prompt can hold one",
                hint=f'put it in the task\'s env (`env: {{VALUE: "{m[0]}"}}`) and write '
                '"$VALUE" in the command',
            )
            return

    def _max_tokens(self, wf: Workflow, tid: str, task: Task, base: tuple[str | int, ...]) -> None:
        """`max_tokens` needs the task's API calls to go through the key proxy, where its
        tokens are counted (one in `defaults` applies to the tasks where they are)."""
        pool = wf.key_pool_of(task)
        if pool is None:
            self.problem(
                (*base, "max_tokens"),
                f"task {tid!r} has max_tokens but no key pool: its tokens are not counted",
                hint="give it (or its agent) `keys:` a pool with `upstream:` (proxy mode)",
            )
            return
        if pool not in wf.keys or wf.keys[pool].upstream:
            return  # fine (or an unknown pool, reported on its own)
        self.problem(
            (*base, "max_tokens"),
            f"task {tid!r} has max_tokens but its key pool {pool!r} is in direct mode: the "
            "agent holds the key, and abreast sees none of its requests",
            hint=f"give pool {pool!r} an `upstream:` (proxy mode) to count its tokens",
        )

    def _env(self, path: tuple[str | int, ...], env: typing.Mapping[str, str]) -> None:
        for key in env:
            if not _ENV.fullmatch(key):
                self.problem((*path, key), f"environment variable name {key!r} is not valid")
            elif key.startswith(_RESERVED_ENV):
                self.problem(
                    (*path, key),
                    f"environment variable {key!r} is reserved: abreast sets ABREAST_* itself",
                )


def _between(t: int, r: int, preds: list[list[int]]) -> set[int]:
    """The tasks upstream of `r` that need `t` (directly or not): what runs after `t` and
    before `r`. In time linear in what is upstream of `r`."""
    upstream = dag.ancestors(r, preds)
    after: dict[int, list[int]] = {}  # within what is upstream of r: who needs whom
    for v in upstream:
        for p in preds[v]:
            after.setdefault(p, []).append(v)
    found: set[int] = set()
    stack = [t]
    while stack:
        for v in after.get(stack.pop(), []):
            if v not in found:
                found.add(v)
                stack.append(v)
    return found - {t}


def _value_at(data: Any, path: tuple[str | int, ...], default: Any) -> Any:
    for part in path:
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_list or (isinstance(data, dict) and part in data)):
            return default
        data = data[part]
    return data


def _plain(task: Task, index: dict[str, int], wf: Workflow) -> bool:
    """A task with known needs (no signals), something to run, and no other references."""
    if task.pools or task.locks or task.env or task.owns or task.signals or task.keys:
        return False
    if task.max_tokens is not None:
        return False
    if task.run is None and (task.agent is None or task.agent not in wf.agents):
        return False
    if task.run is not None and task.agent is not None:
        return False
    tid = task.id
    return all(n in index and n != tid for n in task.needs)


# The patterns of model.py, in words: (what the value must be, a hint).
_PATTERN_RULES = {
    f"^({TASK_ID_PATTERN})?$": (
        "a valid workflow name",
        f"{ID_RULE} (it becomes part of run ids and branch names)",
    ),
    f"^{ENV_PATTERN}$": (
        "an environment variable name",
        "letters, digits and '_', not starting with a digit, e.g. ANTHROPIC_API_KEY_1",
    ),
    r"^https?://": ("an http:// or https:// URL", "e.g. https://api.anthropic.com"),
    r"^(nats|tls)://": ("a NATS URL", "e.g. nats://127.0.0.1:4222"),
}


def owns_problem(pattern: str) -> str | None:
    """Why an `owns` glob is unusable, or None."""
    if not pattern.strip():
        return "is empty"
    if pattern.startswith("!"):
        return "is a negation; owns lists what a task may change, so negations are not supported"
    if pattern.startswith("/") and pattern.strip("/") == "":
        return "is the filesystem root"
    if ".." in pattern.split("/"):
        return "leaves the repository with '..'"
    if "\\" in pattern:
        return "uses a backslash; use '/' between path segments"
    if _unclosed_bracket(pattern):
        return "has a '[' that is never closed, so it matches nothing (write '[[]' for a '[')"
    import pathspec

    try:
        pathspec.GitIgnoreSpec.from_lines([pattern])
    except (ValueError, TypeError) as e:
        return f"is not a valid glob: {e}"
    return None


def _unclosed_bracket(pattern: str) -> bool:
    """Whether a '[' of the glob opens a set that no ']' closes (git's rule: a ']' right
    after the '[', or after its '!' or '^', belongs to the set)."""
    i = 0
    while (i := pattern.find("[", i)) >= 0:
        j = i + 1
        if pattern[j : j + 1] in ("!", "^"):
            j += 1
        if pattern[j : j + 1] == "]":
            j += 1
        end = pattern.find("]", j)
        if end < 0:
            return True
        i = end + 1
    return False


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {
        dict: "a mapping",
        list: "a list",
        str: "text",
        int: "a number",
        float: "a number",
        bool: "true/false",
    }.get(type(value), type(value).__name__)


def _aliases(model: type) -> set[str]:
    return {key for key in schema.file_fields(model) if key != "id"}


def _allowed_keys(model: type, loc: tuple[Any, ...]) -> tuple[list[str], str | None]:
    """The keys the mapping at `loc` under `model` allows, and the hint listing them."""
    owner = _model_at(model, loc)
    allowed = sorted(_aliases(owner)) if owner else []
    return allowed, ("allowed keys: " + ", ".join(allowed) if allowed else None)


def _model_at(model: type, loc: tuple[Any, ...]) -> type | None:
    """The model class describing the mapping found at `loc` under `model`."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if schema.is_model(current):
            found = schema.file_fields(current).get(part) if isinstance(part, str) else None
            if found is None:
                return None
            current = found[1]
        elif typing.get_origin(current) in (dict, list, tuple):
            args = typing.get_args(current)
            current = args[-1] if args else None
        else:
            return None
    current = _unwrap(current)
    return current if schema.is_model(current) else None


def _unwrap(tp: Any) -> Any:
    # Optional[M] / M | None / Annotated[M, ...] -> M
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
