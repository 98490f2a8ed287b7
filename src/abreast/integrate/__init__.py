"""Isolation and integration: where attempts run, and how their work lands (merge queue)."""
