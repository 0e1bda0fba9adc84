"""The ``facefinder`` program: ``python -m facefinder_cli`` and the installed command.

Its first lines run before NumPy and the command line are imported (a second or so): a closed
standard stream gets /dev/null, and Ctrl-C or SIGTERM during the imports ends the program with
one line and the shell's status (130 or 143), not a traceback. The command line then takes
over the signals (:mod:`facefinder_cli.interrupts`). A signal ignored when the program starts
(SIGHUP under ``nohup``, SIGINT in a shell's background job) is left ignored throughout.
"""

from __future__ import annotations

import os
import signal


def _stop_during_start(signum: int, frame: object) -> None:  # noqa: ARG001
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.write(2, b"interrupted while starting\n")
    except OSError:
        pass
    os._exit(128 + signum)


_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]


def main() -> None:
    """Run the command line with ``sys.argv``; exits with its status."""
    for signum in _SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:  # an inherited "ignore" is kept
            signal.signal(signum, _stop_during_start)
    from facefinder_cli import outputs

    outputs.repair_std_streams()
    from facefinder_cli.cli import main as cli_main

    try:
        cli_main()
    finally:  # the command has said how it ended: a signal now changes nothing
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    main()
