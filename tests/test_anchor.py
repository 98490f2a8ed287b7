"""coord/anchor.py: state files put back, the same inodes, when `.abreast/` is removed."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from abreast.coord.anchor import StateAnchor, identity, with_side_files


def project(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "p"
    (root / ".git").mkdir(parents=True)
    state = root / ".abreast"
    state.mkdir()
    return root, state


def test_a_database_removed_while_open_comes_back_with_what_was_written_since(
    tmp_path: Path,
) -> None:
    root, state = project(tmp_path)
    db_path = state / "state.db"
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    anchor = StateAnchor.for_project(root, "r1", with_side_files(db_path), [state / "runs/r1/logs"])
    assert anchor is not None
    anchor.arm()
    assert anchor.armed and anchor.check() == []
    shutil.rmtree(state)
    db.execute("INSERT INTO t VALUES (2)")  # into the WAL nobody else can open now
    assert anchor.check(first_only=True) == with_side_files(db_path)
    assert (state / "runs/r1/logs").is_dir()
    db.execute("INSERT INTO t VALUES (3)")
    other = sqlite3.connect(db_path)  # another process's view, opened afresh
    assert [r[0] for r in other.execute("SELECT x FROM t ORDER BY x")] == [1, 2, 3]
    other.execute("INSERT INTO t VALUES (4)")
    other.commit()
    other.close()
    assert [r[0] for r in db.execute("SELECT x FROM t ORDER BY x")] == [1, 2, 3, 4]
    assert anchor.restored == 1
    anchor.close()
    db.close()
    assert not (root / ".git" / "abreast").exists()


def test_a_file_replaced_by_another_is_put_back_unless_it_is_shared(tmp_path: Path) -> None:
    root, state = project(tmp_path)
    journal, shim = state / "state.db", state / "bin" / "abreast"
    journal.write_text("ours")
    shim.parent.mkdir()
    shim.write_text("shim 1")
    anchor = StateAnchor.for_project(root, "r1", [journal, shim], [], shared=[shim])
    assert anchor is not None
    anchor.arm()
    ours = identity(journal)
    journal.unlink()
    journal.write_text("a fresh one another process made")
    replacement = shim.with_name("new")
    replacement.write_text("shim 2")
    replacement.replace(shim)  # another run's abreast rewrote it: theirs to keep
    assert anchor.check() == [journal]
    assert identity(journal) == ours and journal.read_text() == "ours"
    assert shim.read_text() == "shim 2"
    shim.unlink()  # gone, though: put back
    assert anchor.check() == [shim]
    assert shim.read_text() == "shim 1"


def test_only_files_inside_a_project_with_a_git_directory_are_anchored(tmp_path: Path) -> None:
    root, state = project(tmp_path)
    outside = tmp_path / "elsewhere.db"
    outside.write_text("x")
    assert StateAnchor.for_project(root, "r1", [outside], []) is None
    (root / ".git").rmdir()
    (root / ".git").write_text("gitdir: /somewhere/else\n")  # a linked worktree
    (state / "state.db").write_text("x")
    assert StateAnchor.for_project(root, "r1", [state / "state.db"], []) is None


def test_files_that_do_not_exist_yet_are_left_out(tmp_path: Path) -> None:
    root, state = project(tmp_path)
    journal = state / "state.db"
    journal.write_text("x")
    anchor = StateAnchor.for_project(root, "r1", with_side_files(journal), [])
    assert anchor is not None
    anchor.arm()
    shutil.rmtree(state)
    assert anchor.check() == [journal]  # no -wal or -shm was there to anchor
    assert not journal.with_name("state.db-wal").exists()


def test_cleanup_leaves_the_links_of_a_run_it_does_not_know_while_its_files_are_there(
    tmp_path: Path,
) -> None:
    from abreast.engine.cleanup import cleanup

    root, state = project(tmp_path)
    live, gone = state / "live.db", state / "gone.db"
    for f in (live, gone):
        f.write_text("x")
    for run_id, f in (("other-journal-run", live), ("long-gone", gone)):
        anchor = StateAnchor.for_project(root, run_id, [f], [])
        assert anchor is not None
        anchor.arm()
    gone.unlink()  # only the link is left of that run's file
    plans = cleanup(None, root, dry_run=False, force=False, results=False)
    assert [p.run_id for p in plans] == ["long-gone"]
    anchors = root / ".git" / "abreast" / "anchors"
    assert sorted(p.name for p in anchors.iterdir()) == ["other-journal-run"]
