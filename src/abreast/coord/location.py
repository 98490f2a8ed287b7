"""Where a project's state lives: the journal, run directories, and the coordination backend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from abreast.errors import UsageError
from abreast.workspace.git import exclude_locally, toplevel

STATE_DIR = ".abreast"


@dataclass(frozen=True)
class StateLocation:
    root: Path  # the project: the git toplevel, else the workflow's directory
    journal: Path  # SQLite file
    runs_dir: Path  # logs, outputs and exit statuses, one directory per run
    coord_url: str  # what tasks get in ABREAST_STATE: sqlite:///... or redis://...
    in_git: bool = False  # root is a git toplevel

    @property
    def is_redis(self) -> bool:
        return self.coord_url.startswith(("redis://", "rediss://", "unix://"))

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    @property
    def bin_dir(self) -> Path:
        """Where the `abreast` tasks call is written (engine/runs.py `_abreast_shim`)."""
        return self.runs_dir.parent / "bin"

    @property
    def coord_file(self) -> Path | None:
        """The SQLite coordination file, where coordination is SQLite."""
        return coord_path(self.coord_url) if self.coord_url.startswith("sqlite://") else None


def redact_url(url: str) -> str:
    """`url` fit to journal, publish or print: a password in it (`redis://:pw@host`,
    `redis://user:pw@host`, `nats://user:pw@host`, `redis://host?password=pw`) becomes
    `***`."""
    import re
    from urllib.parse import urlsplit, urlunsplit

    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL one can take apart: hide everything before an @
        return "***@" + url.rsplit("@", 1)[1] if "@" in url else url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def coord_path(url: str) -> Path:
    """The coordination file for `sqlite://PATH`: beside the journal when PATH is one."""
    journal = Path(url[len("sqlite://") :])
    return journal.parent / "coord.db" if journal.suffix == ".db" else journal


def project_root(workflow_file: Path | None) -> tuple[Path, bool]:
    """(root, is a git repository) for a workflow file, or for the current directory."""
    base = workflow_file.resolve().parent if workflow_file else Path.cwd()
    top = toplevel(base)
    return (top, True) if top else (base, False)


def env_state() -> str:
    """ABREAST_STATE as the user set it. Inside a task (ABREAST_RUN_ID is set too) it is
    what the enclosing run gave its tasks, to reach it with `abreast lock` and `abreast
    signal`: a command about a project (a nested `abreast run`, the project's tests
    running abreast, `abreast status`) goes by that project's own state instead, or
    journals into the enclosing run's journal. `--state "$ABREAST_STATE"` shares it."""
    if os.environ.get("ABREAST_RUN_ID"):
        return ""
    return os.environ.get("ABREAST_STATE") or ""


def locate(
    workflow_file: Path | None, state: str | None = None, *, look_only: bool = False
) -> StateLocation:
    """The state location: `state` (from --state) or ABREAST_STATE, else `.abreast/` at the
    root. Unless `look_only`, state kept inside the repository is excluded from git's view
    (`.git/info/exclude`), before anything is written there."""
    root, in_git = project_root(workflow_file)
    in_git_to_exclude = in_git and not look_only
    url = state or env_state()
    default_journal = root / STATE_DIR / "state.db"
    if not url:
        if in_git_to_exclude:
            exclude_locally(root, f"/{STATE_DIR}/")
        return StateLocation(
            root, default_journal, root / STATE_DIR / "runs", f"sqlite://{default_journal}", in_git
        )
    if url.startswith("sqlite://"):
        path = Path(url[len("sqlite://") :]).expanduser()
        if not str(path) or str(path) == ".":
            raise UsageError(
                f"--state {url!r}: no file path after sqlite://",
                hint="write sqlite:///absolute/path/state.db",
            )
        path = path if path.is_absolute() else Path.cwd() / path
        if in_git_to_exclude and root in path.parents:
            # State kept inside the repository stays out of the user's git status.
            exclude_locally(root, "/" + str(path.parent.relative_to(root)) + "/")
        return StateLocation(root, path, path.parent / "runs", f"sqlite://{path}", in_git)
    if url.startswith(("redis://", "rediss://", "unix://")):
        if in_git_to_exclude:
            exclude_locally(root, f"/{STATE_DIR}/")
        return StateLocation(root, default_journal, root / STATE_DIR / "runs", url, in_git)
    raise UsageError(
        f"state {redact_url(url)!r} is not understood",
        hint="use sqlite:///path/state.db or redis://host:6379/0",
    )
