"""Images written to while a command reads them. A .npy stack written in place during a
streamed fit gave a run that mixed its old and new images, with exit 0 (a review found it):
fit and detect now refuse such a result in one line and write nothing; a stack replaced by
renaming a new file onto its name is safe (the reader keeps the file it opened)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, ok

from facefinder_cli import engine

FIT = ["--face-size", "8x8", "-q", "--no-plots", "--restarts", "1", "--tol", "-1"]


@pytest.fixture
def stack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("generate", "-n", "30", "--face-size", "8x8", "--size", "12x16", "--noise", "20", "-q",
       "-o", "data")  # fmt: skip
    ok("pack", "data", "x.npy", "-q")
    return np.load("x.npy")


def _in_place(images: np.ndarray, same_size: bool):
    def write() -> None:
        if same_size:  # the same bytes' count: only the time of last change tells
            time.sleep(0.05)  # (past the file system clock's tick since the file was made)
            with open("x.npy", "r+b") as f:  # as a program writing into the open file would
                f.seek(-images[0].nbytes, os.SEEK_END)
                f.write(np.ascontiguousarray(images[0] + 1).tobytes())
        else:
            np.save("x.npy", images[::2])  # truncated and written again: the same inode

    return write


def _renamed(images: np.ndarray):
    def write() -> None:
        np.save("new.npy", images[::-1])
        os.replace("new.npy", "x.npy")

    return write


def _during_fit(monkeypatch, write) -> None:
    """Run ``write`` once the fit has reported its second iteration."""
    real = engine.fit

    def fit(*args, callback=None, **kw):
        def cb(progress):
            callback(progress)
            if progress.iteration == 2:
                write()

        return real(*args, callback=cb, **kw)

    monkeypatch.setattr(engine, "fit", fit)


def _one_error(r) -> str:
    assert r.exit_code == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: x.npy: written to while"), r.stderr
    return lines[0]


@pytest.mark.parametrize("same_size", [False, True])
def test_a_stack_written_in_place_during_a_fit_is_refused(stack, monkeypatch, same_size):
    _during_fit(monkeypatch, _in_place(stack, same_size))
    line = _one_error(cli("fit", "x.npy", *FIT, "--max-iter", 4, "-o", "run"))
    if same_size:  # found once the fit is done (when cut short: as the next pass reads it)
        assert "the run was not written" in line and "rename a new file" in line
    assert not Path("run/result.npz").exists() and not Path("run/face.png").exists()


def test_a_stack_replaced_by_renaming_during_a_fit_gives_the_fit_of_the_old_one(stack, monkeypatch):
    ok("fit", "x.npy", *FIT, "--max-iter", 4, "-o", "before")
    _during_fit(monkeypatch, _renamed(stack))
    ok("fit", "x.npy", *FIT, "--max-iter", 4, "-o", "during")
    with np.load("before/result.npz") as a, np.load("during/result.npz") as b:
        np.testing.assert_array_equal(a["face"], b["face"])
        np.testing.assert_array_equal(a["elbo"], b["elbo"])


def test_a_fit_of_two_faces_is_refused_too(stack, monkeypatch):
    real = engine.fit_mixture

    def fit_mixture(*args, **kw):
        result = real(*args, **kw)
        _in_place(stack, same_size=False)()
        return result

    monkeypatch.setattr(engine, "fit_mixture", fit_mixture)
    line = _one_error(cli("fit", "x.npy", *FIT, "--faces", 2, "--max-iter", 3, "-o", "run"))
    assert "the run was not written" in line
    assert not Path("run/result.npz").exists()


@pytest.mark.parametrize("draw", [False, True])
def test_detect_refuses_positions_of_a_stack_written_meanwhile(stack, monkeypatch, draw):
    ok("fit", "x.npy", *FIT, "--max-iter", 3, "-o", "run")
    real = engine.detect

    def detect(*args, **kw):
        found = real(*args, **kw)
        if not draw:
            _in_place(stack, same_size=False)()
        return found

    monkeypatch.setattr(engine, "detect", detect)
    if draw:  # written while the boxed images are drawn: after the CSV
        from facefinder_cli import images

        real_boxed = images.boxed

        written = []

        def boxed(*args, **kw):
            if not written:  # the same size: every image reads, the check after them tells
                _in_place(stack, same_size=True)()
                written.append(True)
            return real_boxed(*args, **kw)

        monkeypatch.setattr(images, "boxed", boxed)
    r = cli("detect", "run", "x.npy", "-o", "found.csv", *(["--draw", "boxes"] if draw else []))
    line = _one_error(r)
    if draw:
        assert "found.csv was written, the boxed images were not" in line
        assert Path("found.csv").exists() and not Path("boxes").exists()
    else:
        assert "the positions were not written" in line
        assert not Path("found.csv").exists()


def test_a_zarr_array_with_a_chunk_written_during_a_fit_is_refused(stack, monkeypatch):
    pytest.importorskip("zarr", reason="the [dask] extra is not installed")
    ok("pack", "data", "x.zarr", "-q")
    chunk = max((p for p in Path("x.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"),
                key=lambda p: p.stat().st_size)  # fmt: skip

    def write() -> None:
        time.sleep(0.05)
        chunk.write_bytes(chunk.read_bytes())  # the same bytes, written again

    _during_fit(monkeypatch, write)
    r = cli("fit", "x.zarr", *FIT, "--max-iter", 4, "-o", "run")
    assert r.exit_code == 1 and "x.zarr: written to while it was being read" in r.stderr
    assert r.stderr.strip().endswith("run the command again")  # (no renaming: a folder)
    assert not Path("run/result.npz").exists()


@pytest.mark.parametrize("target", ["y.npy", "y.zarr"])
def test_pack_refuses_a_stack_written_while_it_was_packed(stack, monkeypatch, target):
    if target.endswith(".zarr"):
        pytest.importorskip("zarr", reason="the [dask] extra is not installed")
    from facefinder_cli.images import packing

    real = packing._as_dtype
    calls = []

    def as_dtype(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            _in_place(stack, same_size=True)()
        return real(*args, **kw)

    monkeypatch.setattr(packing, "_as_dtype", as_dtype)
    r = cli("pack", "x.npy", target)
    assert r.exit_code == 1, r.stderr
    assert r.stderr.strip() == (
        "Error: x.npy: written to while it was being packed: the stack would mix old and new "
        "images and was not written; pack it again"
    )
    assert not Path(target).exists() and len(calls) > 2


@pytest.mark.parametrize("target", ["y.npy", "y.zarr"])
def test_pack_refuses_a_zarr_source_written_while_it_was_packed(stack, monkeypatch, target):
    """A Zarr source was not checked at all (found in review): pack compared the path's size
    and time, which a folder has none of."""
    pytest.importorskip("zarr", reason="the [dask] extra is not installed")
    from facefinder_cli.images import packing

    ok("pack", "data", "x.zarr", "-q")
    chunk = max((p for p in Path("x.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"),
                key=lambda p: p.stat().st_size)  # fmt: skip
    real = packing._as_dtype
    calls = []

    def as_dtype(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            time.sleep(0.05)
            chunk.write_bytes(chunk.read_bytes())  # the same bytes, written again
        return real(*args, **kw)

    monkeypatch.setattr(packing, "_as_dtype", as_dtype)
    r = cli("pack", "x.zarr", target)
    assert r.exit_code == 1, r.stderr
    assert r.stderr.startswith("Error: x.zarr: written to while it was being packed"), r.stderr
    assert not Path(target).exists()


def test_a_fit_that_saved_checkpoints_says_to_run_again_with_overwrite(stack, monkeypatch):
    """Its checkpoint is of the old images: running again said "holds an interrupted fit:
    --resume", and --resume refused the new images (found in review)."""
    real = engine.fit
    _during_fit(monkeypatch, _in_place(stack, same_size=True))
    args = ["fit", "x.npy", *FIT, "--max-iter", 4, "--checkpoint-every", 1, "-o", "run"]
    line = _one_error(cli(*args))
    assert "run the command again with --overwrite (to replace a .npy stack meanwhile" in line
    monkeypatch.setattr(engine, "fit", real)
    ok(*args, "--overwrite")
    assert Path("run/result.npz").exists()
