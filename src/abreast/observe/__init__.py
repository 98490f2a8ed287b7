"""Seeing a run: terminal views, summaries, status, metrics, events, dashboard, reports."""
