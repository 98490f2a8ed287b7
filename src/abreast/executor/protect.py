"""Keeping tasks from writing in the user's checkout (`containment: {main_checkout:
protect}`).

Each attempt starts in a mount namespace of its own, made in an unprivileged user
namespace (`unshare`, util-linux 2.38 or later), where the checkout is bind-mounted
read-only over itself, with its `.git` (the worktrees, objects and refs) and abreast's
state directory (logs, outputs, the journal) mounted writable again over that. It
then runs as the user again in a nested user namespace, so that it is not root there
and cannot undo the mounts (they are locked to the namespace that made them). A write
into the checkout fails with "Read-only file system"; the user's own edits, outside
the namespace, are theirs, and never blamed on a task.

Where user namespaces are off (some distributions, containers under a seccomp profile)
the probe before the run fails and the run finds writes after each attempt instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from abreast.spec.commands import run_quietly

# $1 uid, $2 gid, $3 the checkout, $4 the mount's locked options (",nosuid,nodev"), then
# the paths to keep writable, `--`, and the command. Each mount failing ends it with 125
# before the wrapper starts (the probe before the run finds that first).
SCRIPT = (
    'u=$1; g=$2; ro=$3; opts=$4; shift 4; mount --bind -- "$ro" "$ro" || exit 125; '
    'while [ "$1" != -- ]; do mount --bind -- "$1" "$1" || exit 125; shift; done; shift; '
    'mount -o "remount,bind,ro$opts" -- "$ro" || exit 125; '
    'exec unshare --user --map-user="$u" --map-group="$g" -- "$@"'
)

# Mount flags a user namespace may not drop in a remount (the kernel locks them).
_LOCKED = ("nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime", "strictatime")


def prefix(checkout: Path, writable: list[Path]) -> tuple[str, ...] | None:
    """The argv that starts a command (appended to it) with `checkout` read-only and
    `writable` (those inside it that exist) writable; None without `unshare`."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    root = checkout.resolve()
    keep = [str(p.resolve()) for p in writable if p.exists() and p.resolve().is_relative_to(root)]
    ids = (str(os.getuid()), str(os.getgid()))
    head = (unshare, "--user", "--map-root-user", "--mount", "--", "/bin/sh", "-c", SCRIPT)
    return (*head, "abreast-protect", *ids, str(root), _locked_options(root), *keep, "--")


def probe(argv: tuple[str, ...]) -> str | None:
    """Why `argv` cannot start a command here (its last words); None when it can."""
    done = run_quietly([*argv, "/bin/sh", "-c", "true"], 20)
    if isinstance(done, str):
        return done
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[0] if lines else f"exit {done.returncode}"


def _locked_options(path: Path) -> str:
    """The options of the mount holding `path` that a remount in a user namespace must
    keep, as `,opt,opt`."""
    best, options = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6:
                    continue
                point = fields[4].replace("\\040", " ")
                inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, options = point, fields[5]
    except OSError:
        return ""
    return "".join(f",{o}" for o in options.split(",") if o in _LOCKED)
