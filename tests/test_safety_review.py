"""The second hostile review of issue 11's fixes, replayed: each defect it found, as a test.

(The first round is tests/test_safety.py; the output rules themselves are tested directly in
tests/test_outputs.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, ok, stop_fit_at

from facefinder_cli import runs
from facefinder_cli.interrupts import Interrupted

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
GEN = ["generate", "-n", "30", "--face-size", "8x8", "--size", "12x16", "--noise", "20", "-q"]
FIT = ["--face-size", "8x8", "--max-iter", "3"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def one_error(r, code: int = 1) -> str:
    assert r.exit_code == code, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "unexpected" not in lines[0]
    return lines[0]


def hidden_leftovers() -> list[str]:
    """Hidden files but the records by which --overwrite knows a stack it wrote."""
    return [f for f in os.listdir() if f.startswith(".") and not f.endswith(".npy.facefinder")]


@pytest.fixture
def data():
    ok(*GEN, "-o", "data")
    return "data"


# --- 1 and 2: files written together -----------------------------------------------------------


def test_generate_never_removes_a_device_nor_loses_the_old_pair(monkeypatch):
    """generate unlinked its stack when the truth failed: a device node at the stack's name
    was deleted, and an --overwrite lost the old stack."""
    if os.geteuid() == 0:
        os.mknod("null.npy", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        ok(*GEN, "-o", "null.npy")  # written into, as > would
        assert stat.S_ISCHR(os.lstat("null.npy").st_mode)
    ok(*GEN, "-o", "s.npy")
    before = {f: Path(f).read_bytes() for f in ("s.npy", "s.truth.npz")}

    def stop(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(runs, "write_truth", stop)
        r = cli(*GEN, "-n", "12", "--seed", "3", "-o", "s.npy", "--overwrite")
    assert r.exit_code == 130
    assert r.stderr.strip() == "interrupted: s.npy was not written; the one there is as it was"
    assert {f: Path(f).read_bytes() for f in before} == before
    assert hidden_leftovers() == []
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat("null.npy").st_mode)


@pytest.mark.parametrize(
    "command, written",
    [
        (["pack", "src", "p.npy", "--overwrite"], "p.npy was written all the same"),
        ([*GEN, "--seed", "5", "-o", "g.npy", "--overwrite"], "g.npy and g.truth.npz were"),
        (["detect", "run", "src", "-o", "d.csv", "--overwrite"], "d.csv was written all the"),
        (["plot-elbo", "run", "-o", "e.png", "--overwrite"], "e.png was written all the same"),
    ],
)
def test_a_signal_after_the_outputs_are_in_place_says_they_were_written(
    monkeypatch, command, written
):
    """Ctrl-C as the command lets go of its outputs' locks, with the new outputs in place:
    it said "was not written; the one there is as it was" (found by review)."""
    from facefinder_cli import outputs

    ok(*GEN, "-o", "src")
    ok("fit", "src", "--face-size", "8x8", "-o", "run", "-q", "--no-plots")
    for out in ("p.npy", "g.npy", "d.csv", "e.png"):  # the outputs as they were before
        if out == "p.npy":
            ok("pack", "src", out)
        elif out == "g.npy":
            ok(*GEN, "-o", out)
        elif out == "d.csv":
            ok("detect", "run", "src", "-o", out, "-q")
        else:
            ok("plot-elbo", "run", "-o", out, "-q")
    out = next(a for a in ("p.npy", "g.npy", "d.csv", "e.png") if a in command)
    before = os.stat(out).st_ino  # (the new output is the same, made anew)
    real = outputs._Lock.release

    def release(self):
        monkeypatch.setattr(outputs._Lock, "release", real)  # once
        os.kill(os.getpid(), signal.SIGINT)
        return real(self)

    monkeypatch.setattr(outputs._Lock, "release", release)
    r = cli(*command)
    assert r.exit_code == 130 and written in r.stderr and "not written" not in r.stderr
    assert os.stat(out).st_ino != before  # replaced


def test_pack_overwrite_keeps_the_old_names_file_when_interrupted(monkeypatch):
    from facefinder_cli.images import packing

    ok(*GEN, "-o", "src")
    ok("pack", "src", "e.npy")
    before = {f: Path(f).read_bytes() for f in ("e.npy", "e.names.txt")}
    real = packing._pack_files

    def stop(*args, **kwargs):
        real(*args, **kwargs)
        raise Interrupted(signal.SIGINT)  # the new stack is written, not yet in place

    with monkeypatch.context() as m:
        m.setattr(packing, "_pack_files", stop)
        r = cli("pack", "src", "e.npy", "--overwrite")
    assert r.exit_code == 130 and "e.npy was not written" in r.stderr
    assert {f: Path(f).read_bytes() for f in before} == before
    assert hidden_leftovers() == []


# --- 6: carriage returns in names ---------------------------------------------------------------


def test_a_carriage_return_in_a_name_keeps_the_csv_rows(data):
    import csv

    os.mkdir("cr")
    for k, name in enumerate(["cr\rx.tif", "plain.tif", "b.tif"]):
        os.link(Path(data) / f"img{k + 1:02d}.tif", Path("cr") / name)
    ok("fit", "--no-plots", "cr", *FIT, "-o", "run")
    ok("detect", "run", "cr", "-o", "d.csv")
    for table in ("run/positions.csv", "d.csv"):
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert sorted(r[0] for r in rows[1:]) == sorted(["cr\rx.tif", "plain.tif", "b.tif"])


# --- 7: refused before the work, not after ------------------------------------------------------


def test_outputs_that_cannot_be_renamed_into_place_are_refused_first(data):
    os.mkdir("run")
    line = one_error(cli("fit", "--no-plots", data, *FIT, "-o", "run/."))
    assert "give the output its own name" in line
    long = "r" * 250  # a legal name, whose temporary would not be
    ok("fit", "--no-plots", data, *FIT, "-o", long)
    assert os.path.isdir(long) and hidden_leftovers() == []
    line = one_error(cli("fit", "--no-plots", data, *FIT, "-o", "x" * 256))
    assert "the name is too long" in line


# --- 8: damaged checkpoints ---------------------------------------------------------------------


@pytest.fixture
def checkpoint(data, monkeypatch):
    with stop_fit_at(monkeypatch, 2):
        r = cli(
            "fit",
            "--no-plots",
            data,
            "--face-size",
            "8x8",
            "-o",
            "run",
            "--tol",
            "-1",
            "--max-iter",
            5,
        )
    assert r.exit_code == 130
    return Path("run/checkpoint.npz")


def _edit(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "change",
    [
        dict(iteration=-5),
        dict(iteration=10**18),
        dict(elbo=np.array([1.0])),
        dict(unidentified=np.zeros((3, 3), bool)),
        dict(extra=json.dumps({"errors": 5})),
    ],
    ids=["negative-iteration", "huge-iteration", "short-elbo", "unidentified-shape", "errors"],
)
def test_a_damaged_checkpoint_is_one_line(checkpoint, change):
    _edit(checkpoint, **change)
    before = checkpoint.read_bytes()
    line = one_error(cli("fit", "--resume", "run"))
    assert "checkpoint" in line
    assert checkpoint.read_bytes() == before and not Path("run/result.npz").exists()


def test_a_checkpoint_with_unknown_settings_is_refused(checkpoint):
    with np.load(checkpoint) as z:
        settings = json.loads(str(z["settings"]))
    settings["new_knob"] = 3
    _edit(checkpoint, settings=json.dumps(settings))
    assert "another version" in one_error(cli("fit", "--resume", "run"))


# --- 9: what an interrupt says ------------------------------------------------------------------


def test_an_interrupt_while_drawing_says_the_csv_was_written(data, monkeypatch):
    from facefinder_cli import images

    def stop(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    model = _run(data)
    with monkeypatch.context() as m:
        m.setattr(images, "write_png", stop)
        r = cli("detect", model, data, "-o", "d.csv", "--draw", "dd")
    assert r.exit_code == 130
    last = r.stderr.splitlines()[-1]
    assert last == "interrupted: d.csv was written, the boxed images in dd were not"
    assert Path("d.csv").exists() and not Path("dd").exists()


def test_a_full_disk_while_drawing_says_the_csv_was_written(data, monkeypatch):
    import errno

    from facefinder_cli import outputs

    model = _run(data)
    real = outputs._install

    def full_for_pngs(tmp, p, overwrite):  # the CSV goes in; the boxed images do not
        if p.endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tmp, p, overwrite)

    with monkeypatch.context() as m:
        m.setattr(outputs, "_install", full_for_pngs)
        r = cli("detect", model, data, "-o", "d.csv", "--draw", "dd", "-q")
    line = one_error(r)
    assert "No space left on device" in line, line
    assert line.endswith("; d.csv was written, the boxed images were not"), line
    assert Path("d.csv").exists() and not Path("dd").exists()
    assert hidden_leftovers() == [".d.csv.facefinder"]  # (the CSV's record: no temporaries)


@pytest.mark.parametrize("csv", [True, False])
def test_running_out_of_memory_while_drawing_says_the_csv_was_written(data, monkeypatch, csv):
    """It said only "out of memory" (found in review, with --zoom 64 on 300x300 images)."""
    from facefinder_cli import images

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    model = _run(data)
    monkeypatch.setattr(images, "boxed", out_of_memory)
    r = cli("detect", model, data, *(["-o", "d.csv"] if csv else []), "--draw", "dd", "-q",
            "--zoom", 3)  # fmt: skip
    line = one_error(r)
    assert line.startswith("Error: out of memory drawing the boxed images (36x48 at --zoom 3)")
    if csv:
        assert line.endswith("; d.csv was written, the boxed images were not"), line
        assert Path("d.csv").exists()
    else:
        assert line.endswith("; they were not written") and r.stdout.startswith("image,")
    assert not Path("dd").exists()


def _run(data) -> str:
    if not Path("run0").exists():
        ok("fit", "--no-plots", data, *FIT, "-o", "run0")
    return "run0"


# --- 10: --resume from another folder -----------------------------------------------------------


def test_resume_of_a_pattern_works_from_any_folder(data, monkeypatch, tmp_path):
    os.rename(data, "shots[1]")
    with stop_fit_at(monkeypatch, 1):
        r = cli(
            "fit", "--no-plots", "shots[[]1]/*.tif", "--face-size", "8x8", "-o", "gr", "--tol", "-1"
        )
    assert r.exit_code == 130, r.stderr
    os.mkdir("elsewhere")
    monkeypatch.chdir("elsewhere")
    ok("fit", "--resume", tmp_path / "gr")
    assert (tmp_path / "gr" / "result.npz").exists()


# --- smaller points -----------------------------------------------------------------------------


def test_json_is_strict(data):
    r = ok(
        "fit", "--no-plots", data, *FIT, "-o", "run", "--json", "--truth", Path(data) / "truth.npz"
    )
    assert "NaN" not in r.stdout
    json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json"))


def test_an_error_about_a_path_with_a_line_break_is_one_line():
    r = cli("fit", "--no-plots", "no\nsuch", "--face-size", "8x8", "-o", "run")
    assert one_error(r) == "Error: no\\nsuch: no such file or folder"


def test_sighup_saves_the_fit_as_sigterm_does(data):
    """A closed terminal or a dropped ssh session: 129, and a checkpoint to resume from."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "facefinder_cli", "fit", data, "--face-size", "8x8", "-o", "run"]
        + ["--tol", "-1", "--max-iter", "100000", "--checkpoint-every", "1", "-q"],
        env=ENV,
        stderr=subprocess.PIPE,
        # as at a terminal, even if the tests run under nohup (an ignored SIGHUP is kept)
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not Path("run/checkpoint.npz").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "interrupted after iteration" in err.decode()
    runs.load_checkpoint("run")


@pytest.mark.parametrize("name", ["SIGHUP", "SIGINT", "SIGTERM"])
def test_a_signal_ignored_at_start_up_stays_ignored(data, name):
    """`nohup` ignores SIGHUP, and a shell starts a background job with SIGINT ignored: the
    fit must go on to its end when the signal comes, as most Unix tools do (before: the
    handlers were installed all the same, and `nohup facefinder fit` stopped at a hang-up
    with 129)."""
    signum = getattr(signal, name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "facefinder_cli", "fit", data, "--face-size", "8x8", "-o", "run"]
        + ["--tol", "-1", "--max-iter", "50", "--checkpoint-every", "2", "-q", "--no-plots"]
        + ["--restarts", "1"],
        env=ENV,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signum, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 60
    while not Path("run/checkpoint.npz").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None  # still fitting as the signal comes
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err.decode() == ""
    with np.load("run/result.npz") as z:
        assert int(z["n_iter"]) == 50


# --- the review of the diff ---------------------------------------------------------------------


def test_detect_never_writes_over_its_prior_file(data):
    ok("fit", "--no-plots", data, *FIT, "-o", "run")
    shape = np.load("run/result.npz")["prior"].shape
    np.save("p.npy", np.ones(shape))
    before = Path("p.npy").read_bytes()
    line = one_error(cli("detect", "run", data, "--prior", "p.npy", "-o", "p.npy", "--overwrite"))
    assert "is an input of this command" in line and Path("p.npy").read_bytes() == before


def test_a_csv_inside_the_draw_folder_is_refused_first(data):
    ok("fit", "--no-plots", data, *FIT, "-o", "run")
    line = one_error(cli("detect", "run", data, "--draw", "boxed", "-o", "boxed/pos.csv"), 2)
    assert "inside the --draw folder boxed" in line


def test_a_temporary_left_inside_a_run_folder_does_not_block_resume(checkpoint):
    left = checkpoint.parent / ".checkpoint.npz.abcd1234.facefinder.tmp"
    left.write_bytes(b"half a checkpoint: the fit was killed while saving it")
    r = ok("fit", "--resume", "run")
    assert "removed run/.checkpoint.npz.abcd1234.facefinder.tmp" in r.stderr
    assert Path("run/result.npz").exists() and not left.exists()


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(settings="5"), "its record of settings is damaged"),
        (dict(face=np.full((8, 8), np.nan)), "parameters are damaged"),
    ],
    ids=["settings", "nan-face"],
)
def test_a_damaged_checkpoint_is_named(checkpoint, change, needle):
    _edit(checkpoint, **change)
    line = one_error(cli("fit", "--resume", "run"))
    assert line.startswith("Error: run/checkpoint.npz: ") and needle in line


def test_detect_smooths_only_a_prior_that_was_learnt(data):
    ok(*GEN, "--prior", "centred", "-o", "centred")
    truth = Path("centred") / "truth.npz"
    fit = ["fit", "centred", *FIT, "--init-from", truth, "--prior-update", "never", "-o", "run"]
    ok(*fit)
    ok("detect", "run", "centred", "-o", "smoothed.csv")
    ok("detect", "run", "centred", "-o", "fitted.csv", "--prior", "fitted")
    assert Path("smoothed.csv").read_text() == Path("fitted.csv").read_text()


@pytest.mark.parametrize("name, value", [("zoom", 0), ("zoom", 65), ("checkpoint_every", -2)])
def test_a_checkpoint_with_an_option_out_of_range_is_refused(checkpoint, name, value):
    with np.load(checkpoint) as z:
        settings = json.loads(str(z["settings"]))
    _edit(checkpoint, settings=json.dumps({**settings, name: value}))
    line = one_error(cli("fit", "--resume", "run"))
    assert line == f"Error: run/checkpoint.npz: not a valid facefinder checkpoint (setting {name})"


# --- the third review: what --overwrite may delete inside a folder it replaces ------------------


def folder_bytes(folder: str) -> dict[str, bytes]:
    return {f: (Path(folder) / f).read_bytes() for f in sorted(os.listdir(folder))}


def a_png_of_mine() -> bytes:
    from PIL import Image

    buf = __import__("io").BytesIO()
    Image.new("L", (4, 3), 200).save(buf, format="PNG")
    return buf.getvalue()


def test_detect_draw_overwrite_keeps_a_users_file_in_the_folder(data):
    """H1: a file in the --draw folder was facefinder's by its extension alone: --overwrite
    deleted a user's holiday.png put there, or a photo under one of its names."""
    ok("fit", "--no-plots", data, *FIT, "-o", "run")
    draw = ["detect", "run", data, "--draw", "boxed", "-o", "/dev/null"]
    ok(*draw)
    Path("boxed/holiday.png").write_bytes(a_png_of_mine())
    before = folder_bytes("boxed")
    line = one_error(cli(*draw, "--overwrite"))
    assert "boxed: holds files facefinder does not write there (holiday.png)" in line
    assert "--overwrite" in line and "move it away" in line
    assert folder_bytes("boxed") == before
    os.remove("boxed/holiday.png")
    Path("boxed/img01.png").write_bytes(a_png_of_mine())  # a name it uses, not its file
    before = folder_bytes("boxed")
    line = one_error(cli(*draw, "--overwrite"))
    assert "boxed: img01.png changed since facefinder wrote it" in line
    assert "move it elsewhere" in line
    assert folder_bytes("boxed") == before
    os.remove("boxed/img01.png")  # moved away: the rest is detect's as it left it
    ok(*draw, "--overwrite")
    assert len(os.listdir("boxed")) == 31  # (30 images and the marker)


def test_generate_overwrite_keeps_a_users_images_in_the_folder():
    """H1: generate --overwrite deleted any .tif or .png in its folder, a user's too."""
    gen = ["generate", "-n", "5", "--size", "12x16", "--face-size", "8x8", "-q", "-o", "gg"]
    ok(*gen)
    Path("gg/myphoto.tif").write_bytes(b"II*\0 a tiff of mine")
    Path("gg/img1.png").write_bytes(a_png_of_mine())
    before = folder_bytes("gg")
    line = one_error(cli(*gen, "--overwrite"))
    assert "gg: holds files facefinder does not write there (img1.png, myphoto.tif)" in line
    assert folder_bytes("gg") == before
    os.remove("gg/myphoto.tif")
    os.remove("gg/img1.png")
    with open("gg/img2.tif", "ab") as f:  # one of its own, edited
        f.write(b"my annotations")
    before = folder_bytes("gg")
    line = one_error(cli(*gen, "--overwrite"))
    assert "gg: img2.tif changed since facefinder wrote it" in line
    assert folder_bytes("gg") == before
    os.remove("gg/img2.tif")
    ok(*gen, "--seed", "5", "--overwrite")
    assert sorted(os.listdir("gg"))[1:] == [f"img{k}.tif" for k in range(1, 6)] + ["truth.npz"]


def test_fit_overwrite_keeps_the_files_a_user_changed_in_a_run_folder(data):
    """M5: fit --overwrite lost the edits to a run folder's files; a copied run (cp -a, which
    keeps the times and the marker) is still replaced."""
    import shutil

    ok("fit", data, *FIT, "-o", "run")
    shutil.copytree("run", "r2")  # as cp -a: the same files, the same times
    ok("fit", data, *FIT, "-o", "r2", "--overwrite", "--method", "hard")
    with np.load("r2/result.npz") as z:
        assert str(z["method"]) == "hard"
    with open("r2/history.csv", "a") as f:
        f.write("edits\n")
    Path("r2/face.png").write_bytes(a_png_of_mine())
    before = folder_bytes("r2")
    line = one_error(cli("fit", data, *FIT, "-o", "r2", "--overwrite"))
    assert line.startswith("Error: r2: face.png, history.csv changed since facefinder wrote them")
    assert "--overwrite" in line and "move them elsewhere" in line
    assert folder_bytes("r2") == before
    assert hidden_leftovers() == []


def test_a_plot_drawn_into_a_run_folder_is_replaced_with_the_run(data):
    """`fit --no-plots`, then `plot-elbo run -o run/elbo.png`, as --no-plots' help suggests:
    the next `fit --overwrite` was refused, "holds files facefinder does not write there
    (elbo.png)" (a review). The plot's stamp says facefinder drew it there, unchanged."""
    ok("fit", "--no-plots", data, *FIT, "-o", "run")
    ok("plot-elbo", "run", "-o", "run/elbo.png")
    ok("fit", data, *FIT, "-o", "run", "--overwrite", "--method", "hard")
    with np.load("run/result.npz") as z:
        assert str(z["method"]) == "hard"
    Path("run/elbo.png").write_bytes(a_png_of_mine())  # a user's own, under that name
    line = one_error(cli("fit", data, *FIT, "-o", "run", "--overwrite"))
    assert line.startswith("Error: run: elbo.png changed since facefinder wrote it"), line


def test_checkpoints_saved_into_a_run_being_replaced_are_recorded(data, monkeypatch):
    """The checkpoints a fit --overwrite saves into the folder of the run it replaces, in place,
    are noted in that folder's record as they are saved: the fit, or the resumed fit, then
    replaces the folder (the earlier run's files and its checkpoint, all facefinder's)."""
    ok("fit", "--no-plots", data, *FIT, "-o", "run")
    again = ["fit", "--no-plots", data, *FIT, "-o", "run", "--overwrite", "--tol", "-1"]
    ok(*again, "--checkpoint-every", "1")
    assert "checkpoint.npz" not in os.listdir("run")
    with stop_fit_at(monkeypatch, 2):
        r = cli(*again, "--max-iter", "5", "--checkpoint-every", "1")
    assert r.exit_code == 130 and "beside the earlier run" in r.stderr
    assert {"result.npz", "checkpoint.npz"} <= set(os.listdir("run"))
    assert "resuming run at iteration 2" in ok("fit", "--resume", "run").stderr
    assert "checkpoint.npz" not in os.listdir("run") and hidden_leftovers() == []


def test_a_resumed_checkpoint_copied_without_its_times_is_not_refused(checkpoint):
    """fit --resume carries on from the checkpoint and replaces it: it is the fit's, even in a
    copy of the folder that did not keep the times (cp -r)."""
    import shutil

    shutil.copytree("run", "copy", copy_function=shutil.copyfile)
    ok("fit", "--resume", "copy")
    assert "result.npz" in os.listdir("copy") and "checkpoint.npz" not in os.listdir("copy")


def test_plot_elbo_overwrite_keeps_a_copy_of_another_plot(data):
    """M4: any plot stamped by facefinder counted as plot-elbo's: --overwrite replaced the
    user's copy of a run's prior map with an ELBO plot. Only a plot drawn as plot-elbo's
    output under that name is replaced."""
    import shutil

    ok("fit", data, *FIT, "-o", "run")
    for figure in ("prior.png", "elbo.png"):  # the run's own figures, copied for a paper
        shutil.copy2(Path("run") / figure, "paper.png")
        line = one_error(cli("plot-elbo", "run", "-o", "paper.png", "--overwrite"))
        assert "paper.png: not a file facefinder wrote as this output" in line
        assert (Path("run") / figure).read_bytes() == Path("paper.png").read_bytes()
    ok("plot-elbo", "run", "-o", "e.png")
    shutil.copy2("e.png", "paper.png")  # plot-elbo's, but drawn as e.png
    line = one_error(cli("plot-elbo", "run", "-o", "paper.png", "--overwrite"))
    assert "paper.png: not a file facefinder wrote as this output" in line
    assert Path("paper.png").read_bytes() == Path("e.png").read_bytes()
    ok("plot-elbo", "run", "-o", "e.png", "--overwrite", "--title", "again")  # its own
    assert Path("paper.png").read_bytes() != Path("e.png").read_bytes()


def test_a_users_file_or_folder_is_refused_at_once_not_after_overwrite(data):
    """A review: a user's file or folder at the output first got "file exists; pass
    --overwrite to replace it", and the retry with --overwrite was refused. Whether
    --overwrite would replace it is said at once."""
    ok("fit", "--no-plots", data, *FIT, "-o", "run")
    Path("mine.csv").write_text("my notes\n")
    line = one_error(cli("detect", "run", data, "-o", "mine.csv"))
    assert "mine.csv: not a file facefinder wrote as this output" in line, line
    os.mkdir("ufold")
    Path("ufold/notes.txt").write_text("mine")
    line = one_error(cli("fit", "--no-plots", data, *FIT, "-o", "ufold"))
    assert "ufold: holds files facefinder does not write there (notes.txt)" in line, line
    line = one_error(cli("fit", "--no-plots", data, *FIT, "-o", "run"))  # facefinder's own
    assert "run: folder is not empty; pass --overwrite to replace it" in line, line
    assert Path("mine.csv").read_text() == "my notes\n"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_resume_command_pasted_into_a_shell_names_the_folder_byte_for_byte():
    """The line after an interrupt quoted a folder named with a byte that is not UTF-8 as
    'r\\udcfe 1.3', which no shell turns back into the name (found in review): such names,
    and names with characters a terminal does not show, are in ANSI-C quotes."""
    from facefinder_cli.cli.fit_resume import _quoted

    names = ["r\udcfe 1.3", "a\nb", "t\tab\\'x", "it's", "plain", "ü x"]
    for name in names:
        said = subprocess.run(["bash", "-c", f"printf %s {_quoted(name)}"], capture_output=True)
        assert said.stdout == os.fsencode(name), _quoted(name)
    assert _quoted("r\udcfe 1.3") == "$'r\\xfe 1.3'" and _quoted("ü x") == "'ü x'"


def test_messages_write_a_byte_that_is_not_utf8_as_the_csv_files_do(tmp_path):
    """stderr showed such a byte of a name as ``\\udcfe``, the CSV files as ``\\xfe``: both
    now say ``\\xfe`` (found in review)."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "facefinder_cli",
            "fit",
            b"nowhere\xfe",
            "--face-size",
            "8x8",
            "-o",
            "x",
        ],  # fmt: skip
        capture_output=True,
        cwd=tmp_path,
        env=ENV,
    )
    assert r.returncode == 1 and r.stderr == b"Error: nowhere\\xfe: no such file or folder\n"


_UNRAISABLE = """
import atexit
import sys
from facefinder_cli.cli import main, options

class HalfBuilt:  # as imageio's reader when a signal lands in its __init__
    def __del__(self):
        raise AttributeError("'PillowPlugin' object has no attribute 'images_to_write'")

setup = options._setup_logging

def setup_then_leave_one():
    setup()
    left = [HalfBuilt()]
    atexit.register(left.clear)  # collected at exit

options._setup_logging = setup_then_leave_one
main(sys.argv[1:])
"""


def test_an_error_in_a_destructor_at_exit_is_not_a_traceback():
    """After SIGTERM while imageio opened a PNG, its half-built reader's ``__del__`` printed
    "Exception ignored in ..." and a traceback after the one line (found in review): such
    errors go to the log at debug level."""
    r = subprocess.run([sys.executable, "-c", _UNRAISABLE, "--version"], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("facefinder, version")
    assert r.stderr == ""
