"""`$NAME` in `env:` values: the variables of the environment abreast runs in.

    env: {PATH: "$HOME/.local/bin:$PATH", CACHE: "${XDG_CACHE_HOME:-/tmp}/app"}

`$NAME` and `${NAME}` are replaced by the variable's value in the environment
that `abreast run` (or `resume`) was started in; as in the shell,
`${NAME:-default}` by the default when it is unset or empty, `${NAME-default}`
when it is unset, and `${NAME:?message}` (`${NAME?message}`) is an error saying
the message when it is unset or empty (unset); `$$` is one `$`. A `${{ EXPRESSION }}`
place (and `$${{`) is left for the engine, which fills it in from upstream outputs when
the task is about to start (`spec.conditions.template`). Any other `$`
(`$1`, a `$` at the end) stays as it is; a `${...}` of another form (`${NAME/a/b}`,
`${#NAME}`) is an error, as it would reach the task as those characters. A
reference to a variable that is not set is an error before the run: the task
would otherwise get `$PATH` as four characters (and no /usr/bin), or an empty
value, without a word. Done when a run starts, not when a file is validated or
analysed, which need no environment.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from abreast.errors import UsageError
from abreast.spec.model import Workflow

_REF = re.compile(
    r"\$\$\{\{|\$\{\{.*?\}\}"  # a `${{ }}` place (or `$${{`): the task's, filled in later
    r"|\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*)|\{[^}]*\}?)",
    re.DOTALL,
)


def expand(value: str, environ: Mapping[str, str], wrong: list[str], *, places: bool = True) -> str:
    """`value` with its references replaced; what is wrong (names not set in `environ`,
    a form not understood) is added to `wrong` (and the reference replaced by nothing).
    `places`: its `${{ }}` places (and `$${{`) are left for the engine (a task's env);
    else `$${{` is `${{` now (an agent's, which has no places)."""
    if "$" not in value:
        return value

    def literal(text: str) -> str:
        # A variable's value is text: a `${{` in it is not a place for the engine to fill.
        return text.replace("${{", "$${{") if places else text

    def one(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        if m[0].startswith(("${{", "$${{")):
            if not places and m[0] == "$${{":
                return "${{"
            return m[0]  # upstream outputs, put in when the task is about to start
        name = m[1] or m[4]
        if name is None:
            wrong.append(
                f"{m[0]} is not a form abreast expands: `$NAME`, `${{NAME}}`, "
                "`${NAME:-default}`, `${NAME-default}`, `${NAME:?message}`"
            )
            return ""
        got = environ.get(name)
        missing = got is None or (not got and m[2] is not None and m[2].startswith(":"))
        if m[2] is not None and m[2].endswith("-"):  # ${NAME:-default}, ${NAME-default}
            return literal(m[3] if missing else str(got))
        if missing:
            said = f" ({m[3]})" if m[2] is not None and m[3] else ""
            empty = "empty" if got == "" else "not set"
            wrong.append(f"${name} is {empty} in abreast's environment{said}")
            return ""
        return literal(str(got))

    return _REF.sub(one, value)


def expand_env(wf: Workflow, environ: Mapping[str, str]) -> Workflow:
    """`wf` with the `env:` values of its tasks (defaults merged) and agents expanded;
    a UsageError naming every reference to an unset variable."""
    problems: list[str] = []

    def each(where: str, env: Mapping[str, str], places: bool = True) -> dict[str, str]:
        out = {}
        for key, value in env.items():
            wrong: list[str] = []
            out[key] = expand(value, environ, wrong, places=places)
            problems.extend(f"{where}.env.{key}: {why}" for why in dict.fromkeys(wrong))
        return out

    envs = [t.env for t in wf.tasks.values()] + [a.env for a in wf.agents.values()]
    if not any("$" in v for env in envs for v in env.values()):
        return wf  # nothing to expand (most workflows): no copies
    tasks = {
        tid: dataclasses.replace(t, env=each(f"tasks.{tid}", t.env)) if t.env else t
        for tid, t in wf.tasks.items()
    }
    agents = {
        name: dataclasses.replace(a, env=each(f"agents.{name}", a.env, False)) if a.env else a
        for name, a in wf.agents.items()
    }
    if problems:
        shown = problems[:10] + ([f"and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise UsageError(
            f"{wf.source or 'the workflow'}: " + "\n  ".join(shown),
            hint="set it before running abreast, give a default (`${NAME:-value}`), "
            "or write `$$` for a `$` that is meant as it is",
        )
    return wf.evolve(same_needs=True, tasks=tasks, agents=agents)
