"""Interrupted fits resume exactly: engine checkpoints, and SIGINT/SIGTERM on the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import quiet_fit

from facefinder_cli import engine as E
from facefinder_cli import synthetic as S

SAME = (
    "face",
    "background",
    "prior",
    "elbo",
    "log_likelihood",
    "positions",
    "position_probability",
    "unidentified",
)


@pytest.fixture(scope="module")
def data():
    return S.make_dataset(S.cartoon_face(16, 16), S.texture("stripes", (20, 30)), 80, 250.0, seed=2)


@pytest.mark.parametrize("method", ["soft", "hard", "mc"])
@pytest.mark.parametrize("where", [(0, 0), (0, 3), (1, 5), (2, 0)])
def test_resuming_from_any_checkpoint_gives_the_same_fit(data, method, where):
    kw = dict(method=method, init="random", restarts=3, seed=5, max_iter=12)
    seen = []
    whole = quiet_fit(data.images, (16, 16), callback=lambda p: seen.append(p.checkpoint), **kw)
    restart, iteration = where
    cp = next(c for c in seen if (c.restart, c.iteration) == (restart, iteration))
    again = quiet_fit(data.images, (16, 16), resume=cp, **kw)
    for name in SAME:
        np.testing.assert_array_equal(getattr(again, name), getattr(whole, name), err_msg=name)
    assert again.noise_std == whole.noise_std and again.best_restart == whole.best_restart
    for a, b in zip(again.restarts, whole.restarts):
        np.testing.assert_array_equal(a.elbo, b.elbo)
        assert (a.n_iter, a.converged, a.prior_fixed_until) == (
            b.n_iter,
            b.converged,
            b.prior_fixed_until,
        )


def test_a_checkpoint_after_convergence_resumes_to_the_end(data):
    seen = []
    whole = E.fit(data.images, (16, 16), seed=1, callback=lambda p: seen.append(p.checkpoint))
    assert whole.converged and seen[-1].converged
    again = E.fit(data.images, (16, 16), seed=1, resume=seen[-1])
    np.testing.assert_array_equal(again.face, whole.face)
    assert again.n_iter == whole.n_iter


def test_a_checkpoint_of_another_fit_is_refused(data):
    seen = []
    quiet_fit(
        data.images, (16, 16), seed=1, max_iter=2, callback=lambda p: seen.append(p.checkpoint)
    )
    with pytest.raises(ValueError, match="another fit"):
        E.fit(data.images, (16, 16), seed=2, resume=seen[-1])


def _checkpoint(data, **kw):
    seen = []
    quiet_fit(data.images, (16, 16), seed=1, max_iter=3, callback=seen.append, **kw)
    return seen[-1].checkpoint


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(method="hard"), "method='soft' (this fit: 'hard')"),
        (dict(max_iter=4), "max_iter=3 (this fit: 4)"),
        (dict(dtype="float32"), "dtype='float64' (this fit: 'float32')"),
        (dict(chunk_size=7), "chunk_size=None (this fit: 7)"),
        (dict(init_params={"noise_std": 5.0}), "started from other given parameters"),
    ],
)
def test_a_checkpoint_resumes_only_under_its_own_settings(data, change, needle):
    cp = _checkpoint(data)
    kw = dict(seed=1, max_iter=3) | change
    with pytest.raises(ValueError, match="belongs to another fit") as err:
        E.fit(data.images, (16, 16), resume=cp, **kw)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda X: X + 1.0,  # the same shifted values: only the shift tells
        lambda X: X[::-1],  # reordered
        lambda X: np.concatenate([X[:1], X[2:3], X[1:2], X[3:]]),  # two images swapped
        lambda X: np.where(np.arange(X.size).reshape(X.shape) == 12345, X + 1, X),  # a pixel
        lambda X: X[:, :, ::-1],  # every image mirrored: the same sums of squares
    ],
)
def test_a_checkpoint_refuses_other_images_of_the_same_size(data, change):
    cp = _checkpoint(data)
    with pytest.raises(ValueError, match="the images differ from those the checkpoint"):
        quiet_fit(change(data.images), (16, 16), seed=1, max_iter=3, resume=cp)


def test_a_checkpoint_refuses_another_number_of_images(data):
    cp = _checkpoint(data)
    with pytest.raises(ValueError, match="made from 80 images of 20x30; these are 79 images"):
        E.fit(data.images[:79], (16, 16), seed=1, max_iter=3, resume=cp)


def test_threads_and_memory_do_not_belong_to_the_checkpoint(data):
    whole = quiet_fit(data.images, (16, 16), seed=1, max_iter=6)
    seen = []
    quiet_fit(data.images, (16, 16), seed=1, max_iter=6, callback=seen.append)
    cp = seen[3].checkpoint
    again = quiet_fit(
        data.images.copy(), (16, 16), seed=1, max_iter=6, resume=cp, workers=2, memory_limit=0
    )
    np.testing.assert_array_equal(again.face, whole.face)


# --- the real command line ---------------------------------------------------------------------

FF = [sys.executable, "-m", "facefinder_cli"]


def _run_until_checkpoint(args, folder: Path, sig: int) -> subprocess.CompletedProcess:
    """Start ``facefinder fit``, wait for its first checkpoint, then send ``sig``."""
    proc = subprocess.Popen(FF + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (folder / "checkpoint.npz").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within a minute"
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # ~25 ms per iteration: long enough to be interrupted after the first of 24.
    d = S.make_dataset(S.cartoon_face(16, 14), S.texture("checker", (40, 52)), 400, 220.0, seed=3)
    path = tmp_path_factory.mktemp("stack") / "stack.npz"
    np.savez(path, images=d.images)
    return path


_ARGS = [
    *("--face-size", "24x20", "--restarts", "2", "--init", "random", "--max-iter", "12"),
    *("--tol", "-inf", "--method", "mc", "--seed", "4", "-q"),
    "--no-plots",  # kept on resume; the plots cost each process a second
]


@pytest.fixture(scope="module")
def whole(stack, tmp_path_factory):
    """The uninterrupted fit that the interrupted ones must end as (its result.npz)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    done = subprocess.run(FF + ["fit", str(stack), *_ARGS, "-o", str(out)],
                          capture_output=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out / "result.npz"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_fit_resumes_bit_for_bit(tmp_path, stack, whole, sig, code):
    args = [str(stack), *_ARGS]
    cut = tmp_path / "cut"
    stopped = _run_until_checkpoint(
        ["fit", *args, "--checkpoint-every", "1", "-o", str(cut)], cut, sig
    )
    assert stopped.returncode == code, stopped.stderr
    message = stopped.stderr.decode().strip().splitlines()[-1]
    assert "interrupted after iteration" in message and f"--resume {cut}" in message
    # nothing half-written beside it (the marker says the folder is facefinder's run)
    assert sorted(os.listdir(cut)) == [".facefinder", "checkpoint.npz"]

    resumed = subprocess.run(FF + ["fit", "--resume", str(cut), "-q"], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    with np.load(whole) as a, np.load(cut / "result.npz") as b:
        assert set(a.files) == set(b.files)
        for key in a.files:
            if key in ("seconds", "restart_seconds", "settings"):
                continue  # timings, and the command line
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert "checkpoint.npz" not in os.listdir(cut)


def test_resume_refuses_other_options_and_missing_checkpoints(tmp_path, stack):
    r = subprocess.run(FF + ["fit", "--resume", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nothing to resume" in r.stderr
    r = subprocess.run(
        FF + ["fit", "--resume", str(tmp_path), "--max-iter", "3"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "--max-iter" in r.stderr and r.stderr.count("\n") == 1


def test_moved_restarts_resume_bit_for_bit_through_a_checkpoint_file(data, tmp_path, monkeypatch):
    """Restarts 1, 3, 4 and 5 of the median start begin from restart 0's fit (its positions),
    6 from the sampler with its background: from a checkpoint file, whose finished restarts
    come back from disk, they are built the same."""
    from facefinder_cli import runs
    from facefinder_cli.engine import sampler

    monkeypatch.setattr(sampler, "SAMPLER_SWEEPS", 5)  # (the same sampler, quicker)
    kw = dict(restarts=7, seed=5, max_iter=6)  # 1, 3 to 5 moved, 2 annealed, 6 sampled
    seen = []
    whole = quiet_fit(data.images, (16, 16), callback=lambda p: seen.append(p.checkpoint), **kw)
    passes = [int(h.passes[0]) for h in whole.restarts]
    assert passes == [0, 1, E.ANNEAL_PASSES, 1, 1, 1, 5]
    for where in ((1, 0), (2, 0), (3, 0), (3, 2), (6, 0), (6, 2)):
        cp = next(c for c in seen if (c.restart, c.iteration) == where)
        runs.save_checkpoint(tmp_path / "checkpoint.npz", cp, {}, {})
        back = runs.load_checkpoint(tmp_path / "checkpoint.npz")[0]
        again = quiet_fit(data.images, back.settings, resume=back)
        for name in SAME:
            np.testing.assert_array_equal(getattr(again, name), getattr(whole, name), name)
        for a, b in zip(again.restarts, whole.restarts):
            np.testing.assert_array_equal(a.elbo, b.elbo)


def test_a_checkpoint_from_before_the_moved_restarts_is_refused_in_one_line(data, tmp_path):
    from facefinder_cli import runs

    seen = []
    quiet_fit(data.images, (16, 16), restarts=2, seed=5, max_iter=2,
              callback=lambda p: seen.append(p.checkpoint))  # fmt: skip
    path = tmp_path / "checkpoint.npz"
    runs.save_checkpoint(path, seen[-1], {}, {})
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k not in ("restart_starts", "restart_scheme")}
    np.savez(path, **arrays)  # as versions before the moved windows wrote it
    with pytest.raises(runs.InputError, match="whose later restarts started otherwise"):
        runs.load_checkpoint(path)
    one = [c for c in seen if c.restart == 0][-1]  # one restart: nothing started otherwise
    runs.save_checkpoint(path, replace(one, settings=replace(one.settings, restarts=1)), {}, {})
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k not in ("restart_starts", "restart_scheme")}
    np.savez(path, **arrays)
    assert runs.load_checkpoint(path)[0].settings.restarts == 1


@pytest.mark.parametrize(
    "scheme, restarts, alike",
    [
        ("moved-windows", 6, True),  # the version before: restart 6 annealed
        ("moved-windows", 7, False),
        ("moved-windows, sampled", 3, True),  # two commits that sampled restart 3
        ("moved-windows, sampled", 4, False),
    ],
)
def test_a_checkpoint_of_another_scheme_resumes_only_where_restarts_start_alike(
    data, tmp_path, scheme, restarts, alike
):
    """Restart 6 annealed under a random prior before the sampler took its place (and for two
    commits the sampler was restart 3): a checkpoint of another scheme resumes where its
    restarts start as this version's do, and is refused in one line where they do not."""
    from facefinder_cli import runs

    seen = []
    quiet_fit(data.images, (16, 16), restarts=2, seed=5, max_iter=2,
              callback=lambda p: seen.append(p.checkpoint))  # fmt: skip
    state = replace(seen[-1], settings=replace(seen[-1].settings, restarts=restarts))
    path = tmp_path / "checkpoint.npz"
    runs.save_checkpoint(path, state, {}, {})
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k not in ("restart_scheme", "restart_starts")}
        # what the version before reads: the scheme up to six restarts, none beyond (so that
        # it refuses a checkpoint of this version whose restart 6 it would start otherwise)
        assert ("restart_starts" in z) == (restarts <= 6)
    key = "restart_starts" if scheme == "moved-windows" else "restart_scheme"
    arrays[key] = np.array(scheme)  # as that version wrote it
    np.savez(path, **arrays)
    if alike:
        assert runs.load_checkpoint(path)[0].settings.restarts == restarts
    else:
        with pytest.raises(runs.InputError, match="whose later restarts started otherwise"):
            runs.load_checkpoint(path)
