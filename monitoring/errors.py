"""Errors of the monitoring stage."""

from __future__ import annotations

from contracts import StreamrlError


class MonitoringError(StreamrlError):
    """The monitor could not be configured, started or read; `where` names the file, topic or broker."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where
