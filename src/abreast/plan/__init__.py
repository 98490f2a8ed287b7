"""Dependency analysis: the DAG, waves, critical path, exclusions and schedule estimates."""

from abreast.plan.analysis import Analysis, analyze
from abreast.plan.dispatch import Dispatcher
from abreast.plan.graph import DEFAULT_ESTIMATE_S, TaskGraph

__all__ = ["DEFAULT_ESTIMATE_S", "Analysis", "Dispatcher", "TaskGraph", "analyze"]
