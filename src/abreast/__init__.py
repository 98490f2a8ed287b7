"""abreast: run the tasks of a software workflow side by side, safely."""

__version__ = "0.1.0"
