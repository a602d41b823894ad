"""The root error: every stage's errors derive from it so callers can catch one type."""

from __future__ import annotations


class StreamrlError(Exception):
    """Base of all streamrl errors.

    Subclasses say what failed, the offending value and what to do next in their message,
    and keep the pieces as attributes for programs.
    """
