"""The error a user can cause, shared by the reading and writing modules."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A problem with the user's files or options; the message is one line, fit to show as is."""
