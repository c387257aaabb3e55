"""The error every evaluation raises for bad input (its own module, so that the input, report
and evaluator modules can all raise it without importing one another)."""

from __future__ import annotations

__all__ = ["EvaluationError"]


class EvaluationError(ValueError):
    """Bad evaluation input; the message is one line meant for the user."""
