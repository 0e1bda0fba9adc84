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
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facefinder_cli"


def pytest_configure(config) -> None:
    try:
        compileall.compile_dir(PACKAGE, quiet=2, workers=1)
    except OSError:  # a read-only checkout: nothing to gain here, nothing to lose
        pass
