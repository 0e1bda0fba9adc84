"""The experiment suite (experiments/Makefile), end to end: `make quick` reruns a tiny version
of the original study with the installed command-line tool and writes its report; a second
make finds nothing to do.

It runs in a copy of experiments/ under a temporary folder, so the checkout stays clean, with
the `facefinder` console script of the Python running the tests. About 20 s on 2 cores.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A copy of experiments/ after `make quick`, and the make command line that built it."""
    root = tmp_path_factory.mktemp("experiments")
    shutil.copytree(
        EXPERIMENTS,
        root,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("build", "quick", "figures", "REPORT.md", "__pycache__"),
    )
    ff = Path(sys.executable).parent / "facefinder"
    make = ["make", "-C", str(root), "-j2", f"FF={ff}", f"PYTHON={sys.executable}"]
    done = subprocess.run([*make, "quick"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return root, make


def _report_module(root: Path):
    spec = importlib.util.spec_from_file_location("experiments_report", root / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_quick_report_has_every_section_and_a_verdict_per_conclusion(suite):
    root, _ = suite
    report = (root / "quick" / "REPORT.md").read_text()
    module = _report_module(root)
    for heading in module.SECTIONS:
        assert re.search(f"^{re.escape(heading)}$", report, re.M), heading
    for claim in module.CLAIMS.values():
        row = rf"^\| \*\*(agrees|partly|disagrees)\*\* \| {re.escape(claim)} \| \S"
        assert re.search(row, report, re.M), claim
    # every figure the report shows exists, under quick/ (not the committed figures/)
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    names = {Path(link).name for link in shown}
    assert {"inits-faces.png", "inits-elbo.png", "grid-faces.png", "grid-elbo.png"} <= names
    assert {"grid-errors.png", "methods-faces.png", "hard-elbo.png", "photo-faces.png"} <= names
    for link in shown:
        assert (root / "quick" / link).is_file(), link
        assert (root / "quick" / link).resolve().parent == (root / "quick" / "figures").resolve()
    assert not (root / "REPORT.md").exists() and not (root / "build").exists()


def test_second_make_does_nothing(suite):
    root, make = suite
    before = {p: p.stat().st_mtime_ns for p in (root / "quick").rglob("*") if p.is_file()}
    again = subprocess.run([*make, "quick"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done" in again.stdout
    assert "facefinder" not in again.stdout
    after = {p: p.stat().st_mtime_ns for p in (root / "quick").rglob("*") if p.is_file()}
    assert after == before
    # make's own question mode agrees: everything is up to date
    question = subprocess.run([*make, "-q", "SUITE=quick"], capture_output=True, text=True)
    assert question.returncode == 0, question.stdout + question.stderr


def test_the_committed_plots_that_make_replaces_are_facefinders():
    """`make -C docs` and `make -C experiments` redraw these with plot-elbo --overwrite,
    which replaces only plots facefinder drew as plot-elbo's output under that name and nobody
    changed (their stamp): committed ones without it would stop both Makefiles on a fresh
    clone."""
    from facefinder_cli.outputs import is_facefinder_plot

    root = EXPERIMENTS.parent
    figures = EXPERIMENTS / "figures"
    drawn = [root / "docs" / "elbo.png", figures / "inits-elbo.png", figures / "hard-elbo.png"]
    drawn += sorted(figures.glob("methods-*.png"))
    drawn.remove(figures / "methods-faces.png")  # report.py's, written without --overwrite
    assert len(drawn) == 8
    assert [p.name for p in drawn if not is_facefinder_plot(str(p), "plot-elbo")] == []
