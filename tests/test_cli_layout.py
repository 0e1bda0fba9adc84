"""The command line's layout (facefinder_cli.cli): one module per command, named after it;
the shared modules below the commands, never importing them."""

from __future__ import annotations

import ast
from pathlib import Path

from facefinder_cli.cli import main

CLI = Path(__file__).resolve().parent.parent / "facefinder_cli" / "cli"
SHARED = ("options", "progress", "fit_resume", "fit_faces")  # what the commands build on


def _cli_imports(path: Path) -> set[str]:
    """The modules of facefinder_cli.cli that ``path`` imports, by their short names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "facefinder_cli.cli":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "facefinder_cli.cli."
        ):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found.update(
                a.name.rsplit(".", 1)[1]
                for a in node.names
                if a.name.startswith("facefinder_cli.cli.")
            )
    return found


def test_every_command_is_defined_in_the_module_named_after_it():
    assert set(main.commands) == {"generate", "fit", "plot-elbo", "detect", "pack"}
    for name, command in main.commands.items():
        assert command.callback.__module__ == "facefinder_cli.cli." + name.replace("-", "_")


def test_the_shared_modules_import_no_command():
    assert _cli_imports(CLI / "options.py") == set()
    assert _cli_imports(CLI / "progress.py") == set()
    assert _cli_imports(CLI / "fit_resume.py") <= {"options", "progress"}
    assert _cli_imports(CLI / "fit_faces.py") <= {"options", "progress", "fit_resume"}
    commands = {p.stem for p in CLI.glob("*.py")} - set(SHARED) - {"__init__"}
    for name in commands:
        assert _cli_imports(CLI / f"{name}.py") <= set(SHARED), name
