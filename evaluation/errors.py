"""Errors of the evaluation stage: data that cannot be evaluated, a report that cannot be read."""

from __future__ import annotations

from contracts import StreamrlError


class EvaluationError(StreamrlError):
    """Timelines or a model that cannot be evaluated; names the column and offending rows."""

    def __init__(self, message: str, *, column: str | None = None, rows: list[str] | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.rows = rows or []


class ReportError(EvaluationError):
    """A CPE report or gate decision file that is missing or not valid."""
