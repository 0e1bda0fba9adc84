"""Suite-wide setup.

Many tests run the command line in real subprocesses that import this checkout. Where Python is
told not to write bytecode (``PYTHONDONTWRITEBYTECODE``, as on CI machines), each of those
processes would compile the whole package again: about 0.1 s apiece, 30 s of CPU per suite. So
the package is compiled once here, into its ``__pycache__`` folders (ignored by git), which
Python reads whatever that variable says. Each pytest-xdist worker runs this too; an up-to-date
file is not compiled again, and files are replaced atomically. Where the checkout cannot be
written (read-only), the suite runs as before, only slower.
"""

from __future__ import annotations

import compileall
import signal
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facefinder_cli"


def pytest_configure(config) -> None:
    try:
        compileall.compile_dir(PACKAGE, quiet=2, workers=1)
    except OSError:  # a read-only checkout: nothing to gain here, nothing to lose
        pass
    # facefinder leaves alone a signal ignored when it starts (nohup, a shell's background
    # job), and the commands the tests start inherit the runner's: a runner started with
    # SIGINT ignored (it happened) would fail the tests of Ctrl-C, here and in those commands.
    # It gets Python's usual handler, which its children see as the default. (Tests of SIGHUP
    # and SIGTERM set their command's disposition themselves where it matters.)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
