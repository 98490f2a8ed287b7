"""`abreast demo`: a realistic run in a throwaway git repository, nothing to set up.

Nine scripted "agents" (small Python scripts that take a few seconds and write
files) form the seeds' workflow: research, critique, backend and frontend side
by side, their QA, a conditional security review, a performance test skipped
by a flag, and docs. The frontend agent fails its first attempt and succeeds
on the retry; the backend QA agent is sent back once by its gate; the backend's
prompt holds the critique's decision (`${{ outputs.critique.decision }}`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

AGENT = r'''"""A stand-in coding agent: works for a while, writes files, reports JSON."""
import json, os, pathlib, sys, time

task = os.environ["ABREAST_TASK_ID"]
attempt = int(os.environ["ABREAST_ATTEMPT"])
seconds = float(sys.argv[1])
print(f"{task}: attempt {attempt}, prompt: {os.environ.get('ABREAST_PROMPT', '')!r}")
if os.environ.get("ABREAST_FEEDBACK"):
    print(f"{task}: told why the last attempt was sent back: {os.environ['ABREAST_FEEDBACK']!r}")
for step in range(4):
    time.sleep(seconds / 4)
    print(f"{task}: step {step + 1}/4", flush=True)
if "--fail-first" in sys.argv and attempt == 1:
    print(f"{task}: the build broke (a flaky dependency)", file=sys.stderr)
    sys.exit(1)
out = {"task": task, "attempt": attempt, "decision": "APPROVED",
       "confidence": 0.6 if "--unsure-first" in sys.argv and attempt == 1 else 0.9}
for name in sys.argv[2:]:
    if not name.startswith("--"):
        path = pathlib.Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"written by {task}, attempt {attempt}\n")
pathlib.Path(os.environ["ABREAST_OUTPUT"]).write_text(json.dumps(out))
print(f"{task}: done")
'''

CHECK = r'''"""The demo's merge check: no note may say BROKEN."""
import pathlib, sys

broken = [str(p) for p in pathlib.Path(".").rglob("*.md") if "BROKEN" in p.read_text()]
if broken:
    sys.exit(f"broken notes: {broken}")
print("notes are fine")
'''

WORKFLOW = """\
version: 1
name: demo
max_parallel: 3
isolation: {isolation}
flags:
  security_review: true
  performance_test: false
checks:                        # run on every merge before it lands
  - name: notes are not broken
    run: {python} agents/check.py
defaults:
  timeout: 2m
  retries: 1
  backoff: {{initial: 1s, max: 2s}}
agents:
  scripted:
    run: {python} agents/agent.py 2 notes/$ABREAST_TASK_ID.md
    max_instances: 3
tasks:
  research:
    agent: scripted
    prompt: Research the requirements for REQ-42
    estimate: 2s
  critique:
    needs: [research]
    agent: scripted
    prompt: Review the research; approve or request changes
    estimate: 2s
  backend:
    needs: [critique]
    prompt: "Implement the backend (the review said ${{{{ outputs.critique.decision }}}})"
    run: {python} agents/agent.py 4 backend/api.py
    owns: ["backend/**"]
    estimate: 4s
  frontend:
    needs: [critique]
    run: {python} agents/agent.py 3 frontend/app.js --fail-first
    owns: ["frontend/**"]
    estimate: 3s
  backend-qa:
    needs: [backend]
    run: {python} agents/agent.py 2 qa/backend.txt --unsure-first
    owns: ["qa/backend*"]
    gate: output.confidence >= 0.75
    estimate: 2s
  frontend-qa:
    needs: [frontend]
    run: {python} agents/agent.py 2 qa/frontend.txt
    owns: ["qa/frontend*"]
    estimate: 2s
  security:
    needs: [backend-qa, frontend-qa]
    when: security_review and outputs.critique.decision == "APPROVED"
    run: {python} agents/agent.py 2 reviews/security.md
    estimate: 2s
  performance:
    needs: [backend-qa, frontend-qa]
    when: performance_test
    run: {python} agents/agent.py 3 reviews/performance.md
    estimate: 3s
  docs:
    needs: [security, performance]
    run: {python} agents/agent.py 1 docs/README.md
    estimate: 1s
"""


def make_project(root: Path, isolation: str = "none") -> Path:
    """Write the demo repository under `root`; returns the workflow file."""
    (root / "agents").mkdir(parents=True, exist_ok=True)
    (root / "agents" / "agent.py").write_text(AGENT)
    (root / "agents" / "check.py").write_text(CHECK)
    (root / "README.md").write_text("# demo project\n\nMade by `abreast demo`.\n")
    workflow = root / "abreast.yaml"
    workflow.write_text(WORKFLOW.format(python=sys.executable, isolation=isolation))
    env = {
        "GIT_AUTHOR_NAME": "abreast demo",
        "GIT_AUTHOR_EMAIL": "demo@abreast.invalid",
        "GIT_COMMITTER_NAME": "abreast demo",
        "GIT_COMMITTER_EMAIL": "demo@abreast.invalid",
    }
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "demo project"],
    ):
        subprocess.run(argv, cwd=root, check=True, env={**_base_env(), **env})
    return workflow


def describe_result(root: Path, run_id: str) -> str:
    """What landed on the run's integration branch, file by file; and that main is as it was."""
    from abreast.integrate.base import integration_branch
    from abreast.workspace.repo import Repo, dirty_paths

    repo = Repo(root)
    branch = integration_branch(run_id)
    head = repo.rev_parse(branch)
    if head is None:
        return "nothing landed"
    files = repo.changed_paths("main", head)
    dirty = [p for p in dirty_paths(repo, root) if not p.startswith(".abreast")]
    status = "git status there is clean" if not dirty else f"changed: {', '.join(dirty)}"
    return (
        f"on {branch}, the agents' work, merged and checked: "
        + ", ".join(files)
        + f"\nmain is where it was ({str(repo.rev_parse('main'))[:12]}); {status}"
    )


def _base_env() -> dict[str, str]:
    """This environment, less what would point git at another repository than the demo's
    (GIT_DIR, ... as in a git hook)."""
    import os

    from abreast.workspace.git import without_repo_vars

    return without_repo_vars(os.environ)


def throwaway_dir(keep: bool) -> tuple[Path, bool]:
    path = Path(tempfile.mkdtemp(prefix="abreast-demo-"))
    return path, keep


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
