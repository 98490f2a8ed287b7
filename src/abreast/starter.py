"""The workflow `abreast init` writes: small, valid, and commented."""

STARTER = """\
version: 1
name: my-workflow
max_parallel: 4
# base: main                 # the ref the first tasks start from (default: HEAD)

defaults:
  timeout: 30m
  retries: 1                 # extra attempts after a failure, a conflict or a red check
#   ports: 1                 # a free TCP port per attempt in $ABREAST_PORT (for servers)

# agents:
#   claude:
#     run: claude -p "$ABREAST_PROMPT" --permission-mode acceptEdits
#     max_instances: 3

# checks:                    # run on the merge result before a task's work lands
#   - run: make test
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
"""
