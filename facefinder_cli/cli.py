"""The ``facefinder`` command line (placeholder until the CLI lands)."""
from __future__ import annotations

import click

from facefinder_cli import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="facefinder")
def main() -> None:
    """Recover a face hidden in many noisy images."""
