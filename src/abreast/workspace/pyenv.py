"""Python packages installed in editable mode from the user's checkout.

`pip install -e .` makes the environment import the package from the checkout's
source directory (a `.pth` file naming it, or setuptools' finder mapping the
package to it), whatever the current directory. A task or check in a worktree
that runs the project's tests with that environment would therefore test the
user's checkout, not the worktree: an agent's edits would seem to do nothing,
and a check would pass or fail on code that is not the merge it checks (with a
`src/` layout; with a flat one the current directory comes first anyway).

abreast finds those source directories inside the repository (in the
environments `_site_dirs` names) and
puts the worktree's copies of them first on `PYTHONPATH` for every task and
check in a worktree, ahead of the editable install. `ABREAST_OWN_PYTHONPATH`
keeps the orchestrator's value, so that `abreast` called inside a task (the
shim on PATH) still runs the orchestrator's own code, and `abreast lock -- CMD`
gives CMD the task's value back.
"""

from __future__ import annotations

import ast
import glob
import os
import sys
from collections.abc import Mapping
from pathlib import Path

OWN = "ABREAST_OWN_PYTHONPATH"  # the orchestrator's PYTHONPATH, for the abreast shim
TASKS = "ABREAST_TASK_PYTHONPATH"  # a task's PYTHONPATH, while the shim runs abreast


def _site_dirs(root: Path, env: Mapping[str, str]) -> list[Path]:
    """site-packages of the environments a task may run Python from: the active one
    (`$VIRTUAL_ENV`, `$CONDA_PREFIX`), the one of the first `python3` on PATH, abreast's
    own, and the checkout's own `.venv`/`venv`."""
    import shutil  # here: the module's names are read by `abreast run` at start-up

    prefixes = [env.get("VIRTUAL_ENV"), env.get("CONDA_PREFIX")]
    python = shutil.which("python3", path=env.get("PATH"))
    if python:
        prefixes.append(str(Path(python).parent.parent))
    if sys.prefix != sys.base_prefix:
        prefixes.append(sys.prefix)
    prefixes += [str(root / ".venv"), str(root / "venv")]
    dirs: list[Path] = []
    for prefix in filter(None, prefixes):
        for d in glob.glob(os.path.join(glob.escape(prefix), "lib", "python3*", "site-packages")):
            if Path(d) not in dirs:
                dirs.append(Path(d))
    return dirs


def _pth_dirs(pth: Path) -> list[Path]:
    """The directories an editable install's .pth adds (plain lines) or maps packages to
    (setuptools' `__editable___*_finder` modules, imported by an `import` line)."""
    out: list[Path] = []
    try:
        lines = pth.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return out
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("import "):
            if "__editable___" in line:
                module = line.split()[1].rstrip(";")
                out += _finder_dirs(pth.parent / f"{module}.py")
            continue
        out.append(Path(line))
    return out


def _finder_dirs(finder: Path) -> list[Path]:
    """Parents of the package directories setuptools' editable finder maps (a package
    `pkg` -> `/repo/src/pkg` gives `/repo/src`), from its `MAPPING` literal."""
    try:
        tree = ast.parse(finder.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    for node in tree.body:
        value: ast.expr | None = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value = node.value if node.target.id == "MAPPING" else None
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            value = node.value if isinstance(target, ast.Name) and target.id == "MAPPING" else None
        if value is None:
            continue
        try:
            mapping = ast.literal_eval(value)
        except ValueError:
            return []
        if not isinstance(mapping, dict):
            return []
        return [
            Path(p).parent
            for name, p in mapping.items()
            if isinstance(name, str) and isinstance(p, str) and Path(p).name == name.split(".")[-1]
        ]
    return []


def editable_sources(root: Path, env: Mapping[str, str]) -> list[str]:
    """The directories inside `root` that the environment imports editable packages from,
    relative to `root` ("." for the root itself), in a stable order."""
    root = root.resolve()
    found: list[str] = []
    for site in _site_dirs(root, env):
        for pth in sorted(site.glob("*.pth")):
            for d in _pth_dirs(pth):
                try:
                    rel = d.resolve().relative_to(root)
                except (OSError, ValueError):
                    continue
                if rel.parts[:1] in ((".git",), (".abreast",)):
                    continue
                if str(rel) not in found:
                    found.append(str(rel))
    return found


def env_for(worktree: Path, sources: list[str], base: Mapping[str, str]) -> dict[str, str]:
    """What a task or check in `worktree` needs so that it imports the worktree's code."""
    if not sources:
        return {}
    own = base.get("PYTHONPATH", "")
    ours = [str(worktree / rel) if rel != "." else str(worktree) for rel in sources]
    return {"PYTHONPATH": os.pathsep.join([*ours, *([own] if own else [])]), OWN: own}


def for_command(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for the command `abreast lock` runs: the task's PYTHONPATH back."""
    if TASKS not in env:
        return dict(env)
    out = {k: v for k, v in env.items() if k != TASKS}
    out["PYTHONPATH"] = env[TASKS]
    return out
