"""Files tools generate that a task's work should not land: dependency installs, caches,
virtual environments, when the project's `.gitignore` does not exclude them.

An agent that runs `npm install` or the tests in a project whose `.gitignore` lacks
`node_modules/` or `__pycache__/` leaves thousands of such files in its worktree; taken
as its work (`git add -A`, or its own commit), they landed on the integration branch.
What counts, by its path alone (the changed paths are all there is to read):

- a directory with one of the names below (`node_modules`, `__pycache__`, ...), or
  whose name ends in `.egg-info` (what `pip install -e .` makes of a setuptools project);
- a directory holding `pyvenv.cfg` (a Python virtual environment, whatever its name) or
  `CACHEDIR.TAG` (the Cache Directory Tagging convention: Cargo's `target/`, ...);
- a `.DS_Store` file, a coverage data file (`.coverage`, `.coverage.HOST.PID.X` of
  parallel runs), ESLint's `.eslintcache`, TypeScript's `*.tsbuildinfo`;
- what an agent keeps for itself beside your files: Aider's `.aider.chat.history.md`,
  `.aider.input.history`, `.aider.llm.history` and `.aider.tags.cache.*/`.

One the task's `owns` names (`vendor/node_modules/**`) is its work, as is one the commit
it started from already has (a project that vendors its dependencies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from abreast.executor.logs import visible_name

# Directory names tools generate and no project's sources use (github/gitignore's
# templates ignore each of them).
NAMES = frozenset(
    {
        "node_modules",
        "bower_components",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
        ".eggs",
        ".venv",
        ".gradle",
        ".next",
        ".nuxt",
        ".turbo",
        ".parcel-cache",
        ".svelte-kit",
        ".angular",
        ".dart_tool",
        ".terraform",
        ".hypothesis",
        "htmlcov",
        ".ipynb_checkpoints",
        ".sass-cache",
    }
)
DIR_SUFFIXES = (".egg-info",)
# Files and directory-name prefixes agents keep for themselves at the root of the
# repository they work in: Aider's chat and input histories, its LLM log and its repo-map
# cache (`.aider.tags.cache.v3`, `.v4`, ...). Each parallel attempt writes its own, so
# taken as work they conflict at every merge but the first. Aider's configuration
# (`.aider.conf.yml`, `.aider.model.settings.yml`) is not among them.
FILES = frozenset(
    {
        ".DS_Store",
        ".coverage",
        ".eslintcache",
        ".aider.chat.history.md",
        ".aider.input.history",
        ".aider.llm.history",
    }
)
FILE_PREFIXES = (".coverage.",)  # coverage.py's parallel data files, one per process
FILE_SUFFIXES = (".tsbuildinfo",)  # `tsc --incremental`'s state
PREFIXES = (".aider.tags.cache",)
# A file that marks the directory holding it as generated.
MARKERS = frozenset({"pyvenv.cfg", "CACHEDIR.TAG"})


def roots(paths: Iterable[str]) -> dict[str, int]:
    """The generated directories (or files) among `paths`, outermost, each with how many
    of `paths` it holds, in the order first met."""
    paths = list(paths)
    marked = {p.rpartition("/")[0] for p in paths if p.rpartition("/")[2] in MARKERS}
    marked.discard("")  # a marker at the top marks the project itself
    found: dict[str, int] = {}
    for p in paths:
        parts = p.split("/")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if i < last and (
                part in NAMES
                or part.startswith(PREFIXES)
                or part.endswith(DIR_SUFFIXES)
                or (marked and "/".join(parts[: i + 1]) in marked)
            ):
                root = "/".join(parts[: i + 1])
            elif i == last and _generated_file(part):
                root = p
            else:
                continue
            found[root] = found.get(root, 0) + 1
            break
    return found


def _generated_file(name: str) -> bool:
    return name in FILES or name.startswith(FILE_PREFIXES) or name.endswith(FILE_SUFFIXES)


def owned(root: str, owns: Sequence[str]) -> bool:
    """Whether a pattern of `owns` names the generated directory itself (its name as one
    of the pattern's parts): then the task means to land it."""
    name = root.rpartition("/")[2]
    return any(name in pattern.split("/") for pattern in owns)


def said(task_id: str, left: dict[str, int]) -> str:
    """The warning for what was left out of a task's work."""
    shown = [
        visible_name(root)
        if _generated_file(root.rpartition("/")[2]) and n == 1
        else f"{visible_name(root)}/ ({n} file{'s' * (n != 1)})"
        for root, n in list(left.items())[:5]
    ]
    more = f" and {len(left) - 5} more" if len(left) > 5 else ""
    them = "it" if len(left) == 1 else "them"
    return (
        f"left out of {task_id}'s work: {', '.join(shown)}{more}, which tools generate and "
        f"the project's .gitignore does not exclude; add {them} to .gitignore (or name "
        f"{them} in the task's owns to land {them})"
    )
