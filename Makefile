.PHONY: check test lint types fmt bench

check:          ## lint, types and tests, as CI runs them
	scripts/check

test:
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check src tests bench && .venv/bin/ruff format --check src tests bench

types:
	.venv/bin/mypy

fmt:
	.venv/bin/ruff format src tests bench && .venv/bin/ruff check --fix src tests bench

bench:          ## every benchmark; figures go to docs/benchmarks.md by hand
	.venv/bin/python bench/run_all.py
