"""Allow ``python -m facefinder_cli``."""

from facefinder_cli.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
