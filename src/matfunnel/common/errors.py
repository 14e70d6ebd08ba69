"""Errors raised for bad input structures."""

from __future__ import annotations


class StructureError(ValueError):
    """A structure cannot be evaluated; the message names the structure and the problem."""

    def __init__(self, label: str, problem: str):
        self.label = label
        self.problem = problem
        super().__init__(f"structure {label!r}: {problem}")
