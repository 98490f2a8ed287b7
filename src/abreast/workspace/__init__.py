"""Git: the only package that runs it. Worktrees, commits, ownership checks, cleanup."""
