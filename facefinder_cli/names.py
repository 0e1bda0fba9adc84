r"""Image names as they go into CSV files, names files and messages.

Any file name the operating system allows is a valid image name: commas, quotes, line breaks,
backslashes, and bytes that are not UTF-8 (Python holds those as "surrogate escapes"). Every
file facefinder writes is UTF-8 text, so such names are written with a stated escaping:

* In CSV files (``positions.csv``, ``detect``'s output), written with the :mod:`csv` module
  (fields with commas, quotes or line breaks are quoted), a byte that is not UTF-8 appears as
  ``\xNN`` (:func:`printable`); the rest of the name is as is.
* In a names file (``stack.names.txt``, one name a line), read back by facefinder, the escaping
  is reversible (:func:`to_line`, :func:`from_line`): ``\\`` for a backslash, ``\n`` and ``\r``
  for line breaks, ``\xNN`` for a byte that is not UTF-8.
"""

from __future__ import annotations

import csv
import re
from typing import IO, Any

__all__ = ["csv_writer", "from_line", "printable", "to_line"]


def _bytes(name: str) -> bytes | None:
    """The bytes of a name as the OS gave it, or None for text no OS name decodes to."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def printable(name: str) -> str:
    r"""``name`` as text that encodes to UTF-8: bytes that are not UTF-8 become ``\xNN``."""
    raw = _bytes(str(name))
    if raw is None:
        return str(name).encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def to_line(name: str) -> str:
    r"""``name`` as one line of a names file (no line break in it); :func:`from_line` undoes
    it."""
    raw = _bytes(str(name))
    if raw is None:
        raw = str(name).encode("utf-8", "backslashreplace")
    raw = raw.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return raw.decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|n|r|x[0-9a-fA-F]{2})")


def _unescape(m: re.Match[str]) -> str:
    code = m[1]
    if code == "\\":
        return "\\"
    if code == "n":
        return "\n"
    if code == "r":
        return "\r"
    return bytes([int(code[1:], 16)]).decode("utf-8", "surrogateescape")


def from_line(line: str) -> str:
    """The name that :func:`to_line` wrote as ``line`` (a backslash before anything else is
    kept as it is)."""
    return _ESCAPE.sub(_unescape, line)


class _Rows:
    """A ``csv.writer`` whose rows end in ``\n`` and whose first field (the name) is quoted
    when it holds a carriage return: the csv module quotes only the characters of its line
    terminator, and a bare ``\r`` ends a line for most readers."""

    def __init__(self, f: IO[str]) -> None:
        self._plain = csv.writer(f, lineterminator="\n")
        self._quoted = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row: list[Any]) -> None:
        writer = self._quoted if "\r" in str(row[0]) else self._plain
        writer.writerow(row)


def csv_writer(f: IO[str]) -> _Rows:
    """A writer of CSV rows (a name first) that any CSV reader reads back, whatever the name."""
    return _Rows(f)
