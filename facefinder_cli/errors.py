"""What the reading and writing modules say to the user: the error a user can cause, notes on
what was done, and hints naming a setting that would change it.

A message that names a setting keeps it as a :class:`Hint` among its parts, so that each
caller words it as its own: as text (``str(err)``) the library says a keyword argument,
``layout='khw'``; the command line says its option, ``--layout khw`` (see :func:`worded`).
Messages that name command-line flags live in the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Hint", "InputError", "Note", "worded"]


@dataclass(frozen=True)
class Hint:
    """A setting that would change what was done, or mend an error.

    Attributes
    ----------
    option : str
        The setting's name, as the library's functions take it (``"layout"``, ``"dtype"``).
    value : str or None
        The value to give it; None for a switch to turn on (``overwrite``).
    command : str or None
        The command that takes the setting, when it is not the one that said so (``"fit"``).
    """

    option: str
    value: str | None = None
    command: str | None = None

    def __str__(self) -> str:
        """The library's words: a keyword argument."""
        return f"{self.option}={True if self.value is None else self.value!r}"


def worded(message: object, word: Callable[[Hint], str] = str) -> str:
    """``message`` as text, with each of its hints in ``word``'s words.

    Parameters
    ----------
    message : InputError, Note or any other object
        Objects without hints are ``str(message)``.
    word : callable
        ``word(hint)`` is the text in place of ``hint``; ``str`` gives the library's words.
    """
    parts = getattr(message, "parts", None)
    if not isinstance(parts, tuple):
        return str(message)
    return "".join(part if isinstance(part, str) else word(part) for part in parts)


class Note(str):
    """A note on what was done while reading, that names a setting: the text in the library's
    words, with the parts it is made of (text and :class:`Hint`) as ``parts``."""

    parts: tuple[str | Hint, ...]

    def __new__(cls, *parts: str | Hint) -> Note:
        note = super().__new__(cls, "".join(map(str, parts)))
        note.parts = parts
        return note

    def __reduce__(self) -> tuple[type[Note], tuple[str | Hint, ...]]:
        return (Note, self.parts)

    @property
    def hints(self) -> tuple[Hint, ...]:
        return tuple(part for part in self.parts if isinstance(part, Hint))


class InputError(ValueError):
    """A problem with the user's files or options; the message is one line, fit to show as is.

    Made of text and :class:`Hint` parts, as a :class:`Note`; ``str(err)`` is in the library's
    words."""

    def __init__(self, *parts: str | Hint) -> None:
        super().__init__("".join(map(str, parts)))
        self.parts = parts

    @property
    def hints(self) -> tuple[Hint, ...]:
        return tuple(part for part in self.parts if isinstance(part, Hint))
