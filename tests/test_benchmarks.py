"""The benchmarks under benchmarks/ answer --help with their docstring and exit 0, without
starting a run (seven of them ran for minutes on --help; found in review)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

_HELP_ALL = """
import contextlib, io, runpy, sys
sys.path.insert(0, sys.argv[1])
for path in sys.argv[2:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    code = "ran"
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    print(path.rsplit("/", 1)[-1], code, out.getvalue().startswith("usage:"))
"""


def test_every_benchmark_answers_help_without_running():
    scripts = sorted(str(p) for p in BENCHMARKS.glob("bench_*.py"))
    assert len(scripts) >= 10
    r = subprocess.run([sys.executable, "-c", _HELP_ALL, str(BENCHMARKS), *scripts],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    answers = r.stdout.split("\n")[:-1]
    assert answers == [f"{Path(s).name} 0 True" for s in scripts], r.stdout
