"""Tests of the ``facefinder`` command line (facefinder_cli.cli), end to end through Click.

Every command is run with ``click.testing.CliRunner`` (stdout and stderr separate), and what it
wrote is read back from disk and checked. The data are small synthetic sets (a 16x12 face in
24x32 images) so the whole file runs in a few seconds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image

from facefinder_cli import __version__, engine, synthetic
from facefinder_cli.cli import main
from facefinder_cli.images import NpyReader, natural_sort_key
from facefinder_cli.runs import ERROR_COLUMNS, load_run, view_zoom

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "noisy"

FACE = (16, 12)
SIZE = (24, 32)
N = 60
NOISE = 30.0
N_POS = (SIZE[0] - FACE[0] + 1, SIZE[1] - FACE[1] + 1)  # (9, 21)
GEN = ["--face-size", "16x12", "--size", "24x32", "-n", str(N), "--noise", str(NOISE)]
RUN_FILES = {
    ".facefinder",  # the marker: this folder is a run (outputs.MARKER)
    "result.npz",
    "face.png",
    "background.png",
    "prior.png",
    "elbo.png",
    "history.csv",
    "positions.csv",
}
JSON_KEYS = {
    "n_images",
    "image_size",
    "face_size",
    "method",
    "init",
    "restarts",
    "restarts_asked",
    "best_restart",
    "n_iter",
    "accelerated",
    "passes",
    "converged",
    "seconds",
    "history_seconds",
    "noise_std",
    "log_likelihood",
    "log_likelihood_per_pixel",
    "elbo",
    "seed_entropy",
    "unidentified_background_pixels",
    "mean_position_probability",
    "out",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def cli(*args: object):
    """Run ``facefinder ARGS`` in-process; stdout and stderr are captured separately."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    # Every way out of the CLI is sys.exit; any other exception is a bug (a traceback for users).
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(*result.exc_info))
        command = " ".join(map(str, args))
        pytest.fail(f"facefinder {command} raised:\n{tb}\nstderr:\n{result.stderr}")
    return result


def ok(*args: object):
    result = cli(*args)
    assert result.exit_code == 0, (
        f"facefinder {' '.join(map(str, args))} exited {result.exit_code}\nstderr:\n{result.stderr}"
    )
    return result


def error_line(result, code: int, *needles: str) -> str:
    """Assert the command failed with ``code``, one line on stderr naming every needle, no
    traceback and nothing on stdout; return the line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def listing(folder: Path) -> set[str]:
    """Every path under ``folder`` (hidden ones included), relative."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def read_csv(path_or_text) -> list[dict[str, str]]:
    if isinstance(path_or_text, Path):
        path_or_text = path_or_text.read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(path_or_text)))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG; asserts it is exactly one well-formed PNG (nothing after)."""
    assert data.startswith(PNG_SIGNATURE)
    pos, types = len(PNG_SIGNATURE), []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        types.append(data[pos + 4 : pos + 8])
        pos += 12 + length
        if types[-1] == b"IEND":
            break
    assert types and types[-1] == b"IEND"
    assert pos == len(data), f"{len(data) - pos} bytes after the PNG's end"
    return types


def save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)).save(path)


def check_fit(run: Path, truth: dict[str, np.ndarray], min_corr: float = 0.9) -> dict:
    """The run folder is complete and its face matches the truth; returns result.npz."""
    assert RUN_FILES <= set(os.listdir(run))
    res = load_npz(run / "result.npz")
    assert res["face"].shape == truth["face"].shape
    assert corr(res["face"], truth["face"]) >= min_corr
    return res


# ---------------------------------------------------------------------------------------------
# shared data: made once per module by the CLI itself (read-only for the tests)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own empty folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def data(shared) -> Path:
    """A generated folder: 60 TIFF images of 24x32 with a 16x12 face, and truth.npz."""
    out = shared / "data"
    ok("generate", *GEN, "--seed", 0, "-o", out)
    return out


@pytest.fixture(scope="module")
def truth(data) -> dict[str, np.ndarray]:
    return load_npz(data / "truth.npz")


@pytest.fixture(scope="module")
def stack(data) -> np.ndarray:
    """The images of ``data`` as a (K, H, W) array, in file order."""
    files = sorted((f for f in os.listdir(data) if f.endswith(".tif")), key=natural_sort_key)
    return np.stack([iio.imread(data / f) for f in files])


@pytest.fixture(scope="module")
def fitted(shared, data):
    """A soft-EM run of ``data`` with --truth; returns (run folder, CliRunner result)."""
    run = shared / "run"
    result = ok("fit", data, "--face-size", "16x12", "--truth", data / "truth.npz", "-o", run)
    return run, result


@pytest.fixture(scope="module")
def hard_run(shared, data) -> Path:
    run = shared / "hard"
    ok("fit", data, "--face-size", "16x12", "--method", "hard", "-o", run)
    return run


@pytest.fixture(scope="module")
def npy(shared, stack) -> Path:
    """The same images as a (K, H, W) .npy stack (no other file next to it)."""
    path = shared / "stack.npy"
    np.save(path, stack)
    return path


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def test_generate_folder_writes_exact_float_tiffs_and_the_truth(data, truth, stack):
    files = sorted(os.listdir(data), key=natural_sort_key)
    assert files == [".facefinder"] + [f"img{k:02d}.tif" for k in range(1, N + 1)] + ["truth.npz"]
    first = iio.imread(data / files[1])
    assert first.dtype == np.float32 and first.shape == SIZE

    assert set(truth) >= {"face", "background", "noise_std", "prior", "positions"}
    assert truth["face"].shape == FACE
    assert truth["background"].shape == SIZE
    assert float(truth["noise_std"]) == NOISE
    assert truth["prior"].shape == N_POS
    assert np.isclose(truth["prior"].sum(), 1.0)
    assert np.allclose(truth["prior"], truth["prior"].flat[0])  # uniform by default
    pos = truth["positions"]
    assert pos.shape == (N, 2) and pos.dtype.kind in "iu"
    assert (pos >= 0).all() and (pos < np.array(N_POS)).all()

    # The images are exactly the truth drawn again with the same seed (float32 kept as is).
    again = synthetic.make_dataset(
        truth["face"], truth["background"], N, NOISE, seed=0, dtype=np.float32
    )
    np.testing.assert_array_equal(again.positions, pos)
    np.testing.assert_array_equal(stack, again.images)
    # and the residual is the noise
    clean = np.stack([synthetic.paste(truth["background"], truth["face"], p) for p in pos])
    assert abs(np.std(stack - clean) - NOISE) < 0.05 * NOISE


def test_generate_tiff_keeps_values_outside_0_255():
    ok("generate", "--face-size", "16x12", "--size", "24x32", "-n", 4, "--noise", 300, "-o", "d")
    imgs = np.stack([iio.imread(f"d/img{k}.tif") for k in range(1, 5)])
    assert imgs.dtype == np.float32
    assert (imgs < 0).any() and (imgs > 255).any()
    assert not np.array_equal(imgs, np.rint(imgs))  # not rounded either


def test_generate_png_warns_about_clipping_and_writes_8bit():
    r = ok(
        "generate",
        "--face-size",
        "16x12",
        "--size",
        "24x32",
        "-n",
        4,
        "--noise",
        300,
        "--format",
        "png",
        "--seed",
        3,
        "-o",
        "d",
    )
    assert "clipped" in r.stderr
    assert r.stdout == ""
    listed = sorted(os.listdir("d"))
    assert listed == [".facefinder", "img1.png", "img2.png", "img3.png", "img4.png", "truth.npz"]
    truth = load_npz(Path("d/truth.npz"))
    exact = synthetic.make_dataset(
        truth["face"], truth["background"], 4, 300.0, seed=3, dtype=np.float32
    ).images
    for k in range(4):
        img = iio.imread(f"d/img{k + 1}.png")
        assert img.dtype == np.uint8 and img.shape == SIZE
        expected = np.clip(np.rint(exact[k].astype(np.float64)), 0, 255)
        assert np.abs(img - expected).max() <= 1
        assert (img == 0).any() and (img == 255).any()


def test_generate_png_without_clipping_does_not_warn():
    r = ok(
        "generate",
        "--face-size",
        "16x12",
        "--size",
        "24x32",
        "-n",
        3,
        "--noise",
        0,
        "--format",
        "png",
        "-o",
        "d",
    )
    assert "clipped" not in r.stderr


@pytest.mark.parametrize("ext", ["npz", "npy"])
def test_generate_stack_file_with_truth_beside(ext):
    r = ok("generate", *GEN, "-o", f"set.{ext}")
    assert r.stdout == ""
    assert sorted(os.listdir(".")) == sorted(
        [f".set.{ext}.facefinder", f"set.{ext}", "set.truth.npz"]
    )
    if ext == "npy":
        arr = np.load(f"set.{ext}")
    else:
        arr = load_npz(Path(f"set.{ext}"))["images"]
    assert arr.shape == (N,) + SIZE
    truth = load_npz(Path("set.truth.npz"))
    assert {k: truth[k].shape for k in ("face", "background", "prior", "positions")} == {
        "face": FACE,
        "background": SIZE,
        "prior": N_POS,
        "positions": (N, 2),
    }
    assert truth["noise_std"].shape == ()


def test_generate_seed_reproducible():
    ok("generate", *GEN, "--seed", 7, "-o", "a.npy")
    ok("generate", *GEN, "--seed", 7, "-o", "b.npy")
    ok("generate", *GEN, "--seed", 8, "-o", "c.npy")
    a, b, c = (np.load(f"{x}.npy") for x in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(
        load_npz(Path("a.truth.npz"))["positions"], load_npz(Path("b.truth.npz"))["positions"]
    )


def test_generate_resizes_face_and_background():
    ok("generate", "--face-size", "10x7", "--size", "20x25", "-n", 5, "-o", "s.npy")
    assert np.load("s.npy").shape == (5, 20, 25)
    truth = load_npz(Path("s.truth.npz"))
    assert truth["face"].shape == (10, 7)
    assert truth["background"].shape == (20, 25)
    assert truth["prior"].shape == (11, 19)


def test_generate_default_sizes_are_the_bundled_sample():
    ok("generate", "-n", 2, "-o", "s.npy")
    assert np.load("s.npy").shape == (2, 72, 96)
    assert load_npz(Path("s.truth.npz"))["face"].shape == (40, 30)


def test_generate_centred_prior_clusters_positions():
    common = ["--face-size", "16x12", "--size", "24x32", "-n", 300, "--noise", 0]
    ok("generate", *common, "-o", "uniform.npy")
    ok("generate", *common, "--prior", "centred", "-o", "centred.npy")
    centre = (np.array(N_POS) - 1) / 2
    dist = {}
    for name in ("uniform", "centred"):
        truth = load_npz(Path(f"{name}.truth.npz"))
        dist[name] = np.linalg.norm(truth["positions"] - centre, axis=1).mean()
    assert dist["centred"] < 0.85 * dist["uniform"]
    prior = load_npz(Path("centred.truth.npz"))["prior"]
    assert np.unravel_index(np.argmax(prior), prior.shape) == (4, 10)


def test_generate_prior_from_npy_file():
    prior = np.zeros(N_POS)
    prior[3, 7] = 1.0
    np.save("onehot.npy", prior)
    ok(
        "generate",
        "--face-size",
        "16x12",
        "--size",
        "24x32",
        "-n",
        20,
        "--noise",
        0,
        "--prior",
        "onehot.npy",
        "-o",
        "s.npy",
    )
    truth = load_npz(Path("s.truth.npz"))
    assert (truth["positions"] == [3, 7]).all()
    np.testing.assert_array_equal(truth["prior"], prior)
    expected = synthetic.paste(truth["background"], truth["face"], (3, 7))
    imgs = np.load("s.npy")
    for img in imgs:  # no noise: every image is the face pasted at (3, 7)
        np.testing.assert_allclose(img, expected, atol=1e-4)


def test_generate_prior_of_wrong_shape_is_a_usage_error(tmp_path):
    np.save("bad.npy", np.full((5, 5), 1 / 25))
    before = listing(tmp_path)
    r = cli("generate", *GEN, "--prior", "bad.npy", "-o", "out")
    error_line(r, 2, "--prior", "(5, 5)", "(9, 21)")
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def test_fit_writes_a_complete_run(fitted, truth, data):
    run, result = fitted
    assert result.stdout == ""
    assert set(os.listdir(run)) == RUN_FILES
    res = check_fit(run, truth)
    assert res["background"].shape == SIZE
    assert res["prior"].shape == N_POS and np.isclose(res["prior"].sum(), 1)
    assert abs(float(res["noise_std"]) - NOISE) < 0.1 * NOISE
    assert str(res["method"]) == "soft"
    for name in ("face.png", "background.png", "prior.png"):
        img = iio.imread(run / name)
        assert img.dtype == np.uint8
    z = view_zoom(SIZE)
    assert iio.imread(run / "face.png").shape[:2] == (FACE[0] * z, FACE[1] * z)
    assert iio.imread(run / "background.png").shape[:2] == (SIZE[0] * z, SIZE[1] * z)
    assert iio.imread(run / "elbo.png").shape[2] in (3, 4)  # the ELBO curve, in colour
    assert iio.imread(run / "prior.png").shape[2] in (3, 4)  # a figure, with axes and a bar
    settings = json.loads(str(res["settings"]))
    assert settings["face_shape"] == list(FACE) and settings["method"] == "soft"
    assert settings["input_path"] == os.path.abspath(data) and len(res["positions"]) == N


def test_fit_history_csv(fitted):
    run, _ = fitted
    res = load_npz(run / "result.npz")
    rows = read_csv(run / "history.csv")
    n_iter = int(res["n_iter"])
    assert n_iter >= 1
    assert len(rows) == n_iter + 1
    assert [int(r["iteration"]) for r in rows] == list(range(n_iter + 1))
    elbo = np.array([float(r["elbo"]) for r in rows])
    np.testing.assert_allclose(elbo, res["elbo"])
    assert (np.diff(elbo) >= -1e-9 * np.abs(elbo[:-1])).all(), "soft EM's ELBO went down"
    ll = np.array([float(r["log_likelihood"]) for r in rows])
    assert (elbo <= ll + 1e-6 * np.abs(ll)).all()  # a lower bound
    assert all(int(r["n_values"]) == N * SIZE[0] * SIZE[1] for r in rows)


def test_fit_positions_csv_and_truth_columns(fitted, truth):
    run, result = fitted
    rows = read_csv(run / "positions.csv")
    assert list(rows[0]) == ["image", "row", "column", "probability"]
    assert [r["image"] for r in rows] == [f"img{k:02d}.tif" for k in range(1, N + 1)]
    found = np.array([[int(r["row"]), int(r["column"])] for r in rows])
    assert (found == truth["positions"]).all(axis=1).mean() >= 0.95
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)

    history = read_csv(run / "history.csv")
    assert list(history[0])[-5:] == list(ERROR_COLUMNS)
    assert float(history[-1]["positions_right"]) >= 0.9
    assert float(history[-1]["face_rmse"]) < float(history[0]["face_rmse"])
    assert "positions right" in result.stderr


def test_fit_truth_errors_survive_an_interruption(data, monkeypatch):
    """The errors against the truth are kept in the checkpoint that Ctrl-C saves: the resumed
    fit's history has the errors of the fit never stopped, bit for bit."""
    from helpers import stop_fit_at

    args = ["--face-size", "16x12", "--truth", data / "truth.npz", "--tol", "-1", "--max-iter", 4]
    args += ["--restarts", 2]
    ok("fit", data, *args, "-o", "whole", "--no-plots")
    with stop_fit_at(monkeypatch, 2):  # in the first restart
        r = cli("fit", data, *args, "-o", "cut", "--no-plots")
    assert r.exit_code == 130 and "saved in cut" in r.stderr
    # stopped again before the resumed fit's first report: its checkpoint kept, and said so
    # (found by review: "nothing was written", with the checkpoint there all the same)
    saved = Path("cut/checkpoint.npz").read_bytes()
    from facefinder_cli.engine import loop
    from facefinder_cli.interrupts import Interrupted

    def stopped(*a, **kw):
        raise Interrupted(signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(loop, "_iterate", stopped)
        r = cli("fit", "--resume", "cut")
    assert r.exit_code == 130 and "interrupted after iteration 2 of restart 1 of 2" in r.stderr
    assert Path("cut/checkpoint.npz").read_bytes() == saved
    ok("fit", "--resume", "cut")
    whole, cut = load_run(Path("whole")), load_run(Path("cut"))
    assert set(cut.errors) == set(ERROR_COLUMNS) and len(cut.errors["face_rmse"]) == 5
    for name in ERROR_COLUMNS:
        np.testing.assert_array_equal(cut.errors[name], whole.errors[name], err_msg=name)


def test_fit_overwrite_interrupted_keeps_the_earlier_run(data, monkeypatch):
    """Ctrl-C during `fit --overwrite` over a finished run: the earlier run stays whole, the
    new fit's checkpoint goes in beside it, --resume finishes the new one and only then is
    the folder replaced (found by review: the first checkpoint replaced the whole run)."""
    from helpers import stop_fit_at

    args = ["--face-size", "16x12", "--tol", "-1", "--max-iter", 4, "--no-plots"]
    ok("fit", data, *args, "-o", "run")
    old = {p.name: p.read_bytes() for p in Path("run").iterdir()}
    ok("fit", data, *args, "--seed", 3, "-o", "whole")
    with stop_fit_at(monkeypatch, 2):
        r = cli("fit", data, *args, "--seed", 3, "-o", "run", "--overwrite")
    assert r.exit_code == 130 and "saved in run (beside the earlier run, whole until" in r.stderr
    beside = ("checkpoint.npz", ".facefinder")  # (the marker records the checkpoint too)
    assert {p.name: p.read_bytes() for p in Path("run").iterdir() if p.name not in beside} == {
        k: v for k, v in old.items() if k not in beside
    }
    error_line(cli("fit", data, *args, "-o", "run"), 1, "holds an interrupted fit", "--resume")
    ok("detect", "run", data, "-o", "found.csv")  # the earlier run, usable meanwhile
    ok("fit", "--resume", "run")
    assert not Path("run/checkpoint.npz").exists()
    resumed, whole = load_run(Path("run")), load_run(Path("whole"))
    np.testing.assert_array_equal(resumed.params.face, whole.params.face)
    np.testing.assert_array_equal(resumed.elbo, whole.elbo)


@pytest.mark.parametrize("when", ["between checkpoints", "before the install"])
def test_a_folder_moved_onto_a_running_fits_output_is_kept(data, monkeypatch, when):
    """A finished run moved onto the output's name while a fit ran (its own folder moved
    away) was replaced, without --overwrite, by later checkpoints and the new run (found by
    review). The fit stops with one line and the folder there is kept as it is."""
    from facefinder_cli import engine

    args = ["--face-size", "16x12", "--tol", "-1", "--max-iter", 4, "--no-plots"]
    ok("fit", data, *args, "-o", "other")
    theirs = {p.name: p.read_bytes() for p in Path("other").iterdir()}
    real = engine.fit
    at = 2 if when == "between checkpoints" else 4

    def swapping(*a, callback=None, **kw):
        def cb(progress):
            callback(progress)  # (saves the checkpoint of every iteration)
            if progress.iteration == at:
                os.rename("run", "moved")
                os.rename("other", "run")

        return real(*a, callback=cb, **kw)

    monkeypatch.setattr(engine, "fit", swapping)
    r = cli("fit", data, *args, "-o", "run", "--checkpoint-every", 1, "-q")
    error_line(r, 1, "run: the folder of this fit was moved away or replaced while it ran")
    assert {p.name: p.read_bytes() for p in Path("run").iterdir()} == theirs


@pytest.mark.parametrize("during", ["save_run", "save_checkpoint"])
def test_a_folder_moved_onto_the_output_while_it_is_written_is_kept(data, monkeypatch, during):
    """The moves of the test above, made while the run (or a checkpoint) is being written:
    a folder of the user's there was replaced, exit 0 (found by review)."""
    from facefinder_cli import runs

    args = ["--face-size", "16x12", "--tol", "-1", "--max-iter", 4, "--no-plots", "-q"]
    ok("fit", data, *args, "-o", "theirs")  # a finished run: replaceable, were it the fit's
    before = {p.name: p.read_bytes() for p in Path("theirs").iterdir()}
    real, calls = getattr(runs, during), []

    def swap(*a, **kw):
        calls.append(1)
        if len(calls) == (1 if during == "save_run" else 3):
            os.rename("run", "moved")
            os.rename("theirs", "run")
        return real(*a, **kw)

    monkeypatch.setattr(runs, during, swap)
    r = cli("fit", data, *args, "--seed", 7, "-o", "run", "--checkpoint-every", 1)
    error_line(r, 1, "run: ", "is kept")
    after = {p.name: p.read_bytes() for p in Path("run").iterdir()}
    beside = ("checkpoint.npz", ".facefinder")  # (the checkpoint, and its note in the marker)
    assert {k: v for k, v in after.items() if k not in beside} == {
        k: v for k, v in before.items() if k not in beside
    }


def test_fit_faces_refused_its_folder_keeps_the_fit_for_resume(data, monkeypatch):
    """As below, for several faces: it lost the finished fit (found by review)."""
    from facefinder_cli import runs

    real, calls = runs.save_checkpoint, []

    def adding(*a, **kw):
        real(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            Path("run/notes.txt").write_text("mine")

    monkeypatch.setattr(runs, "save_checkpoint", adding)
    args = ["--face-size", "16x12", "--faces", 2, "--restarts", 1, "--tol", "-1"]
    r = cli("fit", data, *args, "--max-iter", 4, "--no-plots", "-o", "run",
            "--checkpoint-every", 1, "-q")  # fmt: skip
    line = error_line(r, 1, "notes.txt", "the finished fit is kept in its checkpoint")
    assert "`facefinder fit --resume run` writes the run" in line
    monkeypatch.setattr(runs, "save_checkpoint", real)
    os.rename("run/notes.txt", "notes.txt")
    ok("fit", "--resume", "run")
    assert Path("run/result.npz").is_file()


def test_a_finished_fit_refused_its_folder_is_kept_for_resume(data, monkeypatch):
    """A file of the user's put into the run folder while the fit ran: the run is refused
    (rightly), and the finished fit was lost with it (found by review). Its last state is
    now saved in the checkpoint, and --resume writes the run once the file is gone."""
    from facefinder_cli import engine

    args = ["--face-size", "16x12", "--tol", "-1", "--max-iter", 4, "--no-plots"]
    ok("fit", data, *args, "-o", "whole")
    real = engine.fit

    def adding(*a, callback=None, **kw):
        def cb(progress):
            callback(progress)
            if progress.iteration == 2:
                Path("run/notes.txt").write_text("mine")

        return real(*a, callback=cb, **kw)

    monkeypatch.setattr(engine, "fit", adding)
    r = cli("fit", data, *args, "-o", "run", "--checkpoint-every", 1, "-q")
    line = error_line(r, 1, "notes.txt", "the finished fit is kept in its checkpoint")
    assert "`facefinder fit --resume run` writes the run" in line
    assert Path("run/notes.txt").read_text() == "mine"
    monkeypatch.setattr(engine, "fit", real)
    os.rename("run/notes.txt", "notes.txt")
    ok("fit", "--resume", "run")
    resumed, whole = load_run(Path("run")), load_run(Path("whole"))
    np.testing.assert_array_equal(resumed.params.face, whole.params.face)
    np.testing.assert_array_equal(resumed.elbo, whole.elbo)


def test_resume_puts_back_a_run_folder_a_kill_left_aside(data, monkeypatch):
    """SIGKILL between the two renames that put a folder in place leaves it aside: --resume
    said "no checkpoint.npz here"; it now puts the folder back first, as -o does."""
    from helpers import stop_fit_at

    args = ["--face-size", "16x12", "--tol", "-1", "--max-iter", 4, "--no-plots"]
    with stop_fit_at(monkeypatch, 2):
        assert cli("fit", data, *args, "-o", "cut").exit_code == 130
    os.rename("cut", ".cut.k1ll3d_0.facefinder.tmp.old")  # as a kill leaves it
    os.mkdir(".cut.abcdef12.facefinder.tmp")
    r = ok("fit", "--resume", "cut")
    assert "restored cut from .cut.k1ll3d_0.facefinder.tmp.old" in r.stderr
    assert Path("cut/result.npz").is_file() and sorted(os.listdir()) == ["cut"]


def test_a_checkpoint_that_cannot_be_saved_after_ctrl_c_says_so(data, monkeypatch):
    """Ctrl-C with the disk full: it said "interrupted before the first iteration: nothing
    was written" (the failed save's error was taken for the interrupt's clean-up)."""
    import errno

    from helpers import stop_fit_at

    from facefinder_cli import outputs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    args = ["--face-size", "16x12", "--tol", "-1", "--max-iter", 4, "--no-plots"]
    real = outputs._install
    with stop_fit_at(monkeypatch, 2), monkeypatch.context() as m:
        m.setattr(outputs, "_install", full)
        r = cli("fit", data, *args, "-o", "run")
    line = r.stderr.strip().splitlines()[-1]
    assert r.exit_code == 130, r.stderr
    assert "interrupted after iteration 2" in line and "could not be saved" in line
    assert "No space left on device" in line and not os.path.exists("run")
    # with an earlier checkpoint there: said to be still there, to resume from
    calls = []

    def full_at_the_last(tmp, p, *a, **kw):
        if p.endswith("checkpoint.npz"):  # (not the notes of it in the folder's marker)
            calls.append(1)
        return real(tmp, p, *a, **kw) if len(calls) <= 3 else full()  # (the saves of 1, 2, 3)

    with stop_fit_at(monkeypatch, 3), monkeypatch.context() as m:
        m.setattr(outputs, "_install", full_at_the_last)
        r = cli("fit", data, *args, "-o", "run2", "--checkpoint-every", 1)
    line = r.stderr.strip().splitlines()[-1]
    assert r.exit_code == 130 and "could not be saved" in line, r.stderr
    assert "the checkpoint of an earlier iteration is still in run2" in line
    ok("fit", "--resume", "run2")


def test_a_periodic_checkpoint_that_cannot_be_saved_says_the_earlier_one_is_there(
    data, monkeypatch
):
    """A full disk at the third of --checkpoint-every 1's saves: the error said only that
    checkpoint.npz could not be written; the checkpoint of iteration 2 is still there, and
    the line now says how to carry on from it."""
    import errno

    from facefinder_cli import outputs

    real, calls = outputs._install, []

    def full_at_the_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    args = ["--face-size", "16x12", "--tol", "-1", "--max-iter", 4, "--no-plots"]
    with monkeypatch.context() as m:
        m.setattr(outputs, "_install", full_at_the_third)
        r = cli("fit", data, *args, "-o", "run", "--checkpoint-every", 1)
    line = r.stderr.strip().splitlines()[-1]
    assert r.exit_code == 1 and "No space left on device" in line, r.stderr
    assert line.endswith("the checkpoint of an earlier iteration is still in run: `facefinder "
                         "fit --resume run` carries on from it"), line  # fmt: skip
    assert ok("fit", "--resume", "run").exit_code == 0 and Path("run/result.npz").is_file()


def test_fit_positions_follow_natural_order(tmp_path, stack, truth):
    os.mkdir("pngs")
    for k in range(N):  # names a1..a60: a plain sort would put a10 before a2
        save_png(tmp_path / "pngs" / f"a{k + 1}.png", stack[k])
    ok("fit", "pngs", "--face-size", "16x12", "-o", "run", "--no-plots")
    rows = read_csv(tmp_path / "run" / "positions.csv")
    assert [r["image"] for r in rows] == [f"a{k}.png" for k in range(1, N + 1)]
    found = np.array([[int(r["row"]), int(r["column"])] for r in rows])
    assert (found == truth["positions"]).all(axis=1).mean() >= 0.95


def test_fit_json_summary_is_all_of_stdout(data, truth):
    r = ok(
        "fit", data, "--face-size", "16x12", "--truth", data / "truth.npz", "--json", "-o", "run"
    )
    summary = json.loads(r.stdout)
    assert set(summary) >= JSON_KEYS
    assert set(summary) - JSON_KEYS == set(ERROR_COLUMNS)
    assert summary["n_images"] == N
    assert summary["image_size"] == list(SIZE) and summary["face_size"] == list(FACE)
    assert summary["method"] == "soft" and summary["restarts"] == 1
    assert summary["out"] == "run"
    assert summary["positions_right"] >= 0.9
    res = check_fit(Path("run"), truth)
    assert summary["n_iter"] == int(res["n_iter"])
    assert summary["noise_std"] == pytest.approx(float(res["noise_std"]))
    assert summary["elbo"] == pytest.approx(float(res["elbo"][-1]))


def test_fit_hard(hard_run, truth):
    res = check_fit(hard_run, truth)
    assert str(res["method"]) == "hard"
    probs = [float(r["probability"]) for r in read_csv(hard_run / "positions.csv")]
    assert len(probs) == N


def test_fit_restarts(data, truth):
    r = ok("fit", data, "--face-size", "16x12", "--restarts", 2, "--json", "-o", "run")
    res = check_fit(Path("run"), truth)
    assert res["restart_elbo"].shape[0] == 2
    assert len(res["restart_n_iter"]) == 2
    assert int(res["best_restart"]) in (0, 1)
    summary = json.loads(r.stdout)
    assert summary["restarts"] == 2
    best = int(res["best_restart"])
    n = int(res["restart_n_iter"][best]) + 1
    np.testing.assert_allclose(res["restart_elbo"][best, :n], res["elbo"])


def test_fit_max_iter_0(data):
    r = ok("fit", data, "--face-size", "16x12", "--max-iter", 0, "--json", "-o", "run")
    assert set(os.listdir("run")) == RUN_FILES
    res = load_npz(Path("run/result.npz"))
    assert int(res["n_iter"]) == 0
    assert len(read_csv(Path("run/history.csv"))) == 1
    assert len(read_csv(Path("run/positions.csv"))) == N
    assert json.loads(r.stdout)["n_iter"] == 0


def test_fit_warm_start_from_a_run(fitted, data, truth):
    run, _ = fitted
    converged = load_npz(run / "result.npz")
    assert bool(converged["converged"])
    ok("fit", data, "--init-from", run, "-o", "warm")  # no --face-size: taken from the run
    res = check_fit(Path("warm"), truth)
    assert res["face"].shape == FACE
    assert int(res["n_iter"]) <= 3  # a cycle holding the prior, then two below tol in a row
    np.testing.assert_allclose(res["face"], converged["face"], atol=1e-3 * NOISE)
    assert json.loads(str(res["settings"]))["init_from"] == str(run)
    # a result.npz works too
    ok("fit", data, "--init-from", run / "result.npz", "-o", "warm2")
    assert int(load_npz(Path("warm2/result.npz"))["n_iter"]) <= 3


def test_fit_warm_start_with_other_face_size_is_refused(fitted, npy):
    run, _ = fitted
    r = cli("fit", npy, "--init-from", run, "--face-size", "10x10", "-o", "warm")
    error_line(r, 2, "--init-from", "16x12", "10x10")
    assert not Path("warm").exists()


@pytest.mark.parametrize("kind", ["glob", "npz", "npy", "mat", "npy-hwk"])
def test_fit_input_kinds(kind, data, stack, truth, tmp_path):
    extra: list[str] = []
    if kind == "glob":
        source = f"{data}/img*.tif"
    elif kind == "npz":
        source = "s.npz"
        np.savez("s.npz", images=stack)
    elif kind == "npy":
        source = "s.npy"
        np.save(source, stack)
    elif kind == "mat":
        source = "s.mat"
        scipy.io.savemat(source, {"X": stack.transpose(1, 2, 0)})  # (H, W, K)
    else:
        source = "s.npy"
        np.save(source, stack.transpose(1, 2, 0))  # (24, 32, 60): auto would guess khw
        extra = ["--layout", "hwk"]
    ok("fit", source, "--face-size", "16x12", *extra, "-o", "run")
    check_fit(tmp_path / "run", truth)
    rows = read_csv(tmp_path / "run" / "positions.csv")
    assert len(rows) == N
    found = np.array([[int(r["row"]), int(r["column"])] for r in rows])
    assert (found == truth["positions"]).all(axis=1).mean() >= 0.95
    if kind == "glob":
        assert rows[0]["image"] == "img01.tif"
    elif kind != "mat":
        assert rows[0]["image"] == "s.np" + kind[2] + "[0]"


def test_fit_face_to_stdout_as_png(data, tmp_path):
    r = ok("fit", data, "--face-size", "16x12", "--zoom", 3, "-o", "-")
    out = r.stdout_bytes
    assert out.startswith(PNG_SIGNATURE)
    assert png_chunks(out).count(b"IHDR") == 1
    img = iio.imread(out)
    assert img.shape[:2] == (FACE[0] * 3, FACE[1] * 3)
    assert os.listdir(tmp_path) == []  # no run folder written
    assert PNG_SIGNATURE not in r.stderr_bytes


def test_fit_json_with_stdout_png_is_a_usage_error(data, tmp_path):
    r = cli("fit", data, "--face-size", "16x12", "--json", "-o", "-")
    error_line(r, 2, "--json")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# overwriting
# ---------------------------------------------------------------------------------------------


def test_fit_refuses_a_non_empty_folder_then_overwrites_it(data, tmp_path, truth):
    os.mkdir("run")
    Path("run/keep.txt").write_text("mine")
    r = cli("fit", data, "--face-size", "16x12", "-o", "run")
    error_line(r, 1, "run", "--overwrite")
    assert os.listdir("run") == ["keep.txt"]
    assert Path("run/keep.txt").read_text() == "mine"
    assert listing(tmp_path) == {"run", "run/keep.txt"}

    # Not an earlier run (no marker, no result.npz): refused even with --overwrite.
    r = cli("fit", data, "--face-size", "16x12", "-o", "run", "--overwrite")
    error_line(r, 1, "run", "files facefinder does not write there", "even with --overwrite")
    assert Path("run/keep.txt").read_text() == "mine"

    os.remove("run/keep.txt")
    ok("fit", data, "--face-size", "16x12", "-o", "run")
    ok("fit", data, "--face-size", "16x12", "-o", "run", "--overwrite", "--method", "hard")
    assert set(os.listdir("run")) == RUN_FILES
    with np.load("run/result.npz") as z:
        assert str(z["method"]) == "hard"
    check_fit(tmp_path / "run", truth)
    assert {p for p in os.listdir(tmp_path)} == {"run"}  # no temporary or backup folder left


def test_overwrite_never_replaces_an_input(data, tmp_path):
    ok("fit", data, "--face-size", "16x12", "-o", "run")
    before = sorted(os.listdir(data))
    # The output folder is the input folder.
    r = cli("fit", data, "--face-size", "16x12", "-o", data, "--overwrite")
    error_line(r, 1, str(data), "input")
    assert sorted(os.listdir(data)) == before
    # detect --draw into the model's folder.
    r = cli("detect", "run", data, "--draw", "run", "--overwrite")
    error_line(r, 1, "run", "input")
    assert set(os.listdir("run")) == RUN_FILES
    # detect's CSV over an image it reads.
    first = sorted(f for f in os.listdir(data) if not f.startswith("."))[0]
    r = cli("detect", "run", data, "-o", str(Path(data) / first), "--overwrite")
    error_line(r, 1, first, "input")
    assert sorted(os.listdir(data)) == before


def test_fit_into_an_empty_existing_folder(data, truth, tmp_path):
    os.mkdir("run")
    ok("fit", data, "--face-size", "16x12", "-o", "run")
    check_fit(tmp_path / "run", truth)


def test_plot_elbo_refuses_an_existing_file_then_overwrites_it(fitted):
    run, _ = fitted
    Path("elbo.png").write_bytes(b"old")
    r = cli("plot-elbo", run, "-o", "elbo.png")
    error_line(r, 1, "elbo.png", "--overwrite")
    assert Path("elbo.png").read_bytes() == b"old"
    # a file facefinder did not write is kept even with --overwrite: here a user's PNG
    Path("elbo.png").write_bytes(PNG_SIGNATURE + b"a photo of mine")
    r = cli("plot-elbo", run, "-o", "elbo.png", "--overwrite")
    error_line(r, 1, "elbo.png: not a file facefinder wrote", "move it away")
    assert Path("elbo.png").read_bytes() == PNG_SIGNATURE + b"a photo of mine"
    os.remove("elbo.png")
    for fmt in ("png", "svg", "pdf"):  # its own plots it replaces, in every format
        ok("plot-elbo", run, "-o", f"elbo.{fmt}")
        ok("plot-elbo", run, "-o", f"elbo.{fmt}", "--overwrite", "--title", "again")
    assert Path("elbo.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(os.listdir(".")) == ["elbo.pdf", "elbo.png", "elbo.svg"]


def test_detect_refuses_an_existing_file_then_overwrites_it(fitted, npy):
    run, _ = fitted
    Path("pos.csv").write_text("old")
    r = cli("detect", run, npy, "-o", "pos.csv")
    error_line(r, 1, "pos.csv", "--overwrite")
    assert Path("pos.csv").read_text() == "old"
    r = cli("detect", run, npy, "-o", "pos.csv", "--overwrite")  # not detect's: kept
    error_line(r, 1, "pos.csv: not a file facefinder wrote", "move it away")
    assert Path("pos.csv").read_text() == "old"
    os.remove("pos.csv")
    ok("detect", run, npy, "-o", "pos.csv")
    ok("detect", run, npy, "-o", "pos.csv", "--overwrite")  # detect's own, as it left it
    assert len(read_csv(Path("pos.csv"))) == N
    assert sorted(os.listdir(".")) == [".pos.csv.facefinder", "pos.csv"]  # (and its record)
    edited = Path("pos.csv").read_text().splitlines()[0] + "\nhand-labelled,1,2,3\n"
    Path("pos.csv").write_text(edited)  # the user's now, though it keeps detect's header
    r = cli("detect", run, npy, "-o", "pos.csv", "--overwrite")
    error_line(r, 1, "pos.csv: not a file facefinder wrote", "move it away")
    assert Path("pos.csv").read_text() == edited


def test_detect_refuses_a_non_empty_draw_folder(fitted, npy, tmp_path):
    run, _ = fitted
    os.mkdir("boxed")
    Path("boxed/keep.txt").write_text("mine")
    r = cli("detect", run, npy, "--draw", "boxed", "-o", "pos.csv")
    error_line(r, 1, "boxed", "--overwrite")
    assert listing(tmp_path) == {"boxed", "boxed/keep.txt"}


# ---------------------------------------------------------------------------------------------
# plot-elbo
# ---------------------------------------------------------------------------------------------


def test_plot_elbo_from_a_run_folder_png(fitted):
    run, _ = fitted
    r = ok("plot-elbo", run, "-o", "elbo.png")
    assert r.stdout == ""
    img = iio.imread("elbo.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 2  # something is drawn


def test_plot_elbo_from_result_npz_svg(fitted):
    run, _ = fitted
    ok("plot-elbo", run / "result.npz", "-o", "elbo.svg")
    text = Path("elbo.svg").read_text(encoding="utf-8")
    assert text.startswith("<?xml") or "<svg" in text


def test_plot_elbo_from_history_csv_pdf(fitted):
    run, _ = fitted
    ok("plot-elbo", run / "history.csv", "-o", "elbo.pdf")
    assert Path("elbo.pdf").read_bytes().startswith(b"%PDF")


def test_plot_elbo_several_runs_with_labels(fitted, hard_run):
    run, _ = fitted
    ok(
        "plot-elbo",
        run,
        hard_run,
        "-l",
        "softLBL",
        "--label",
        "hardLBL",
        "--x",
        "seconds",
        "--per-pixel",
        "--title",
        "TitleTXT",
        "-o",
        "c.svg",
    )
    text = Path("c.svg").read_text(encoding="utf-8")
    assert "<svg" in text
    for word in ("softLBL", "hardLBL", "TitleTXT"):  # matplotlib keeps text in comments
        assert word in text


@pytest.mark.parametrize(
    "options, ylabel",
    [
        ([], "ELBO  L(q, θ) (nats)"),
        (["--gap"], "best − ELBO (nats)"),
        (["--quantity", "log-likelihood"], "log-likelihood  log p(X | θ) (nats)"),
        (
            ["--quantity", "log-likelihood", "--gap", "--per-pixel"],
            "best − log-likelihood (nats per image and pixel)",
        ),
    ],
)
def test_plot_elbo_options(fitted, hard_run, options, ylabel):
    run, _ = fitted
    ok("plot-elbo", run, hard_run, *options, "-o", "f.svg")
    text = Path("f.svg").read_text(encoding="utf-8")  # matplotlib keeps text in comments
    assert ylabel in text
    assert ("at the best (gap 0)" in text) == ("--gap" in options)
    ok("plot-elbo", run, hard_run, *options, "-o", "f.png")
    assert iio.imread("f.png").ndim == 3


def test_plot_elbo_png_to_stdout(fitted, tmp_path):
    run, _ = fitted
    r = ok("plot-elbo", run, "-o", "-")
    png_chunks(r.stdout_bytes)
    assert iio.imread(r.stdout_bytes).ndim == 3
    assert os.listdir(tmp_path) == []


def test_plot_elbo_bad_extension(fitted, tmp_path):
    run, _ = fitted
    r = cli("plot-elbo", run, "-o", "elbo.jpg")
    error_line(r, 2, "--out", "elbo.jpg")
    assert os.listdir(tmp_path) == []


def test_plot_elbo_label_count_mismatch(fitted, hard_run, tmp_path):
    run, _ = fitted
    r = cli("plot-elbo", run, hard_run, "-l", "only one", "-o", "elbo.png")
    error_line(r, 2, "--label")
    assert "1 label for 2 runs" in r.stderr  # (it said "1 labels")
    assert os.listdir(tmp_path) == []


def test_plot_elbo_missing_run(tmp_path):
    r = cli("plot-elbo", "nowhere", "-o", "elbo.png")
    error_line(r, 1, "nowhere")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# detect
# ---------------------------------------------------------------------------------------------


def test_detect_prints_positions_csv(fitted, data, truth):
    run, _ = fitted
    r = ok("detect", run, data)
    rows = read_csv(r.stdout)
    assert r.stdout.splitlines()[0] == "image,row,column,probability"
    assert len(rows) == N
    assert [x["image"] for x in rows] == [f"img{k:02d}.tif" for k in range(1, N + 1)]
    found = np.array([[int(x["row"]), int(x["column"])] for x in rows])
    assert (found == truth["positions"]).all(axis=1).mean() >= 0.95
    assert all(0 <= float(x["probability"]) <= 1 for x in rows)


def test_detect_with_result_npz_and_draw(fitted, npy, truth, tmp_path):
    run, _ = fitted
    r = ok("detect", run / "result.npz", npy, "--draw", "boxed", "-o", "pos.csv", "--zoom", "1")
    assert r.stdout == ""
    rows = read_csv(Path("pos.csv"))
    assert len(rows) == N
    files = sorted(os.listdir("boxed"), key=natural_sort_key)
    assert files.pop(0) == ".facefinder"  # the marker: boxed images made by detect --draw
    assert len(files) == N and all(f.endswith(".png") for f in files)
    for k in (0, 1, N - 1):
        img = iio.imread(tmp_path / "boxed" / files[k])
        assert img.shape == SIZE + (3,) and img.dtype == np.uint8
        red = (img[..., 0] == 255) & (img[..., 1] == 0) & (img[..., 2] == 0)
        assert red.sum() >= 2 * (FACE[0] + FACE[1]) - 4
        r0, c0 = int(rows[k]["row"]), int(rows[k]["column"])
        assert red[r0, c0] and red[r0 + FACE[0] - 1, c0 + FACE[1] - 1]
        assert not red[r0 + 1 : r0 + FACE[0] - 1, c0 + 1 : c0 + FACE[1] - 1].any()


def test_detect_draw_from_a_folder(fitted, data, tmp_path):
    run, _ = fitted
    r = ok("detect", run, data, "--draw", "boxed", "-o", "pos.csv")
    assert "named img1.." not in r.stderr  # named after the images
    rows = read_csv(Path("pos.csv"))
    files = sorted(os.listdir("boxed"), key=natural_sort_key)
    assert files == [".facefinder"] + [f"img{k:02d}.png" for k in range(1, N + 1)]
    files.pop(0)
    z = view_zoom(SIZE)  # small images are upscaled for viewing by default
    assert z == 8
    for k in (0, N - 1):
        img = iio.imread(tmp_path / "boxed" / files[k])
        assert img.shape == (SIZE[0] * z, SIZE[1] * z, 3)
        r0, c0 = int(rows[k]["row"]), int(rows[k]["column"])
        assert tuple(img[r0 * z, c0 * z]) == (255, 0, 0)


def test_detect_draw_says_how_it_named_images_whose_names_clash(fitted, data, tmp_path):
    """a.png, a.tif and a.bmp cannot all be a.png: the boxed images are img1..3 in the CSV's
    order, and detect says so (it did not)."""
    run, _ = fitted
    os.mkdir("same")
    first = sorted(f for f in os.listdir(data) if not f.startswith("."))[0]
    img = iio.imread(Path(data) / first)
    for ext in ("png", "tif", "bmp"):
        iio.imwrite(f"same/a.{ext}", np.clip(img, 0, 255).astype(np.uint8))
    r = ok("detect", run, "same", "--draw", "boxed", "-o", "pos.csv")
    assert "named img1.. in the order of the CSV's rows" in r.stderr
    assert sorted(os.listdir("boxed")) == [".facefinder", "img1.png", "img2.png", "img3.png"]
    assert [row["image"] for row in read_csv(Path("pos.csv"))] == ["a.bmp", "a.png", "a.tif"]


def test_detect_images_of_another_size(fitted, tmp_path):
    run, _ = fitted
    np.save("small.npy", np.full((3, 20, 30), 100.0))
    r = cli("detect", run, "small.npy", "-o", "pos.csv")
    error_line(r, 1, "small.npy", "20x30", "24x32")
    assert os.listdir(tmp_path) == ["small.npy"]


# ---------------------------------------------------------------------------------------------
# errors: one line on stderr naming the culprit, no traceback, nothing left behind
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def png_folder(tmp_path, stack) -> Path:
    """Five good PNGs of 24x32 in ``imgs`` (nothing else there)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(5):
        save_png(folder / f"img{k + 1}.png", stack[k])
    return folder


def fit_fails(tmp_path, code: int, args: list, *needles: str) -> str:
    before = listing(tmp_path)
    r = cli("fit", *args, "-o", "run")
    line = error_line(r, code, *needles)
    assert listing(tmp_path) == before  # no run folder, no temporary left
    return line


def test_error_missing_input(tmp_path):
    fit_fails(tmp_path, 1, ["nowhere", "--face-size", "16x12"], "nowhere")


def test_error_corrupt_image(tmp_path, png_folder):
    good = (png_folder / "img3.png").read_bytes()
    (png_folder / "img3.png").write_bytes(good[: len(good) // 2])
    fit_fails(tmp_path, 1, ["imgs", "--face-size", "16x12"], "img3.png")


def test_error_mixed_image_sizes(tmp_path, png_folder):
    save_png(png_folder / "img4.png", np.full((20, 30), 100.0))
    save_png(png_folder / "img5.png", np.full((22, 30), 100.0))
    line = fit_fails(tmp_path, 1, ["imgs", "--face-size", "16x12"], "img4.png", "20x30", "24x32")
    assert "img5" not in line


def test_error_empty_folder(tmp_path):
    os.mkdir("empty")
    fit_fails(tmp_path, 1, ["empty", "--face-size", "16x12"], "empty")


def test_error_glob_matching_nothing(tmp_path):
    fit_fails(tmp_path, 1, ["nothing/*.png", "--face-size", "16x12"], "nothing/*.png")


def test_error_face_larger_than_images(tmp_path, png_folder):
    fit_fails(tmp_path, 2, ["imgs", "--face-size", "100x100"], "--face-size", "100x100", "24x32")


def test_error_nan_in_npy(tmp_path, stack):
    bad = stack[:5].copy()
    bad[2, 3, 4] = np.nan
    np.save("bad.npy", bad)
    fit_fails(tmp_path, 1, ["bad.npy", "--face-size", "16x12"], "bad.npy", "NaN")


@pytest.mark.parametrize("value", ["40", "0x5", "axb", "5x0", "-3x4"])
def test_error_bad_face_size(tmp_path, npy, value):
    fit_fails(tmp_path, 2, [npy, "--face-size", value], "--face-size", value)


def test_error_missing_face_size(tmp_path, npy):
    fit_fails(tmp_path, 2, [npy], "--face-size")


def test_error_truth_for_other_data(tmp_path, npy):
    ok("generate", "--face-size", "16x12", "--size", "20x30", "-n", 5, "-o", "other.npy")
    fit_fails(
        tmp_path,
        2,
        [npy, "--face-size", "16x12", "--truth", "other.truth.npz"],
        "--truth",
        "other.truth.npz",
    )


def test_error_truth_with_other_image_count(tmp_path, npy):
    ok("generate", "--face-size", "16x12", "--size", "24x32", "-n", 5, "-o", "other.npy")
    fit_fails(tmp_path, 2, [npy, "--face-size", "16x12", "--truth", "other.truth.npz"], "--truth")


def test_error_missing_truth_file(tmp_path, npy):
    fit_fails(tmp_path, 1, [npy, "--face-size", "16x12", "--truth", "nope.npz"], "nope.npz")


def test_error_output_folder_missing_parent(tmp_path, npy):
    before = listing(tmp_path)
    r = cli("fit", npy, "--face-size", "16x12", "-o", "no/such/run")
    error_line(r, 1, "no/such/run")
    assert listing(tmp_path) == before


def test_error_generate_face_larger_than_background(tmp_path):
    r = cli("generate", "--face-size", "30x30", "--size", "24x32", "-n", 3, "-o", "d")
    error_line(r, 2, "--face-size")
    assert os.listdir(tmp_path) == []


def test_error_generate_refuses_existing_output(tmp_path):
    ok("generate", *GEN, "-o", "s.npy")
    old = Path("s.npy").read_bytes()
    old_truth = Path("s.truth.npz").read_bytes()
    r = cli("generate", *GEN, "--seed", 1, "-o", "s.npy")
    line = error_line(r, 1, "--overwrite")
    assert "s.npy" in line or "s.truth.npz" in line
    assert Path("s.npy").read_bytes() == old
    assert Path("s.truth.npz").read_bytes() == old_truth
    os.rename("s.truth.npz", "kept.npz")  # the stack alone is in the way: it is named
    r = cli("generate", *GEN, "--seed", 1, "-o", "s.npy")
    error_line(r, 1, "s.npy", "--overwrite")
    assert sorted(os.listdir(tmp_path)) == [".s.npy.facefinder", "kept.npz", "s.npy"]
    assert Path("s.npy").read_bytes() == old
    os.rename("kept.npz", "s.truth.npz")
    # generate's record knows the pair as it left them: replaced; anything else is kept
    ok("generate", *GEN, "--seed", 1, "-o", "s.npy", "--overwrite")
    assert Path("s.npy").read_bytes() != old
    Path("s.tif").write_bytes(b"II*\x00 a stack of mine")  # shares s.truth.npz's name
    r = cli("generate", *GEN, "-o", "s.tif", "--overwrite")
    error_line(r, 1, "s.tif: not a file facefinder wrote", "move it away")
    assert Path("s.tif").read_bytes() == b"II*\x00 a stack of mine"
    new = Path("s.npy").read_bytes()
    Path("s.npy").write_bytes(new[:-1] + b"!")  # the user changed it since: kept
    r = cli("generate", *GEN, "-o", "s.npy", "--overwrite")
    error_line(r, 1, "s.npy: not a file facefinder wrote", "move it away")
    assert Path("s.npy").read_bytes() == new[:-1] + b"!"
    # another stack of the same name shares its truth: the refusal says whose it is
    os.remove("s.tif")
    ok("generate", *GEN, "-o", "t.tif")
    truth = Path("t.truth.npz").read_bytes()
    for flags in ((), ("--overwrite",)):
        r = cli("generate", *GEN, "-o", "t.npz", *flags)
        error_line(r, 1, "t.truth.npz: the truth of t.tif", "give this stack another name")
    assert Path("t.truth.npz").read_bytes() == truth and not os.path.exists("t.npz")
    os.remove("t.tif")  # gone: the truth is no one's now, and not said to be t.tif's
    r = cli("generate", *GEN, "-o", "t.npz", "--overwrite")
    line = error_line(r, 1, "t.truth.npz: not a file facefinder wrote")
    assert "t.tif" not in line


def test_an_output_under_a_file_says_the_file_is_not_a_folder(tmp_path, data):
    """It blamed a lock file that does not exist (found by review): `.r.lock exists and is
    not a facefinder lock file`."""
    Path("afile").write_text("mine")
    for args in (
        ("fit", data, "--face-size", "16x12", "-o", "afile/r"),
        ("generate", "-n", 3, "-o", "afile/g.npy"),
        ("pack", data, "afile/p.npy"),
    ):
        error_line(cli(*args), 1, "cannot write (afile is not a folder)")
    error_line(cli("generate", "-n", 3, "-o", "nope/g.npy"), 1, "folder nope does not exist")
    assert Path("afile").read_text() == "mine"


def test_error_generate_to_standard_output(tmp_path):
    for out in ("-", "/dev/stdout"):  # (it said: "only as npy or npz", which generate has not)
        r = cli("generate", "-n", 3, "-o", out)
        line = error_line(r, 2, f"{out}: generate writes the images and their truth")
        assert "not standard output" in line and r.stdout == ""
    assert os.listdir(tmp_path) == []


def test_error_generate_to_an_image_file_name(tmp_path):
    # A folder named like an image file is surely a mistake: write_stack refuses such names
    # ("give a folder name without .png"), generate should too instead of making a folder.
    r = cli("generate", "-n", 3, "-o", "out.png")
    assert r.exit_code in (1, 2)
    error_line(r, r.exit_code, "out.png")
    assert os.listdir(tmp_path) == []


def test_unknown_command_and_option():
    error_line(cli("fitt"), 2, "fitt")
    error_line(cli("fit", "x", "--bogus"), 2, "--bogus")


def test_version_and_help():
    r = ok("--version")
    assert __version__ in r.stdout
    r = ok("fit", "--help")
    assert "--face-size" in r.stdout and "--init-from" in r.stdout


# ---------------------------------------------------------------------------------------------
# the installed scripts, and the README's main job
# ---------------------------------------------------------------------------------------------


def test_installed_entry_points(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "facefinder_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert re.search(rf"\b{re.escape(__version__)}\b", p.stdout)

    ok("generate", "--face-size", "8x6", "--size", "12x16", "-n", 20, "--noise", 10, "-o", "d")
    script = Path(sys.executable).parent / "facefinder"
    assert script.is_file()
    p = subprocess.run(
        [str(script), "fit", "d", "--face-size", "8x6", "--json", "-o", "run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["n_images"] == 20
    assert "Traceback" not in p.stderr
    assert set(os.listdir(tmp_path / "run")) == RUN_FILES

    p = subprocess.run(
        [str(script), "fit", "nowhere", "--face-size", "8x6", "-o", "run2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 1
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
    assert "nowhere" in p.stderr and "Traceback" not in p.stderr


def test_readme_main_job_on_the_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    ok("fit", "sample_data/noisy", "--face-size", "40x30", "-o", tmp_path / "run")
    truth = load_npz(SAMPLE / "truth.npz")
    res = check_fit(tmp_path / "run", truth, min_corr=0.95)
    rows = read_csv(tmp_path / "run" / "positions.csv")
    assert len(rows) == 200 and rows[0]["image"] == "img001.png"
    found = np.array([[int(r["row"]), int(r["column"])] for r in rows])
    assert (found == truth["positions"]).all(axis=1).mean() >= 0.95
    assert res["background"].shape == (72, 96)


# ---------------------------------------------------------------------------------------------
# found in review
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "jpg", "damaged"])
def test_a_file_that_is_not_a_run_is_one_line(fitted, data, kind):
    run, _ = fitted
    name = {"npy": "pos.npy", "jpg": "shot.jpg", "damaged": "bad.npz"}[kind]
    if kind == "npy":
        np.save(name, np.zeros((3, 2)))
    elif kind == "jpg":
        iio.imwrite(name, np.zeros((8, 8), np.uint8))
    else:
        Path(name).write_bytes(b"PK\x03\x04 not really a zip")
    error_line(cli("fit", data, "--face-size", "16x12", "--truth", name, "-o", "r"), 1, name)
    error_line(cli("plot-elbo", name, "-o", "e.png"), 1, name)
    error_line(cli("detect", name, data), 1, name)
    error_line(cli("fit", data, "--init-from", name, "-o", "r"), 1, name)
    assert not Path("r").exists() and not Path("e.png").exists()


def test_tol_must_be_a_number(data):
    error_line(cli("fit", data, "--face-size", "16x12", "--tol", "nan", "-o", "r"), 2, "--tol")


def test_unquoted_glob_gets_a_hint(data):
    files = sorted(str(p) for p in Path(data).glob("*.tif"))[:3]
    r = cli("fit", *files, "--face-size", "16x12", "-o", "r")
    error_line(r, 2, "quote glob patterns")


def test_gap_plot_keeps_a_readable_scale(fitted):
    from facefinder_cli.plotting import Curve, curves_figure

    run, _ = fitted
    ok("plot-elbo", run, run, "--gap", "-o", "gap.png")
    r = load_run(run)
    curve = Curve("a", r.elbo, r.log_likelihood, r.seconds, r.n_values)
    fig = curves_figure([curve, curve], gap=True)
    # The best point (gap 0) is drawn on a floor a decade below the smallest gap, not at 1e-308
    # nor left out (which made the curves stop one iteration early).
    low, high = fig.axes[0].get_ylim()
    assert low > 1e-30 and high > low
    gaps = (r.elbo.max() - r.elbo)[r.elbo < r.elbo.max()]
    line = fig.axes[0].lines[0].get_ydata()
    assert len(line) == len(r.elbo)  # every iteration drawn
    floor = line[np.argmax(r.elbo)]
    assert floor == pytest.approx(gaps.min() / 10)
    assert "at the best (gap 0)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_gap_is_measured_to_the_best_of_the_same_data(fitted, data):
    from facefinder_cli.plotting import Curve, curves_figure

    r = load_run(fitted[0])
    assert r.data == str(Path(data).resolve())  # from the run's settings
    a = Curve("a", r.elbo, r.log_likelihood, r.seconds, r.n_values, data="a")
    worse = Curve("a2", r.elbo - 5.0, r.log_likelihood - 5.0, r.seconds, r.n_values, data="a")
    other = Curve("b", r.elbo - 1e3, r.log_likelihood - 1e3, r.seconds, r.n_values, data="b")
    fig = curves_figure([a, worse, other], gap=True)
    ys = [line.get_ydata() for line in fig.axes[0].lines[:3]]
    floor = ys[0][-1]  # the best point: on the floor line
    assert floor < 5.0 and ys[1][-1] == pytest.approx(5.0)  # same data: its best
    assert ys[2][-1] == floor  # other data: its own best, not 1000 below a's
    assert "best of the same data" in fig.axes[0].get_ylabel()
    assert "same data" not in curves_figure([a, worse], gap=True).axes[0].get_ylabel()


def test_not_converged_is_a_warning_in_cli_words(data):
    r = ok("fit", data, "--face-size", "16x12", "--max-iter", 2, "--tol", "1e-12", "-o", "r",
           "--no-plots")  # fmt: skip
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--max-iter 2" in warning[0] and "--tol" in warning[0]
    with np.load("r/result.npz") as z:
        assert json.loads(str(z["settings"]))["face_shape"] == list(FACE)
        assert not bool(z["converged"]) and int(z["n_iter"]) == 2


def test_history_csv_and_result_npz_read_back_alike(fitted):
    run, _ = fitted
    a, b = load_run(run / "result.npz"), load_run(run / "history.csv")
    assert a.prior_fixed_until == b.prior_fixed_until > 0  # the default holds the prior first
    np.testing.assert_allclose(a.elbo, b.elbo, rtol=1e-15)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-15)
    assert a.n_values == b.n_values


def test_em_from_the_truth_and_split_background_errors(data, truth):
    # --init-from takes the truth (the yardstick for the best fit) as well as a run.
    t = Path(data) / "truth.npz"
    ok("fit", data, "--init-from", t, "--truth", t, "-o", "from-truth", "--no-plots")
    with np.load("from-truth/result.npz") as z:
        seen, hidden = z["background_rmse_seen"], z["background_rmse_hidden"]
        everywhere = z["background_rmse"]
    # A 16x12 face on 24x32 images leaves every background pixel uncovered somewhere.
    assert np.isnan(hidden).all() and np.allclose(seen, everywhere)
    rows = read_csv(Path("from-truth/history.csv"))
    assert {"background_rmse_seen", "background_rmse_hidden"} <= set(rows[0])
    # The study's geometry hides a 12x2 block from every image.
    block = synthetic.hidden_pixels(np.ones((5, 15)), (16, 16))
    assert block.sum() == 24 and block[4:16, 14:16].all()


# ---------------------------------------------------------------------------------------------
# pack, and fits streamed from a .npy stack
# ---------------------------------------------------------------------------------------------


def test_pack_then_fit_streams_and_equals_the_folder_fit(data, fitted, monkeypatch):
    r = ok("pack", data, "packed.npy")
    assert "packed 60 images of 24x32 into packed.npy (float32" in r.stderr
    assert Path("packed.names.txt").read_text().splitlines()[:2] == ["img01.tif", "img02.tif"]
    seen = []
    real_fit = engine.fit
    monkeypatch.setattr(engine, "fit", lambda X, *a, **k: seen.append(X) or real_fit(X, *a, **k))
    truth = data / "truth.npz"
    ok("fit", "packed.npy", "--face-size", "16x12", "--truth", truth, "-o", "run", "--no-plots")
    assert isinstance(seen[0], NpyReader)  # read chunk by chunk, never loaded whole
    # The TIFFs hold float32 values: the packed stack holds them exactly, the fit is the same.
    a, b = load_npz(fitted[0] / "result.npz"), load_npz(Path("run/result.npz"))
    for key in ("face", "background", "prior", "elbo", "positions"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert Path("run/positions.csv").read_text() == (fitted[0] / "positions.csv").read_text()


def test_fit_precision_threads_and_memory_limit_options(npy):
    short = ["--face-size", "16x12", "--max-iter", 5, "--no-plots"]  # (plots: tested elsewhere)
    ok("fit", npy, *short, "-o", "a", "--workers", 1)
    b = ok("fit", npy, *short, "-o", "b", "--memory-limit", "0")
    assert "note: the FFT cache held 0 of 60 images within --memory-limit" in b.stderr
    ok("fit", npy, *short, "-o", "c", "--dtype", "float32")
    a, b, c = (load_npz(Path(d) / "result.npz") for d in "abc")
    np.testing.assert_array_equal(a["face"], b["face"])  # neither changes a result
    assert json.loads(str(c["settings"]))["dtype"] == "float32"
    assert np.abs(a["face"] - c["face"]).max() < 1e-3
    for bad, needle in (("12Q", "--memory-limit"), ("-1G", "--memory-limit")):
        error_line(
            cli("fit", npy, "--face-size", "16x12", "-o", "d", "--memory-limit", bad), 2, needle
        )
    error_line(cli("fit", npy, "--face-size", "16x12", "-o", "d", "--workers", 0), 2, "--workers")
    assert not Path("d").exists()


def test_streamed_stack_with_nan_is_one_line_and_writes_nothing(stack):
    bad = stack.astype(np.float32)
    bad[41, 2, 2] = np.nan
    np.save("bad.npy", bad)
    r = cli("fit", "bad.npy", "--face-size", "16x12", "-o", "run")
    error_line(r, 1, "bad.npy: image 41 (counting from 0) contains NaN")
    assert not Path("run").exists() and listing(Path(".")) == {"bad.npy"}


def test_pack_interrupted_says_so_and_exits_130_or_143(data, monkeypatch):
    import signal

    from facefinder_cli import images
    from facefinder_cli.interrupts import Interrupted

    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):

        def stop(*args, signum=signum, **kwargs):
            raise Interrupted(signum)

        monkeypatch.setattr(images, "pack_stack", stop)
        r = cli("pack", data, "s.npy")
        assert r.exit_code == code
        assert r.stderr.strip() == "interrupted: s.npy was not written"


def test_fit_streams_a_bool_stack(stack):
    np.save("mask.npy", stack > np.median(stack))
    ok("fit", "mask.npy", "--face-size", "16x12", "-o", "run", "--max-iter", 3, "--no-plots")
    with np.load("run/result.npz") as z:  # the booleans read as 0 and 1
        assert 0 <= z["background"].min() and z["background"].max() <= 1
        assert z["n_iter"] == 3 and np.isfinite(z["elbo"]).all()
        assert z["positions"].shape == (len(stack), 2)


def test_pack_refuses_and_keeps(data):
    ok("pack", data, "s.npy", "--dtype", "float64")
    before = Path("s.npy").read_bytes()
    error_line(cli("pack", data, "s.npy"), 1, "s.npy", "--overwrite")
    error_line(cli("pack", data, "s.tif"), 1, "s.tif", ".npy")
    error_line(cli("pack", "missing", "t.npy"), 1, "missing")
    assert Path("s.npy").read_bytes() == before and np.load("s.npy").dtype == np.float64
    assert listing(Path(".")) == {".s.npy.facefinder", "s.npy", "s.names.txt"}


PACK_SLOWLY = """
import time
import PIL.Image
real_open = PIL.Image.open
def slow_open(fp, *args, **kwargs):  # inside the reader's error handling, as a slow disk is
    if str(getattr(fp, "name", fp)).endswith("img2.png"):  # the second image takes a minute
        open("reading", "w").close()
        time.sleep(60)
    return real_open(fp, *args, **kwargs)
PIL.Image.open = slow_open
from facefinder_cli.cli import main
main(["pack", "imgs", "out/s.npy"])
"""


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_pack_killed_midway_leaves_nothing(sig, code):
    import signal
    import time

    os.mkdir("imgs")
    for k in (1, 2, 3):
        iio.imwrite(f"imgs/img{k}.png", np.full((8, 8), 40 * k, dtype=np.uint8))
    os.mkdir("out")
    proc = subprocess.Popen(
        [sys.executable, "-c", PACK_SLOWLY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not os.path.exists("reading") and time.monotonic() < deadline:
        time.sleep(0.02)
    # the temporaries of the stack (img1 written into it) and of its names file, and the locks
    assert len([f for f in os.listdir("out") if f.endswith(".tmp")]) == 2
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.strip() == "interrupted: out/s.npy was not written"
    assert os.listdir("out") == []


def test_settings_named_by_the_readers_are_said_as_options():
    """The readers name a setting as a hint (layout='khw'); the command line says its option."""
    np.save("hwk.npy", np.zeros((6, 7, 40), np.float32))
    r = ok("pack", "hwk.npy", "s.npy")
    assert (
        "warning: read hwk.npy as 40 images of 6x7 (H, W, K) from its shape; pass --layout khw if "
        "the images are along the first axis"
    ) in r.stderr.splitlines()
    os.mkdir("c")
    Image.fromarray(np.full((5, 6, 3), [200, 10, 30], np.uint8)).save("c/a.png")
    r = ok("pack", "c", "c.npy")
    assert (
        "note: rounded the values of 1 image to float32 (about 7 significant digits: values "
        "that are not whole numbers, as in colour and float images, or beyond 16,777,216 lose "
        "some); pack with --dtype float64 to keep them exactly"
    ) in r.stderr.splitlines()
    np.save("big.npy", np.full((2, 3, 3), 1e39))
    line = error_line(cli("pack", "big.npy", "b.npy"), 1)
    assert line == (
        "Error: big.npy: image 0 (counting from 0) holds values beyond the float32 range "
        "(about 3.4e38); pack with --dtype float64"
    )


def test_an_interrupt_while_a_start_is_built_says_so_and_resumes_to_the_whole_fit(
    data, monkeypatch
):
    """Ctrl-C in the positions' sampler (restart 7's start, which takes 300 passes before its
    first iteration): the line says that start was under way, and that resuming builds it
    again; the resumed fit is the whole fit's."""
    from facefinder_cli.cli.progress import ProgressBar
    from facefinder_cli.engine import sampler
    from facefinder_cli.interrupts import Interrupted

    monkeypatch.setattr(sampler, "SAMPLER_SWEEPS", 6)
    args = ["--face-size", "16x12", "--restarts", 7, "--max-iter", 3, "--seed", 2, "--no-plots"]
    ok("fit", data, *args, "-o", "whole")
    real = ProgressBar.start

    def stopping(self, restart, what, done, total):
        real(self, restart, what, done, total)
        if what == "sampling positions" and done == 2:
            raise Interrupted(signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(ProgressBar, "start", stopping)
        r = cli("fit", data, *args, "-o", "cut")
    assert r.exit_code == 130
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "interrupted in restart 7's start (sampling positions, pass 3 of 6), after iteration "
    ), line
    assert "of restart 6 of 7; saved in cut" in line and "built again" in line, line
    ok("fit", "--resume", "cut")
    with np.load("whole/result.npz") as a, np.load("cut/result.npz") as b:
        for key in ("face", "background", "noise_std", "prior", "positions", "log_likelihood"):
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
        assert len(a["restart_passes"]) == 7
        for key in ("restart_log_likelihood", "restart_passes"):
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_a_resume_whose_truth_file_is_gone_or_another_says_so_and_keeps_the_checkpoint(
    data, monkeypatch
):
    """The files given to the interrupted fit (--truth here) are read again on resume: gone,
    or replaced by another's, the line said "no such file" or blamed an option the user had
    not given ("Invalid value for '--truth'"). It says they are the interrupted fit's, and
    to put them back; the checkpoint is kept, and the fit resumes once they are back."""
    import shutil

    from helpers import stop_fit_at

    shutil.copy(data / "truth.npz", "t.npz")
    args = ["--face-size", "16x12", "--truth", "t.npz", "--tol", "-1", "--max-iter", 4]
    with stop_fit_at(monkeypatch, 2):
        assert cli("fit", data, *args, "-o", "cut", "--no-plots").exit_code == 130
    saved = Path("cut/checkpoint.npz").read_bytes()
    os.rename("t.npz", "away.npz")
    r = cli("fit", "--resume", "cut")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "cut: the interrupted fit was given files that no longer fit it" in r.stderr
    assert "t.npz: no such file; put back the file it was given" in r.stderr
    np.savez("t.npz", face=np.zeros((3, 3)))  # another file under its name
    r = cli("fit", "--resume", "cut")
    assert r.exit_code == 1 and "Invalid value" not in r.stderr, r.stderr
    assert "the interrupted fit was given files" in r.stderr
    assert Path("cut/checkpoint.npz").read_bytes() == saved
    os.replace("away.npz", "t.npz")
    ok("fit", "--resume", "cut")
    assert Path("cut/result.npz").is_file()


def test_restarts_auto_says_why_it_ran_more_and_resumes_through_them(monkeypatch):
    """The default --restarts auto: where the first fit's positions are unsure it runs three,
    and says so; Ctrl-C in the first says that more may follow (it said "of 1": found in
    review), in the second "of 3"; the resumed fit is the whole fit's; --restarts 1 runs
    one; --restarts reads numbers as click did ("+3")."""
    from facefinder_cli.interrupts import Interrupted

    ok("generate", *GEN[:-1], "200", "--seed", 0, "-o", "noisy")
    args = ["noisy", "--face-size", "16x12", "--no-plots", "--json"]
    r = ok("fit", *args, "-o", "whole")
    summary = json.loads(r.stdout)
    assert (summary["restarts"], summary["restarts_asked"]) == (3, "auto")
    with np.load("whole/result.npz") as z:  # the first fit's mean probability, and the note's
        first = z["restart_mean_probability"][0]
        assert len(z["restart_mean_probability"]) == 3 and 0 < first < 0.99
    said = f"(mean probability {math.floor(first * 1000) / 1000:.3f}, below 0.99), so --restarts"
    assert said + " auto tried 3 starts (--restarts 1: one)" in r.stderr
    summary = json.loads(ok("fit", *args, "-o", "one", "--restarts", 1).stdout)
    assert (summary["restarts"], summary["restarts_asked"]) == (1, 1)
    assert json.loads(ok("fit", *args, "-o", "plus", "--restarts", "+2").stdout)["restarts"] == 2
    real = engine.fit

    def stop_at(restart: int):
        def stopping(*a, callback=None, **kw):
            def cb(progress):
                callback(progress)
                if (progress.restart, progress.iteration) == (restart, 2):
                    raise Interrupted(signal.SIGINT)

            return real(*a, callback=cb, **kw)

        return stopping

    with monkeypatch.context() as m:
        m.setattr(engine, "fit", stop_at(0))
        r = cli("fit", *args, "-o", "first")
        assert r.exit_code == 130, r.stderr
        assert "after iteration 2 of restart 1 of 1 (or 3 if its positions are not sure: " \
            "--restarts auto); saved in first" in r.stderr  # fmt: skip
        m.setattr(engine, "fit", stop_at(1))
        r = cli("fit", *args, "-o", "cut")
    assert r.exit_code == 130 and "after iteration 2 of restart 2 of 3; saved in cut" in r.stderr
    ok("fit", "--resume", "cut")
    with np.load("whole/result.npz") as a, np.load("cut/result.npz") as b:
        for key in ("face", "background", "prior", "positions", "restart_log_likelihood",
                    "restart_mean_probability"):  # fmt: skip
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_plot_elbo_redraws_a_runs_own_elbo_png_and_nothing_else_there(tmp_path):
    """The README's `plot-elbo run -o run/elbo.png` was refused where fit had drawn elbo.png
    ("lies in a folder this command reads its input from"; found in review): the run's own
    ELBO plot is replaced with --overwrite; its other files, and a user's, never are."""
    ok("generate", "-n", 20, "--face-size", "8x8", "--size", "12x16", "-o", "d", "-q")
    ok("fit", "d", "--face-size", "8x8", "-o", "run", "-q", "--max-iter", 3)
    error_line(cli("plot-elbo", "run", "-o", "run/elbo.png"), 1, "file exists", "--overwrite")
    ok("plot-elbo", "run", "-o", "run/elbo.png", "--overwrite", "--gap")
    assert Path("run/elbo.png").read_bytes().startswith(PNG_SIGNATURE)
    for name in ("face.png", "prior.png"):  # fit's, but not ELBO plots
        before = Path("run", name).read_bytes()
        r = cli("plot-elbo", "run", "-o", f"run/{name}", "--overwrite")
        error_line(r, 1, f"run/{name}: not a file facefinder wrote as this output")
        assert Path("run", name).read_bytes() == before
    ok("fit", "d", "--face-size", "8x8", "-o", "run", "-q", "--max-iter", 3, "--overwrite")
    Path("mine").mkdir()  # a user's PNG named elbo.png in a folder of theirs
    Path("mine/elbo.png").write_bytes(PNG_SIGNATURE + b"a photo of mine")
    r = cli("plot-elbo", "run", "-o", "mine/elbo.png", "--overwrite")
    error_line(r, 1, "mine/elbo.png: not a file facefinder wrote")
    assert Path("mine/elbo.png").read_bytes() == PNG_SIGNATURE + b"a photo of mine"
