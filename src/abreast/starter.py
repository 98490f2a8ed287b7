"""The workflow `abreast init` writes: small, valid, and commented."""

from __future__ import annotations

import json
import re
from pathlib import Path

STARTER = """\
version: 1
name: my-workflow
max_parallel: 4
# base: main                 # the ref the first tasks start from (default: HEAD)

defaults:
  timeout: 30m
  retries: 1                 # extra attempts after a failure, a conflict or a red check
#   ports: 1                 # a free TCP port per attempt in $ABREAST_PORT (for servers)
#   shell: bash              # run commands with bash -e -o pipefail (default: /bin/sh -e)
#   carry_work: true         # a retry starts with the last attempt's work (for agents)

# agents:
#   claude:
#     run: claude -p "$ABREAST_PROMPT" --permission-mode acceptEdits
#     max_instances: 3

# checks:                    # run on the merge result before a task's work lands
#   - run: make test
#     retries: 1             # a red run is run again once first (a flaky suite)
# merge: {batch: 4}          # slow checks: check up to 4 queued merges together

# worktrees:                 # each task runs in a git worktree of its own, which has only
#   copy: [.env]             #   committed files: git-ignored files copied from your checkout
#   keep: [node_modules]     #   ignored paths a reused worktree keeps for the next task

tasks:
  plan:
    run: echo "planning" > PLAN.md
    estimate: 5m
  backend:
    needs: [plan]
    run: mkdir -p backend && echo "api" > backend/api.txt
    owns: ["backend/**"]
    estimate: 20m
  frontend:
    needs: [plan]
    run: mkdir -p frontend && echo "ui" > frontend/ui.txt
    owns: ["frontend/**"]
    estimate: 20m
  docs:
    needs: [backend, frontend]
    run: echo "docs" > DOCS.md
    estimate: 10m
#   review:                  # an agent's task (see agents: above); its prompt may hold
#     agent: claude          #   what a task it needs wrote to $ABREAST_OUTPUT (JSON)
#     needs: [backend]
#     prompt: "Review the backend. Its notes: ${{ outputs.backend.notes }}"
#     send_back:             # the work back to backend until the review approves it
#       to: backend
#       when: output.decision == "REQUEST_CHANGES"
#       feedback: output.changes
"""


# npm's placeholder for a package without tests.
_NPM_PLACEHOLDER = "no test specified"


def test_command(root: Path) -> tuple[str, str] | None:
    """The project's own test command, as found in `root`, and where it was found: a
    Makefile's `test` target first (the project's own entry point), then what its
    language's files say. None when nothing says."""

    def text(name: str) -> str:
        try:
            return (root / name).read_text(errors="replace")
        except OSError:
            return ""

    makefile = next(
        (n for n in ("GNUmakefile", "makefile", "Makefile") if (root / n).is_file()), None
    )
    if makefile and re.search(r"^test\s*:", text(makefile), re.M):
        return "make test", f"{makefile}'s test target"
    if (root / "package.json").is_file():
        try:
            scripts = json.loads(text("package.json")).get("scripts") or {}
        except (ValueError, AttributeError):
            scripts = {}
        script = scripts.get("test") if isinstance(scripts, dict) else None
        if isinstance(script, str) and _NPM_PLACEHOLDER not in script:
            runner = next(
                (r for r, lock in (("pnpm", "pnpm-lock.yaml"), ("yarn", "yarn.lock"))
                 if (root / lock).is_file()),
                "npm",
            )  # fmt: skip
            return f"{runner} test", "package.json's test script"
    if (root / "Cargo.toml").is_file():
        return "cargo test", "Cargo.toml"
    if (root / "go.mod").is_file():
        return "go test ./...", "go.mod"
    python = [n for n in ("pyproject.toml", "setup.cfg", "pytest.ini", "tox.ini", "setup.py")
              if (root / n).is_file()]  # fmt: skip
    if python and ((root / "tests").is_dir() or (root / "test").is_dir() or
                   any("pytest" in text(n) for n in python)):  # fmt: skip
        return f"{_python()} -m pytest -q", python[0]
    return None


def _python() -> str:
    """`python`, or `python3` where only that is on PATH (Debian and Ubuntu have no
    `python` unless python-is-python3 is installed, or a virtual environment is active)."""
    import shutil

    return "python3" if not shutil.which("python") and shutil.which("python3") else "python"


COMMENT_AT = 29  # the column of the starter's comments that follow a value


def starter_for(root: Path) -> tuple[str, str | None]:
    """The starter workflow for the project at `root`, its merge check filled in with the
    project's own test command when one is found; and a line saying so (or None)."""
    found = test_command(root)
    if found is None:
        return STARTER, None
    command, where = found
    line = f"#   - run: {command}"
    # Its comment in the column of the others (`# checks:  ...  # run on the merge ...`).
    text = STARTER.replace(
        "#   - run: make test\n", f"{line.ljust(COMMENT_AT - 1)} # found in {where}\n", 1
    )
    return text, (
        f"found the project's tests: `{command}` ({where}); uncomment `checks:` in the file "
        "to run them on every merge before a task's work lands"
    )
