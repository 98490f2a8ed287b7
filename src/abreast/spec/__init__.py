"""The workflow file: loading, validation, defaults, conditions and schema."""

from abreast.spec.loader import load_document
from abreast.spec.model import Workflow
from abreast.spec.validate import load_workflow, parse_workflow

__all__ = ["Workflow", "load_document", "load_workflow", "parse_workflow"]
