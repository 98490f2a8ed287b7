"""The workflow file: loading, validation, defaults, conditions and schema.

The names below load on first use, so that importing a light module of this package
(`spec.durations`, `spec.conditions`) does not import pydantic and the models.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from abreast.spec.loader import load_document
    from abreast.spec.model import Workflow
    from abreast.spec.validate import load_workflow, parse_workflow

__all__ = ["Workflow", "load_document", "load_workflow", "parse_workflow"]

_HOME = {
    "load_document": "abreast.spec.loader",
    "Workflow": "abreast.spec.model",
    "load_workflow": "abreast.spec.validate",
    "parse_workflow": "abreast.spec.validate",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
