"""``--help`` for the benchmarks that take no options: it prints the script's docstring and
exits, rather than starting a run of minutes; any other argument is refused."""

from __future__ import annotations

import argparse


def no_options(doc: str | None) -> None:
    """Parse the command line of a benchmark without options (``doc``: its docstring)."""
    argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
