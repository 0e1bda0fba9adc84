"""Ctrl-C, SIGTERM and SIGHUP as exceptions that every command handles the same way.

Inside :func:`handled` the first SIGINT, SIGTERM or SIGHUP raises :class:`Interrupted` in the main
thread (a ``BaseException``, as ``KeyboardInterrupt`` is, so no ``except Exception`` on the way
mistakes it for an error). Later signals are noted and ignored: the command is already on its
way out, and its clean-up (removing temporaries, saving a checkpoint) must not be cut short by
an impatient second Ctrl-C. Inside :func:`deferred` a signal waits until the block ends, so that
short steps which must not be split (renaming a finished folder into place) run whole.

A signal that is ignored when :func:`handled` starts is left ignored, as most Unix tools do:
``nohup`` ignores SIGHUP, and a shell starts a background job with SIGINT ignored, so that a
fit run that way goes on when the terminal closes, or when a Ctrl-C meant for the command
in the foreground reaches it.

Outside :func:`handled` (the library used from Python) nothing changes: SIGINT raises
``KeyboardInterrupt`` as usual and :func:`deferred` only defers signals that arrive while some
caller has :func:`handled` installed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "deferred", "handled", "raise_pending"]

#: SIGHUP too: a closed terminal or a dropped ssh session ends a fit as Ctrl-C does.
_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP. ``exit_code`` is the shell's code for it: 130, 143 or 129.
    ``after`` names the :func:`deferred` block the signal arrived in, when it is raised as that
    block ends (the block's work is then done); None otherwise."""

    def __init__(self, signum: int, after: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum
        self.after = after


class _State:
    installed = False
    stopping = False  # the first signal was raised: later ones are ignored
    depth = 0  # nesting of ``deferred`` blocks
    label: str | None = None  # the innermost one's
    pending: int | None = None  # a signal that arrived inside ``deferred``
    where: str | None = None  # the label of the deferred block it arrived in


def _handler(signum: int, frame: object) -> None:  # noqa: ARG001
    if _State.stopping:
        return
    if _State.depth:
        if _State.pending is None:
            _State.pending, _State.where = signum, _State.label
        return
    _State.stopping = True
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` for the block's duration (only
    in the main thread; elsewhere the block runs with the signals as they were). A signal
    ignored as the block starts (SIG_IGN, inherited from ``nohup`` or a shell) stays ignored."""
    if threading.current_thread() is not threading.main_thread() or _State.installed:
        yield
        return
    previous = {
        s: signal.signal(s, _handler) for s in _SIGNALS if signal.getsignal(s) != signal.SIG_IGN
    }
    _State.installed, _State.stopping, _State.depth, _State.pending = True, False, 0, None
    _State.label = _State.where = None
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _State.installed, _State.stopping, _State.depth, _State.pending = False, False, 0, None


@contextmanager
def deferred(label: str = "") -> Iterator[None]:
    """Run the block whole: a signal that arrives inside it is raised when it ends (if no
    other exception is on its way out), as :class:`Interrupted` with ``after=label``."""
    _State.depth += 1
    # an unlabelled block inside a labelled one is part of it (the temporary of a record
    # written while outputs are installed): a signal there arrived in the install too
    outer, _State.label = _State.label, label or _State.label
    try:
        yield
    finally:
        _State.depth -= 1
        _State.label = outer
    raise_pending()


def raise_pending() -> None:
    """Raise the signal that arrived inside a :func:`deferred` block, if any (outside one)."""
    if _State.depth == 0 and _State.pending is not None and not _State.stopping:
        signum, _State.pending = _State.pending, None
        _State.stopping = True
        raise Interrupted(signum, after=_State.where)
