"""What a new user stumbles on in the first hour (issue 12): each point that changed behaviour,
run through the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, imported_by_cli, ok, stop_fit_at

GEN = ["generate", "-n", "40", "--face-size", "8x8", "--size", "12x16", "--noise", "20", "-q"]
FIT = ["--face-size", "8x8"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def one_error(r, code: int) -> str:
    assert r.exit_code == code, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


@pytest.fixture
def data():
    ok(*GEN, "-o", "data")
    return "data"


def interrupted_fit(monkeypatch, out: str, *options: str) -> None:
    """fit with ``options``, stopped by SIGINT after 2 iterations: its checkpoint is in
    ``out``."""
    with stop_fit_at(monkeypatch, 2):
        r = cli("fit", "data", *FIT, "-o", out, "--tol", "-1", "--max-iter", 6, *options)
    assert r.exit_code == 130 and "interrupted after iteration 2" in r.stderr


def test_an_unquoted_pattern_leads_with_the_fix(tmp_path):
    files = [f"f{k:03d}.png" for k in range(300)]
    r = cli("fit", *files, *FIT, "-o", "run")
    line = one_error(r, 2)
    assert line.startswith("Error: quote glob patterns, e.g. 'imgs/*.png': the shell gave 299")
    assert "f001.png, f002.png, f003.png and 296 more" in line and len(line) < 200


def test_a_negative_tolerance_runs_max_iter_without_advice(data):
    r = ok("fit", data, *FIT, "-o", "run", "--tol", "-1", "--max-iter", 4, "--no-plots")
    assert "warning" not in r.stderr and "--max-iter" not in r.stderr
    assert "ran 4 iterations in" in r.stderr
    with np.load("run/result.npz") as z:
        assert int(z["n_iter"]) == 4
    assert "0orless:run--max-iter" in "".join(cli("fit", "--help").output.split())


def test_restarts_are_numbered_one_way(data):
    r = ok("fit", data, *FIT, "-o", "run", "--restarts", 3, "--init", "random", "--json",
           "--no-plots")  # fmt: skip
    best = json.loads(r.stdout)["best_restart"]
    assert f"kept restart {best + 1} of 3 (best_restart {best} in --json and result.npz" in r.stderr
    # the iterations are the kept restart's, the time all three restarts'
    assert "iterations (the kept restart) in " in r.stderr and " s (all 3 restarts)" in r.stderr
    with np.load("run/result.npz") as z:
        assert int(z["best_restart"]) == best


def test_a_resumed_fit_reports_its_whole_time(data, monkeypatch):
    interrupted_fit(monkeypatch, "run")
    r = ok("fit", "--resume", "run", "--json")
    summary = json.loads(r.stdout)
    with np.load("run/result.npz") as z:  # the restarts' times as history.csv has them
        assert summary["history_seconds"] == pytest.approx(
            np.nanmax(z["restart_seconds"]), abs=1e-3
        )
    assert "since --resume (" in r.stderr and "of EM in all, as history.csv has it" in r.stderr


def test_dead_ends_point_the_way(data, monkeypatch):
    interrupted_fit(monkeypatch, "r3")
    line = one_error(cli("fit", data, *FIT, "-o", "r3"), 1)
    assert "r3: holds an interrupted fit" in line and "fit --resume r3" in line
    line = one_error(cli("plot-elbo", "r3", "-o", "e.png"), 1)
    assert "interrupted fit" in line and "fit --resume r3" in line
    ok("fit", "--resume", "r3")
    line = one_error(cli("fit", "--resume", "r3"), 1)
    assert "the fit is complete (result.npz): nothing to resume" in line


def test_a_file_name_is_not_taken_for_a_folder(data):
    line = one_error(cli("fit", data, *FIT, "-o", "out.npz"), 2)
    assert "fit writes a folder" in line and "without .npz" in line
    assert not os.path.exists("out.npz")


def test_the_input_itself_is_named_as_such(data):
    ok("fit", data, *FIT, "-o", "run", "--no-plots")
    line = one_error(cli("fit", data, *FIT, "-o", data, "--overwrite", "--no-plots"), 1)
    end = "is an input of this command; refusing to replace it, even with --overwrite"
    assert line == f"Error: {data}: {end}"


def test_the_truth_of_generated_data_is_recognised(data):
    r = ok("fit", data, *FIT, "-o", "run", "--max-iter", 2, "--no-plots")
    assert "non-image" not in r.stderr
    assert f"fit --truth {Path(data) / 'truth.npz'}" in r.stderr
    truth = Path(data) / "truth.npz"
    r = ok("fit", data, *FIT, "-o", "run2", "--max-iter", 2, "--truth", truth, "--no-plots")
    assert "truth.npz" not in r.stderr.replace("--truth", "")


def test_verbose_fit_says_more(data):
    quiet = ok("fit", data, *FIT, "-o", "a", "--max-iter", 3, "--no-plots")
    loud = ok("fit", data, *FIT, "-o", "b", "--max-iter", 3, "-v", "--no-plots")
    lines = [line for line in loud.stderr.splitlines() if ", iteration " in line]
    assert len(lines) == 3 and "ELBO" in lines[0] and "noise std" in lines[0]
    assert len(loud.stderr.splitlines()) > len(quiet.stderr.splitlines())


def test_no_plots_skips_matplotlib_and_the_two_plots(data, monkeypatch):
    """Start-up (point 11): matplotlib is most of what a small fit spends outside EM; batches
    of small fits can skip the two plots, and a resumed fit keeps the choice."""
    for out, option, imported in (
        ("quick", "--no-plots", set()),
        ("full", "--plots", {"matplotlib"}),
    ):
        args = ["fit", "data", *FIT, "-o", out, "-q", option]
        assert imported_by_cli(*args, among={"matplotlib"}) == imported
    plots = {"prior.png", "elbo.png"}
    assert not plots & set(os.listdir("quick"))
    assert {"result.npz", "face.png", "background.png", "history.csv", "positions.csv"} <= set(
        os.listdir("quick")
    )
    assert plots <= set(os.listdir("full"))
    ok("plot-elbo", "quick", "-o", "later.png")  # the curve, drawn later
    assert Path("later.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    interrupted_fit(monkeypatch, "r", "--no-plots")
    line = one_error(cli("fit", "--resume", "r", "--no-plots"), 2)
    assert "drop --no-plots" in line  # the option as given, not its other half
    ok("fit", "--resume", "r")
    assert not plots & set(os.listdir("r"))
    assert "result.npz" in os.listdir("r")


def test_commands_that_transform_nothing_leave_scipy_unimported(data):
    """Start-up: importing scipy.fft is about 0.4 s, two thirds of the command line's own.
    --help, --version and plot-elbo never transform anything and skip it; a fit does not."""
    ok("fit", "data", *FIT, "-o", "run", "-q", "--no-plots")
    for args in (["--version"], ["fit", "--help"], ["plot-elbo", "run", "-o", "elbo.png"]):
        assert imported_by_cli(*args, among={"scipy"}) == set(), args
    assert imported_by_cli("fit", "data", *FIT, "-o", "again", "-q", "--no-plots",
                           among={"scipy"}) == {"scipy"}  # fmt: skip


def test_a_checkpoint_from_before_no_plots_resumes_with_plots(data, monkeypatch):
    interrupted_fit(monkeypatch, "old")
    with np.load("old/checkpoint.npz") as z:
        arrays = dict(z)
    settings = json.loads(str(arrays["settings"]))
    assert settings.pop("plots") is True
    arrays["settings"] = np.array(json.dumps(settings))
    with open("old/checkpoint.npz", "wb") as f:
        np.savez(f, **arrays)
    ok("fit", "--resume", "old")
    assert {"prior.png", "elbo.png"} <= set(os.listdir("old"))


TOL_WORDS = "must be a number other than nan or +inf (0 or less: no tolerance)"


def test_counts_and_tolerances_that_make_no_sense_are_refused(data):
    """A mistyped --restarts ran on without a word (each restart is a whole fit); --tol inf
    stopped at once and called it converged. Both are refused, naming the option; the
    engine refuses more than MAX_RESTARTS restarts too."""
    from facefinder_cli import engine

    for option, value, needle in (
        ("--restarts", "99999999999999999999", "a number of restarts from 1 to 1000, or auto"),
        ("--restarts", "1001", "a number of restarts from 1 to 1000, or auto"),
        ("--restarts", "0", "a number of restarts from 1 to 1000, or auto"),
        ("--restarts", "Autom", "a number of restarts from 1 to 1000, or auto"),
        ("--tol", "inf", f"{TOL_WORDS}, not 'inf'"),
        ("--tol", "nan", f"{TOL_WORDS}, not 'nan'"),
    ):
        r = cli("fit", data, *FIT, "-o", "run", option, value)
        line = one_error(r, 2)
        assert f"Invalid value for '{option}'" in line and needle in line, line
        assert not os.path.exists("run")
    # -0 is 0 (generate's noise std of -0 failed in NumPy's words, "scale < 0")
    ok("generate", "-n", "3", "--face-size", "8x8", "--size", "12x16", "--noise", "-0", "-o",
       "flat", "-q")  # fmt: skip
    with np.load("flat/truth.npz") as truth:
        assert truth["noise_std"] == 0 and not np.signbit(truth["noise_std"])
    with pytest.raises(ValueError, match="restarts must be at most 1000, got 1001"):
        engine.FitSettings((3, 3), restarts=1001)
    assert engine.FitSettings((3, 3), restarts=1000).restarts == 1000


def test_small_wording_an_8x8_face_one_other_file_and_a_whole_percentage(tmp_path, monkeypatch):
    """A review's wording: "fitting a 8x8 face", "the other 1 files", "(1e+02%)"."""
    from helpers import cli, ok

    monkeypatch.chdir(tmp_path)
    r = ok("generate", "-n", 4, "--size", "12x12", "--face-size", "8x8", "--noise", 1e6,
           "--format", "png", "-o", "d")  # fmt: skip
    share = r.stderr.split("pixel values (")[1].split("%)")[0]
    assert "e" not in share and float(share) > 99.5, r.stderr  # (before: "1e+02")
    r = ok("fit", "d", "--face-size", "8x8", "-o", "run", "--no-plots", "--max-iter", 2)
    assert "fitting an 8x8 face in 4 images" in r.stderr
    r = ok("fit", "d", "--face-size", "7x7", "-o", "run7", "--no-plots", "--max-iter", 2)
    assert "fitting a 7x7 face" in r.stderr
    os.mkdir("bad")
    for name in ("a.png", "b.png"):
        (tmp_path / "bad" / name).write_bytes(b"not a png")
    r = cli("fit", "bad", "--face-size", "8x8", "-o", "run2", "--skip-unreadable")
    assert "and the other 1 file: none is readable" in r.stderr, r.stderr


def test_outputs_and_resume_paths_a_review_found_odd(tmp_path, monkeypatch):
    """`generate -o data.mat` made a folder named data.mat; `fit --resume run/result.npz` got
    Click's "Directory ... is a file"; `plot-elbo -o -` wrote a PNG to a terminal, where
    `fit -o -` refuses."""
    import subprocess
    import sys

    from helpers import cli, ok

    monkeypatch.chdir(tmp_path)
    r = cli("generate", "-n", 3, "--size", "12x12", "--face-size", "6x6", "-o", "data.mat")
    assert r.exit_code == 2 and "give a folder name without .mat" in r.stderr, r.stderr
    assert not os.path.exists("data.mat")
    ok("generate", "-n", 12, "--size", "12x12", "--face-size", "6x6", "-o", "d")
    ok("fit", "d", "--face-size", "6x6", "-o", "run", "--no-plots")
    r = cli("fit", "--resume", "run/result.npz")
    assert r.exit_code == 2 and "give the run folder that holds the fit's checkpoint" in r.stderr
    main, tty = os.openpty()  # plot-elbo's stdout a terminal
    try:
        done = subprocess.run(
            [sys.executable, "-m", "facefinder_cli", "plot-elbo", "run", "-o", "-"],
            stdout=tty, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(tty)
        os.close(main)
    assert done.returncode == 2 and "which is a terminal: pipe it" in done.stderr, done.stderr


def test_generate_refuses_a_size_beyond_the_memory_before_trying(tmp_path, monkeypatch):
    """A review: `generate --size 100000x100000` said only "out of memory", after trying."""
    from helpers import cli

    from facefinder_cli.engine import machine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(machine, "_physical_memory", lambda: 16 * 2**30)  # (any machine)
    r = cli("generate", "-n", 5, "--size", "100000x100000", "-o", "g")
    assert r.exit_code == 2 and "5 images of 100000x100000 need 671 GiB" in r.stderr, r.stderr
    assert "more than this machine's 16 GiB" in r.stderr
    assert "ask for fewer (-n) or smaller (--size) images" in r.stderr
    assert not os.path.exists("g")


def test_a_start_the_fit_cannot_use_names_its_file():
    """--init-from's values are checked against the images by the engine: its error named
    no file (found in review)."""
    ok("generate", "-n", "12", "--face-size", "8x8", "--size", "12x16", "--noise", "1e-320",
       "-o", "t.npy", "-q")  # fmt: skip
    line = one_error(cli("fit", "t.npy", *FIT, "--init-from", "t.truth.npz", "-o", "r"), 1)
    assert line.endswith(
        "t.truth.npz: noise_std 1e-320 is out of the range the fit can compute with"
    )
    assert not os.path.exists("r/result.npz")


def test_one_image_and_an_empty_pack_target_read_well(data):
    """ "fitted to 1 images" and "Error: : pack writes a .npy file..." (found in review)."""
    ok("generate", "-n", "1", "--face-size", "8x8", "--size", "12x16", "-o", "one", "-q")
    r = ok("fit", "one", *FIT, "-o", "r1", "--no-plots")
    assert "was fitted to 1 image (" in r.stderr, r.stderr
    line = one_error(cli("pack", data, ""), 2)
    assert "Invalid value for 'STACK.npy|STACK.zarr': must not be empty" in line, line


def test_a_guessed_layout_is_said_with_q_too():
    """A (60, 80, 50) stack saved as (H, W, K) was fitted as 60 images of 80x50 with -q in
    silence, exit 0 (found in review): the guess of the axes is a warning, which -q keeps."""
    np.save("s.npy", np.random.default_rng(0).normal(100, 20, (60, 80, 50)))
    r = ok("fit", "s.npy", "--face-size", "14x12", "-o", "r", "-q", "--max-iter", 1,
           "--no-plots", "--restarts", 1)  # fmt: skip
    assert r.stderr.splitlines()[0] == (
        "warning: read s.npy as 60 images of 80x50 (K, H, W); pass --layout hwk if the images "
        "are along the last axis"
    )
    r = ok("fit", "s.npy", "--face-size", "14x12", "-o", "r2", "-q", "--max-iter", 1,
           "--no-plots", "--restarts", 1, "--layout", "khw")  # fmt: skip
    assert "read s.npy" not in r.stderr  # said as the user says it: nothing to warn of


def test_notes_that_fit_the_command(data):
    """detect said "(fit --truth ... measures the fit against it)" of a generated folder's
    truth.npz, and a (1, H, W) stack was "read as 1 images ... pass --layout hwk" (found in
    review)."""
    ok("fit", data, *FIT, "-o", "run", "-q", "--no-plots", "--max-iter", 2)
    r = ok("detect", "run", data, "-o", "p.csv")
    assert "note: not read: truth.npz, the truth of data made by facefinder generate\n" in (
        r.stderr
    )
    assert "--truth" not in r.stderr
    r = ok("fit", data, *FIT, "-o", "run2", "--no-plots", "--max-iter", 2)
    assert "--truth data/truth.npz measures the fit against it)" in r.stderr  # (fit: said)
    np.save("one.npy", np.full((1, 12, 16), 100.0))
    r = ok("detect", "run", "one.npy", "-o", "q.csv")
    assert "read one.npy" not in r.stderr and "located the face in 1 image " in r.stderr
    np.save("two.npy", np.full((2, 12, 16), 100.0))
    r = ok("detect", "run", "two.npy", "-o", "t.csv")
    assert "warning: read two.npy as 2 images of 12x16 (K, H, W)" in r.stderr


def test_stacks_facefinder_wrote_need_no_layout_warning():
    """The layout warning fired with -q on generate's own .npy (found in review): a stack
    that generate or pack wrote, as it left it, is (K, H, W) whatever its shape; a copy of
    it, which no record vouches for, still gets the warning."""
    ok("generate", "-n", "30", "--face-size", "8x8", "--size", "12x16", "-o", "s.npy", "-q")
    ok("pack", "s.npy", "p.npy", "-q")
    for name in ("s.npy", "p.npy"):
        r = ok("fit", name, "--face-size", "8x8", "-o", f"r-{name[0]}", "-q", "--no-plots",
               "--max-iter", 1, "--restarts", 1, "--tol", "-1")  # fmt: skip
        assert r.stderr == "", r.stderr
    Path("c.npy").write_bytes(Path("s.npy").read_bytes())
    r = ok("fit", "c.npy", "--face-size", "8x8", "-o", "r-c", "-q", "--no-plots",
           "--max-iter", 1, "--restarts", 1, "--tol", "-1")  # fmt: skip
    assert r.stderr.startswith("warning: read c.npy as 30 images of 12x16 (K, H, W)")
