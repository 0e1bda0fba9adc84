"""runs: a fit on disk. Results, histories, truths and checkpoints written and read back."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import warnings

import numpy as np
import pytest

from facefinder_cli import engine as E
from facefinder_cli import runs, synthetic
from facefinder_cli.errors import InputError

OPTIONS = {"input": "imgs", "input_path": "/data/imgs", "layout": "auto", "zoom": None}


@pytest.fixture(scope="module")
def scene():
    face, background = synthetic.cartoon_face(8, 6), synthetic.texture("stripes", (14, 18))
    return synthetic.make_dataset(face, background, 25, 30.0, seed=4)


def _fit(scene, **kw):
    seen: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", E.ConvergenceWarning)
        r = E.fit(scene.images, (8, 6), seed=2, callback=seen.append, **kw)
    return r, [p.checkpoint for p in seen]


@pytest.fixture(scope="module")
def result(scene):
    return _fit(scene, restarts=2, max_iter=7)[0]


def test_a_saved_result_reads_back_exactly(result, tmp_path):
    names = [f"img{k}.png" for k in range(25)]
    errors = {c: np.linspace(0, 1, result.n_iter + 1) for c in runs.ERROR_COLUMNS}
    written = runs.save_run(tmp_path, result, names=names, options=OPTIONS, errors=errors)
    assert sorted(written) == sorted(p.name for p in tmp_path.iterdir())
    run = runs.load_run(tmp_path)
    for k in ("face", "background", "noise_std", "prior"):
        np.testing.assert_array_equal(getattr(run.params, k), getattr(result, k))
    for k in ("elbo", "log_likelihood", "seconds"):
        np.testing.assert_array_equal(getattr(run, k), getattr(result, k))
    assert (run.method, run.init, run.n_images, run.data) == ("soft", "median", 25, "/data/imgs")
    kept = result.restarts[result.best_restart]
    assert run.n_values == 25 * 14 * 18 and run.prior_fixed_until == kept.prior_fixed_until
    for c in runs.ERROR_COLUMNS:
        np.testing.assert_array_equal(run.errors[c], errors[c])
    with np.load(tmp_path / runs.RESULT) as z:
        saved = json.loads(str(z["settings"]))
        np.testing.assert_array_equal(z["gain"], result.gain)
        gain = result.restarts[1].gain
        np.testing.assert_array_equal(z["restart_gain"][1][: len(gain)], gain)
        assert np.isnan(z["restart_gain"][1][len(gain) :]).all()
        assert list(z["names"]) == names
    fields = {f.name for f in dataclasses.fields(E.FitSettings)}
    assert E.FitSettings.from_dict({k: saved[k] for k in fields}) == result.settings
    assert {k: saved[k] for k in OPTIONS} == OPTIONS


def test_the_history_and_positions_tables_hold_the_result(result, tmp_path):
    runs.save_run(tmp_path, result, names=[f"a,{k}" for k in range(25)])
    history = runs.load_run(tmp_path / runs.HISTORY)
    np.testing.assert_array_equal(history.elbo, result.elbo)
    np.testing.assert_array_equal(history.log_likelihood, result.log_likelihood)
    with open(tmp_path / runs.HISTORY, newline="") as f:
        rows = list(csv.DictReader(f))
    assert math.isnan(float(rows[0]["gain"]))
    assert [float(r["gain"]) for r in rows[1:]] == list(result.gain[1:])
    with open(tmp_path / runs.POSITIONS, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["image", "row", "column", "probability"]
    assert [r[0] for r in table[1:]] == [f"a,{k}" for k in range(25)]  # quoted, not split
    got = np.array([[int(r[1]), int(r[2])] for r in table[1:]])
    np.testing.assert_array_equal(got, result.positions)
    np.testing.assert_allclose([float(r[3]) for r in table[1:]], result.position_probability, 1e-5)


def test_params_read_from_a_run_a_result_or_a_truth(result, scene, tmp_path):
    (tmp_path / "run").mkdir()
    runs.save_run(tmp_path / "run", result, names=[str(k) for k in range(25)])
    for where in (tmp_path / "run", tmp_path / "run" / runs.RESULT):
        np.testing.assert_array_equal(runs.load_params(where).face, result.face)
    runs.save_truth(tmp_path / "truth.npz", scene.truth, scene.positions)
    truth = runs.load_truth(tmp_path / "truth.npz")
    np.testing.assert_array_equal(truth.positions, scene.positions)
    np.testing.assert_array_equal(truth.params.background, scene.truth.background)
    np.testing.assert_array_equal(runs.load_params(tmp_path / "truth.npz").face, scene.truth.face)
    with pytest.raises(InputError, match="no such file"):
        runs.load_truth(tmp_path / "nothing.npz")
    with pytest.raises(InputError, match="holds no parameters"):
        runs.load_params(tmp_path / "run" / runs.HISTORY)


@pytest.mark.parametrize("method", ["soft", "plain", "mc"])
def test_a_checkpoint_reads_back_field_for_field_and_resumes_bit_for_bit(scene, tmp_path, method):
    kw = {"plain": dict(accelerate="none"), "soft": dict(tol=-1)}.get(method, {})
    method = "soft" if method == "plain" else method
    whole, seen = _fit(scene, method=method, restarts=2, max_iter=6, **kw)
    cp = seen[9]  # restart 2, after its third iteration: restart 1 is finished
    assert cp.restart == 1 and cp.iteration == 2 and len(cp.finished) == 1
    extra = {"errors": {"0": [{"face_rmse": 1.5}]}}
    runs.save_checkpoint(tmp_path / runs.CHECKPOINT, cp, OPTIONS, extra)
    back, options, extra_back = runs.load_checkpoint(tmp_path)
    assert options == OPTIONS and extra_back == extra
    for f in dataclasses.fields(E.Checkpoint):
        a, b = getattr(back, f.name), getattr(cp, f.name)
        if f.name == "finished":
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x.positions, y.positions)
                np.testing.assert_array_equal(x.history.gain, y.history.gain)
                np.testing.assert_array_equal(x.params.face, y.params.face)
        elif f.name == "params":
            for k in ("face", "background", "noise_std", "prior"):
                np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        else:
            np.testing.assert_array_equal(a, b, err_msg=f.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", E.ConvergenceWarning)
        resumed = E.fit(scene.images, back.settings, resume=back)
    for k in ("face", "background", "prior", "elbo", "log_likelihood", "gain", "passes"):
        np.testing.assert_array_equal(getattr(resumed, k), getattr(whole, k), err_msg=k)
    np.testing.assert_array_equal(resumed.positions, whole.positions)


def test_checkpoints_of_the_previous_format_and_damaged_ones_are_named(scene, tmp_path):
    cp = _fit(scene, max_iter=2)[1][-1]
    path = tmp_path / runs.CHECKPOINT
    runs.save_checkpoint(path, cp, OPTIONS, {})
    with np.load(path) as z:
        arrays = dict(z)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "gain"})
    with pytest.raises(InputError, match="a checkpoint of an earlier format"):
        runs.load_checkpoint(tmp_path)
    np.savez(path, **{**arrays, "settings": json.dumps({"method": "soft"})})
    with pytest.raises(InputError, match=r"another version of facefinder \(its settings lack"):
        runs.load_checkpoint(tmp_path)
    settings = json.loads(str(arrays["settings"]))
    np.savez(path, **{**arrays, "settings": json.dumps({**settings, "method": "magic"})})
    with pytest.raises(InputError, match="a damaged value: unknown method 'magic'"):
        runs.load_checkpoint(tmp_path)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "rng_state"})
    with pytest.raises(InputError, match="no 'rng_state'"):
        runs.load_checkpoint(path)
    path.unlink()
    with pytest.raises(InputError, match="nothing to resume"):
        runs.load_checkpoint(tmp_path)
    path.mkdir()  # a folder by that name
    with pytest.raises(InputError, match="checkpoint.npz: not a checkpoint file: nothing to"):
        runs.load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda a: {**a, "finished0_face": np.zeros((2, 2))}, "a finished restart's parameters"),
        (
            lambda a: {**a, "finished0_log_likelihood": a["finished0_log_likelihood"] * np.nan},
            "not numbers",
        ),  # fmt: skip
        (lambda a: {**a, "finished0_n_iter": 99}, "iterations are out of range"),
        (lambda a: {**a, "finished0_positions": a["finished0_positions"] + 99}, "out of range"),
        (lambda a: {**a, "prior_fixed_until": 9}, "when the prior was held"),
        # an edited probability went on to positions.csv (7.5) or crashed fit's note (NaN)
        (lambda a: {**a, "finished0_probability": a["finished0_probability"] * np.nan}, "0..1"),
        (lambda a: {**a, "finished0_probability": a["finished0_probability"] + 7.5}, "0..1"),
        (lambda a: {**a, "data_fingerprint": _more_sums(a)}, "record of its images is damaged"),
    ],
)
def test_a_damaged_checkpoint_does_not_resume(scene, tmp_path, edit, needle):
    cp = _fit(scene, restarts=2, max_iter=3)[1][-1]  # restart 2: restart 1 is finished
    path = tmp_path / runs.CHECKPOINT
    runs.save_checkpoint(path, cp, OPTIONS, {})
    with np.load(path) as z:
        arrays = dict(z)
    np.savez(path, **edit(arrays))
    back = runs.load_checkpoint(path)[0]
    with pytest.raises(E.CheckpointError, match=needle):
        E.fit(scene.images, back.settings, resume=back)


def _more_sums(arrays):
    record = json.loads(str(arrays["data_fingerprint"]))
    return json.dumps({**record, "sums": record["sums"] + [1.0]})


def test_a_truncated_result_is_called_damaged_not_foreign(tmp_path):
    """A result.npz cut short (a copy interrupted, a full disk) is a zip without its
    directory: named damaged or truncated, not 'not a facefinder result'."""
    params = E.Params(np.zeros((2, 2)), np.zeros((3, 3)), 1.0, np.full((2, 2), 0.25))
    path = tmp_path / "truth.npz"
    runs.save_truth(path, params, np.zeros((4, 2), dtype=int))
    assert runs.load_params(path).noise_std == 1.0
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputError, match=r"truth.npz: a facefinder result or truth file is damag"):
        runs.load_params(path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match=r"truth.npz: not a facefinder result or truth file \("):
        runs.load_params(path)


def test_a_run_behind_a_broken_link_is_named_so(tmp_path, monkeypatch):
    """plot-elbo and detect read runs through runs: a dangling link or a loop of links is
    called a broken symbolic link, as load_stack calls one (it said 'no such file')."""
    monkeypatch.chdir(tmp_path)
    os.symlink("nowhere", "dangling")
    os.symlink("loop", "loop")
    for name in ("dangling", "loop"):
        with pytest.raises(InputError, match=f"^{name}: broken symbolic link$"):
            runs.load_run(name)
    with pytest.raises(InputError, match="^missing: no such file or folder$"):
        runs.load_run("missing")


def test_a_noise_std_that_is_not_a_number_says_what_it_is(tmp_path):
    """It said 'not a single number (shape ())' for a string, which is a single value."""
    params = E.Params(np.zeros((2, 2)), np.zeros((3, 3)), 1.0, np.full((2, 2), 0.25))
    path = tmp_path / "truth.npz"
    runs.save_truth(path, params, np.zeros((4, 2), dtype=int))
    with np.load(path) as z:
        arrays = dict(z)
    for value, needle in ((np.array("abc"), r"\(dtype <U3\)"), (np.ones(2), r"\(shape \(2,\)\)")):
        np.savez(path, **{**arrays, "noise_std": value})
        with pytest.raises(InputError, match="'noise_std' is not a single number " + needle):
            runs.load_params(path)
