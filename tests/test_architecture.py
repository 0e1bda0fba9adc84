"""The direction of imports (docs/ARCHITECTURE.md): the engine at the bottom."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "facefinder_cli"
FORBIDDEN_IN_ENGINE = ("click", "tqdm", "imageio", "matplotlib", "PIL", "tifffile")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "facefinder_cli.engine":  # its modules, by name
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_engine_imports_no_io_plotting_or_command_line():
    modules = sorted((PACKAGE / "engine").glob("*.py"))
    assert len(modules) >= 8
    for path in modules:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN_IN_ENGINE, f"{path.name} imports {name}"
            if top == "facefinder_cli":
                assert name.startswith("facefinder_cli.engine"), f"{path.name} imports {name}"


def test_engine_modules_import_only_those_below_them():
    order = ["_fft", "blas", "model", "settings", "machine", "data", "cluster", "estep", "mstep"]
    order += ["starts"]
    order += ["passes", "sampler"]
    order += ["accelerate", "loop", "sizes", "mixture"]
    for i, name in enumerate(order):
        below = {f"facefinder_cli.engine.{m}" for m in order[:i]}
        inner = {n for n in _imports(PACKAGE / "engine" / f"{name}.py") if "engine." in n}
        assert inner <= below, f"engine/{name}.py imports {sorted(inner - below)}"


def test_only_the_command_line_imports_click_and_tqdm():
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in ("cli", "cli.py", "__main__.py"):
            continue
        tops = {n.split(".")[0] for n in _imports(path)}
        assert not tops & {"click", "tqdm"}, f"{path.relative_to(PACKAGE)} imports click/tqdm"
