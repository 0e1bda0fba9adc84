"""Several faces on one background (issue 16): the mixture's E-step, M-step and bound against
the brute-force reference, and recovery of three faces."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import reference as ref
from PIL import Image

from facefinder_cli import engine as E
from facefinder_cli import synthetic as S
from facefinder_cli.engine import mixture as M
from facefinder_cli.engine.data import _Data


def _tiny(seed=0, N=2):
    """4 images of 6x7 with 2 faces of 3x2, and parameters nowhere near a fit."""
    rng = np.random.default_rng(seed)
    X = rng.normal(100, 30, size=(4, 6, 7))
    p = M.MixtureParams(
        faces=rng.normal(100, 30, size=(N, 3, 2)),
        background=rng.normal(100, 30, size=(6, 7)),
        noise_std=25.0,
        weights=np.array([0.3, 0.7][:N]) / sum([0.3, 0.7][:N]),
        prior=rng.dirichlet(np.ones(24)).reshape(4, 6),
    )
    return X, p


def _args(p):
    return p.faces, p.background, p.noise_std, p.weights, p.prior


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_e_step_matches_the_reference(dtype):
    X, p = _tiny()
    fast = M.mixture_log_joint(X, p)
    slow = ref.mixture_log_joint(X, *_args(p))
    np.testing.assert_allclose(fast, slow, rtol=1e-10)
    data = _Data(X, (3, 2), dtype=dtype, chunk_size=3)
    stats, (faces, positions, probability, face_p) = M._mix_pass(data, p, "soft", True)
    q, ll = ref.mixture_posterior(X, *_args(p))
    tol = 1e-9 if dtype == "float64" else 1e-4
    assert stats.log_likelihood == pytest.approx(ll.sum(), rel=tol)
    best = [np.unravel_index(np.argmax(q[k]), q.shape[1:]) for k in range(4)]
    assert faces.tolist() == [int(b[0]) for b in best]
    assert positions.tolist() == [[int(b[1]), int(b[2])] for b in best]
    np.testing.assert_allclose(probability, [q[k][best[k]] for k in range(4)], rtol=tol * 10)
    np.testing.assert_allclose(face_p, [q[k, best[k][0]].sum() for k in range(4)], rtol=tol * 10)


@pytest.mark.parametrize("update_prior", [True, False])
def test_m_step_and_bound_match_the_reference(update_prior):
    X, p = _tiny(1)
    data = _Data(X, (3, 2), chunk_size=3)
    stats, _ = M._mix_pass(data, p, "soft", True)
    new, info = stats.m_step(p, update_prior=update_prior)
    q, _ = ref.mixture_posterior(X, *_args(p))
    faces, background, noise_std, weights, prior = ref.mixture_m_step(X, q, 3, 2, p.background)
    np.testing.assert_allclose(new.faces, faces, rtol=1e-9)
    np.testing.assert_allclose(new.background, background, rtol=1e-9)
    np.testing.assert_allclose(new.weights, weights, rtol=1e-9)
    if update_prior:
        np.testing.assert_allclose(new.prior, prior, rtol=1e-9, atol=1e-15)
        want = ref.mixture_lower_bound(X, faces, background, noise_std, weights, prior, q)
    else:
        np.testing.assert_array_equal(new.prior, p.prior)
        want = ref.mixture_lower_bound(X, faces, background, noise_std, weights, p.prior, q)
    assert new.noise_std == pytest.approx(noise_std, rel=1e-9)
    assert info["elbo"] == pytest.approx(want, rel=1e-9)
    # and the bound at the E-step's parameters is the log-likelihood (soft EM: q exact)
    assert stats.elbo == pytest.approx(ref.mixture_lower_bound(X, *_args(p), q), rel=1e-9)


def test_hard_and_monte_carlo_sums_match_the_reference():
    """Hard EM's sums are the reference M-step at the one-hot q of the best pairs; Monte-Carlo
    EM's at the empirical q of the draws."""
    X, p = _tiny(2)
    data = _Data(X, (3, 2), chunk_size=3)
    stats, (faces, positions, _, _) = M._mix_pass(data, p, "hard", True)
    q = np.zeros((4, 2, 4, 6))
    q[np.arange(4), faces, positions[:, 0], positions[:, 1]] = 1.0
    new, info = stats.m_step(p, update_prior=True)
    want = ref.mixture_m_step(X, q, 3, 2, p.background)
    np.testing.assert_allclose(new.faces, want[0], rtol=1e-9)
    np.testing.assert_allclose(new.background, want[1], rtol=1e-9)
    assert new.noise_std == pytest.approx(want[2], rel=1e-9)
    # hard EM's objective: the best pairs' log joint, before and after the M-step
    assert stats.elbo == pytest.approx(ref.mixture_lower_bound(X, *_args(p), q), rel=1e-9)
    assert info["elbo"] == pytest.approx(ref.mixture_lower_bound(X, *want, q), rel=1e-9)
    rng = np.random.default_rng(5)
    stats, _ = M._mix_pass(data, p, "mc", True, rng, 7)
    u = np.random.default_rng(5).random((4, 7))  # the same draws, one chunk of 3 then 1
    qp, _ = ref.mixture_posterior(X, *_args(p))
    counts = np.zeros_like(qp)
    for k in range(4):
        cdf = np.cumsum(qp[k].ravel())
        for v in u[k]:
            counts[k].ravel()[min(np.searchsorted(cdf / cdf[-1], v, side="right"), 47)] += 1
    new, info = stats.m_step(p, update_prior=True)
    want = ref.mixture_m_step(X, counts / 7, 3, 2, p.background)
    np.testing.assert_allclose(new.faces, want[0], rtol=1e-9)
    np.testing.assert_allclose(new.background, want[1], rtol=1e-9)
    assert new.noise_std == pytest.approx(want[2], rel=1e-9)
    np.testing.assert_allclose(new.weights, want[3], rtol=1e-12)
    np.testing.assert_allclose(new.prior, want[4], rtol=1e-12, atol=1e-15)
    # the bound of the pass (at the E-step's parameters, the empirical q of the draws) and
    # after the M-step, by definition
    assert stats.elbo == pytest.approx(ref.mixture_lower_bound(X, *_args(p), counts / 7), rel=1e-9)
    assert info["elbo"] == pytest.approx(ref.mixture_lower_bound(X, *want, counts / 7), rel=1e-9)


def test_unseen_pixels_and_unchosen_faces_keep_their_values():
    """A face of 4x5 in 6x7 images covers 2x3 pixels in every image: the background keeps
    its previous values there; a face of weight 0 takes no image and keeps its values."""
    rng = np.random.default_rng(4)
    X = rng.normal(100, 30, size=(5, 6, 7))
    p = M.MixtureParams(rng.normal(100, 30, size=(2, 4, 5)), rng.normal(100, 30, size=(6, 7)),
                        20.0, np.array([1.0, 0.0]), np.full((3, 3), 1 / 9))  # fmt: skip
    stats, _ = M._mix_pass(_Data(X, (4, 5)), p, "soft", True)
    new, info = stats.m_step(p, update_prior=True)
    q, _ = ref.mixture_posterior(X, *_args(p))
    want = ref.mixture_m_step(X, q, 4, 5, p.background, p.faces)
    assert info["unidentified"].sum() == 6
    np.testing.assert_array_equal(new.background[2:4, 2:5], p.background[2:4, 2:5])
    np.testing.assert_allclose(new.background, want[1], rtol=1e-9)
    np.testing.assert_array_equal(new.faces[1], p.faces[1])
    np.testing.assert_allclose(new.faces, want[0], rtol=1e-9)
    assert new.weights[1] == 0.0 and new.weights[0] == pytest.approx(1.0)
    assert info["elbo"] == pytest.approx(ref.mixture_lower_bound(X, *want, q), rel=1e-9)


def test_the_prior_is_learnt_as_prior_update_says_and_the_seed_is_kept():
    faces, labels, pos, X = _three_faces()
    X = X[:60]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = E.FitSettings((12, 10), restarts=1)  # (the prior's handling: one restart each)
        never = M.fit_mixture(X, E.FitSettings.of(one, prior_update="never", max_iter=15), 3)
        late = M.fit_mixture(X, E.FitSettings.of(one, seed=1, max_iter=40), 3)
        always = M.fit_mixture(X, E.FitSettings.of(one, seed=1, prior_update="always",
                                                   max_iter=1), 3)  # fmt: skip
    assert np.ptp(never.params.prior) == 0.0  # held uniform
    assert np.ptp(late.params.prior) > 0 and np.ptp(always.params.prior) > 0
    assert isinstance(never.settings.seed, int)  # None resolved: the fit repeats from it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = M.fit_mixture(X, never.settings, 3)
    np.testing.assert_array_equal(again.params.faces, never.params.faces)


def test_identical_images_reach_the_noise_floor():
    X = np.repeat(S.texture("clouds", (12, 14), seed=1)[None], 6, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = M.fit_mixture(X, E.FitSettings((4, 4), seed=0, max_iter=5, restarts=1), 2)
    data = _Data(X, (4, 4))
    assert r.params.noise_std == pytest.approx(data.noise_floor)


def test_one_face_is_the_one_face_model():
    X, p = _tiny(3, N=1)
    lj = M.mixture_log_joint(X, p)[:, 0]
    want = ref.log_joint(X, p.faces[0], p.background, p.noise_std, p.prior)
    np.testing.assert_allclose(lj, want, rtol=1e-10)


def _three_faces():
    h, w = 12, 10
    faces = [S.cartoon_face(h, w), 255 - S.cartoon_face(h, w),
             np.kron([[60.0, 200.0], [200.0, 60.0]], np.ones((h // 2, w // 2)))]  # fmt: skip
    background = S.texture("clouds", (24, 30), seed=7)
    rng = np.random.default_rng(8)
    K = 150
    labels = rng.integers(3, size=K)
    X, pos = np.empty((K, 24, 30)), np.empty((K, 2), int)
    for k in range(K):
        pos[k] = rng.integers(0, 24 - h + 1), rng.integers(0, 30 - w + 1)
        X[k] = S.paste(background, faces[labels[k]], tuple(pos[k])) + rng.normal(0, 40, (24, 30))
    return np.array(faces), labels, pos, X


@pytest.fixture(scope="module")
def three():
    faces, labels, pos, X = _three_faces()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = M.fit_mixture(X, E.FitSettings((12, 10), seed=0, restarts=2), 3)
    return faces, labels, pos, r


def _match(true, fitted):
    """The relabelling of the fitted faces that best matches the true ones."""

    def total(perm):
        pairs = enumerate(perm)
        return sum(np.corrcoef(true[i].ravel(), fitted[j].ravel())[0, 1] for i, j in pairs)

    return max(itertools.permutations(range(len(true))), key=total)


def test_three_faces_are_recovered_and_images_assigned(three):
    faces, labels, pos, r = three
    perm = _match(faces, r.params.faces)
    for i, j in enumerate(perm):
        assert np.corrcoef(faces[i].ravel(), r.params.faces[j].ravel())[0, 1] >= 0.95
    inverse = np.argsort(perm)
    assigned = inverse[r.faces_of_images]
    assert np.mean(assigned == labels) >= 0.95
    assert np.mean(np.all(r.positions == pos, axis=1)) >= 0.9
    np.testing.assert_allclose(r.params.weights.sum(), 1.0)
    assert np.all(np.diff(r.elbo) >= -1e-6 * abs(r.elbo[-1]))  # soft EM: the bound never falls


def test_restarts_are_reproducible_and_the_best_is_kept(three):
    faces, labels, pos, r = three
    assert r.restart_log_likelihoods[r.best_restart] == r.restart_log_likelihoods.max()
    _, _, _, X = _three_faces()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = M.fit_mixture(X, E.FitSettings((12, 10), seed=0, restarts=2), 3)
    np.testing.assert_array_equal(again.params.faces, r.params.faces)


@pytest.mark.parametrize("method", ["hard", "mc"])
def test_hard_and_monte_carlo_em_recover_three_faces(method):
    faces, labels, pos, X = _three_faces()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settings = E.FitSettings((12, 10), seed=0, method=method, max_iter=40, restarts=1)
        r = M.fit_mixture(X, settings, 3)
    perm = _match(faces, r.params.faces)
    for i, j in enumerate(perm):
        assert np.corrcoef(faces[i].ravel(), r.params.faces[j].ravel())[0, 1] >= 0.9
    assert np.mean(np.argsort(perm)[r.faces_of_images] == labels) >= 0.9


def _fit_states(X, settings, n, **kw):
    states = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = M.fit_mixture(X, settings, n, on_state=states.append, **kw)
    return r, states


def _same(a, b):
    for f in ("faces", "background", "noise_std", "weights", "prior"):
        np.testing.assert_array_equal(getattr(a.params, f), getattr(b.params, f), f)
    for f in ("elbo", "log_likelihood", "faces_of_images", "positions", "probability",
              "face_probability", "restart_log_likelihoods"):  # fmt: skip
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), f)
    assert (a.n_iter, a.converged, a.best_restart, a.prior_fixed_until) == (
        b.n_iter, b.converged, b.best_restart, b.prior_fixed_until)  # fmt: skip
    assert len(a.history_seconds) == len(b.history_seconds)


@pytest.mark.parametrize("method", ["soft", "hard", "mc"])
def test_a_fit_resumed_from_any_state_ends_as_the_whole_fit(method):
    """Resumed from its first start, from the middle of a restart, from the first state of a
    later restart and from its last state, bit for bit (Monte-Carlo EM: the same draws)."""
    faces, labels, pos, X = _three_faces()
    settings = E.FitSettings((12, 10), seed=3, method=method, restarts=2, max_iter=8)
    whole, states = _fit_states(X, settings, 3)
    assert [s.iteration for s in states if s.restart == 1][0] == 0  # each start is a state
    later = next(i for i, s in enumerate(states) if s.restart == 1)
    for i in sorted({0, 4, later, later + 1, len(states) - 1}):
        again, rest = _fit_states(X, settings, 3, resume=states[i])
        _same(whole, again)
        assert [(s.restart, s.iteration) for s in rest] == [
            (s.restart, s.iteration) for s in states[i + 1 :]
        ]
    # with the seed left out, the checkpoint's
    again, _ = _fit_states(X, dataclasses.replace(settings, seed=None), 3, resume=states[5])
    _same(whole, again)


def test_a_fit_from_given_parameters_starts_there_and_resumes_from_them():
    faces, labels, pos, X = _three_faces()
    given = M.MixtureParams(faces, S.texture("clouds", (24, 30), seed=7), 40.0,
                            np.full(3, 1 / 3), np.full((13, 21), 1 / 273))  # fmt: skip
    settings = E.FitSettings((12, 10), seed=0, max_iter=20, restarts=1)
    r, states = _fit_states(X, settings, 3, init_params=given)
    assert states[0].one is None and states[0].start is not None
    np.testing.assert_array_equal(states[0].params.faces, faces)  # where it started
    for i, face in enumerate(faces):  # the truth: no relabelling
        assert np.corrcoef(face.ravel(), r.params.faces[i].ravel())[0, 1] >= 0.98
    assert np.mean(r.faces_of_images == labels) >= 0.95
    again, _ = _fit_states(X, settings, 3, init_params=given, resume=states[2])
    _same(r, again)
    other = dataclasses.replace(given, noise_std=41.0)
    with pytest.raises(E.CheckpointError, match="other given parameters"):
        M.fit_mixture(X, settings, 3, init_params=other, resume=states[2])
    # without them, the checkpoint's own start (what it came from may have changed since)
    again, _ = _fit_states(X, settings, 3, resume=states[2])
    _same(r, again)
    damaged = dataclasses.replace(states[2], given=dataclasses.replace(given, faces=faces[:2]))
    with pytest.raises(E.CheckpointError, match="the checkpoint is damaged: its start"):
        M.fit_mixture(X, settings, 3, resume=damaged)
    with pytest.raises(ValueError, match="init_params hold 3 faces, not 2"):
        M.fit_mixture(X, settings, 2, init_params=given)
    with pytest.raises(ValueError, match="wrong shapes"):
        M.fit_mixture(X[:, :20], settings, 3, init_params=given)
    with pytest.warns(UserWarning, match="all 2 restarts start from the given parameters"):
        M.fit_mixture(X, dataclasses.replace(settings, restarts=2, max_iter=1, tol=-1), 3,
                      init_params=given)  # fmt: skip


def test_a_checkpoint_of_another_fit_or_damaged_is_refused():
    faces, labels, pos, X = _three_faces()
    settings = E.FitSettings((12, 10), seed=3, restarts=2, max_iter=4)
    _, states = _fit_states(X, settings, 3)
    cp = next(s for s in states if (s.restart, s.iteration) == (1, 2))
    cases = [
        (X, settings, 2, cp, "a fit of 3 faces, not 2"),
        (X, dataclasses.replace(settings, max_iter=5), 3, cp, "max_iter=4 (this fit: 5)"),
        (X[::-1], settings, 3, cp, "the images differ"),
        (X[:-1], settings, 3, cp, "made from 150 images"),
        (X, settings, 3, dataclasses.replace(cp, elbo=cp.elbo[:-1]), "one value per iteration"),
        (X, settings, 3, dataclasses.replace(cp, finished=()), "finished restarts"),
        (X, settings, 3, dataclasses.replace(cp, rng_state={"x": 1}), "generator state"),
        (
            X,
            settings,
            3,
            dataclasses.replace(
                cp,
                finished=(
                    dataclasses.replace(
                        cp.finished[0], faces_of_images=cp.finished[0].faces_of_images + 7
                    ),
                ),
            ),
            "are not faces 1 to 3",
        ),
        (
            X,
            settings,
            3,
            dataclasses.replace(
                cp,
                finished=(
                    dataclasses.replace(cp.finished[0], positions=cp.finished[0].positions - 5),
                ),
            ),
            "positions do not match the images",
        ),
        (
            X,
            settings,
            3,
            dataclasses.replace(
                cp,
                finished=(
                    dataclasses.replace(
                        cp.finished[0], probability=cp.finished[0].probability * np.nan
                    ),
                ),
            ),
            "not probabilities",
        ),  # (found by review: written out as they were, exit 0)
        (
            X,
            settings,
            3,
            dataclasses.replace(
                cp, params=dataclasses.replace(cp.params, weights=cp.params.weights[:2])
            ),
            "wrong shapes",
        ),  # fmt: skip
        (
            X,
            settings,
            3,
            dataclasses.replace(
                cp, one=dataclasses.replace(cp.one, positions=cp.one.positions + 99)
            ),
            "positions do not match",
        ),  # fmt: skip
    ]
    for images, s, n, state, message in cases:
        with pytest.raises(E.CheckpointError, match=re.escape(message)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                M.fit_mixture(images, s, n, resume=state)


# --------------------------------------------------------------------------------------------
# The command line: generate --faces, fit --faces N
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_folder(tmp_path_factory):
    """90 images of 24x30 showing one of three 12x10 faces (a photo face upright, mirrored
    and upside down), made by generate --faces."""
    import imageio.v3 as iio
    from helpers import ok

    root = tmp_path_factory.mktemp("three")
    photo = iio.imread(Path(__file__).resolve().parent.parent / "sample_data" / "face.png")
    small = S.resize(np.asarray(photo, dtype=np.float64), (12, 10))
    paths = []
    for name, face in (("a", small), ("b", small[:, ::-1]), ("c", small[::-1, ::-1])):
        iio.imwrite(root / f"{name}.png", np.clip(face, 0, 255).astype(np.uint8))
        paths.append(str(root / f"{name}.png"))
    ok("generate", "--faces", ",".join(paths), "--size", "24x30", "--background", paths[0],
       "-n", 90, "--noise", 25, "-o", root / "imgs", "-q")  # fmt: skip
    return root


def test_generate_faces_writes_the_truth_of_every_face(three_folder):
    with np.load(three_folder / "imgs" / "truth.npz") as z:
        assert z["faces"].shape == (3, 12, 10) and z["labels"].shape == (90,)
        assert set(np.unique(z["labels"])) == {0, 1, 2}
        np.testing.assert_array_equal(z["face"], z["faces"][0])


def test_fit_faces_writes_every_face_and_finds_the_truth(three_folder, tmp_path):
    import csv
    import json

    from helpers import ok

    r = ok("fit", three_folder / "imgs", "--face-size", "12x10", "--faces", 3, "--truth",
           three_folder / "imgs" / "truth.npz", "-o", tmp_path / "run", "--json")  # fmt: skip
    s = json.loads(r.stdout)
    assert s["faces"] == 3 and s["restarts"] == 4 and sum(s["images_per_face"]) == 90
    assert s["restarts_asked"] == "auto"  # (as fit of one face says it)
    # the iterations are the kept restart's, the time all four's (it said neither)
    assert " iterations (the kept restart) in " in r.stderr and " s (all 4 restarts): " in r.stderr
    assert min(s["truth"]["face_correlation"]) >= 0.95 and s["truth"]["faces_right"] >= 0.95
    match = ", ".join(map(str, s["truth"]["face_match"]))
    assert f"(faces matched up to relabelling: true faces 1.. are faces {match})" in r.stderr
    run = tmp_path / "run"
    for name in ("face_1.png", "face_2.png", "face_3.png", "faces.png", "background.png",
                 "prior.png", "history.csv", "result.npz"):  # fmt: skip
        assert (run / name).stat().st_size > 0, name
    with open(run / "positions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 90 and {int(row["face"]) for row in rows} == {1, 2, 3}
    with np.load(run / "result.npz") as z:
        assert z["faces"].shape == (3, 12, 10)
        assert z["weights"].sum() == pytest.approx(1.0)
        assert json.loads(str(z["settings"]))["faces"] == 3
    # detect finds which face is where in the images (here the training images themselves)
    with np.load(three_folder / "imgs" / "truth.npz") as z:
        labels, positions = z["labels"], z["positions"]
    said = ok("detect", run, three_folder / "imgs", "-o", tmp_path / "found.csv", "--draw",
              tmp_path / "boxed", "--zoom", 1)  # fmt: skip
    assert "(face 1 red, face 2 blue, face 3 yellow)" in said.stderr
    with open(tmp_path / "found.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    match = s["truth"]["face_match"]  # true face i is fitted face match[i]
    true_as_fitted = np.array([match[t] for t in labels])
    assert np.mean(np.array([int(row["face"]) for row in rows]) == true_as_fitted) >= 0.95
    found = np.array([[int(row["row"]), int(row["column"])] for row in rows])
    assert np.mean(np.all(found == positions, axis=1)) >= 0.9
    assert len(list((tmp_path / "boxed").glob("*.png"))) == 90
    colours = {1: (255, 0, 0), 2: (0, 112, 255), 3: (255, 255, 0)}  # each face its own
    for row in rows[:12]:
        path = tmp_path / "boxed" / (Path(row["image"]).stem + ".png")
        img = np.asarray(Image.open(path).convert("RGB"))
        r0, c0 = int(row["row"]), int(row["column"])
        assert tuple(img[r0, c0]) == colours[int(row["face"])], path.name
    # what reads fits of one face only says so, in one line
    from helpers import cli

    ok("plot-elbo", run, run / "history.csv", "-o", tmp_path / "e.png")  # (the run, its history)
    assert (tmp_path / "e.png").stat().st_size > 1000
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    with np.load(run / "result.npz") as z:
        np.testing.assert_allclose([float(h["elbo"]) for h in history], z["elbo"], rtol=1e-15)
        assert np.all(np.diff(z["seconds"]) >= 0) and len(z["seconds"]) == len(z["elbo"])
    r = cli("fit", "--no-plots", three_folder / "imgs", "--init-from", run, "-o", tmp_path / "one")
    assert r.exit_code == 1 and "a fit of 3 faces (fit --faces)" in r.stderr
    assert "give --faces 3" in r.stderr
    r = cli("detect", run, three_folder / "imgs", "--scheduler", "local:1")
    assert r.exit_code == 2 and "on this machine only" in r.stderr
    # a one-face run folder may be replaced by one of several faces, and back
    ok(
        "fit",
        "--no-plots",
        three_folder / "imgs",
        "--face-size",
        "12x10",
        "-o",
        run,
        "--overwrite",
        "-q",
    )
    assert not (run / "face_2.png").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--face-size", "auto"], "needs the face size"),
        (["--accelerate", "squarem"], "is plain EM"),
    ],
)
def test_fit_faces_refuses_what_it_cannot_do_in_one_line(three_folder, tmp_path, extra, message):
    from helpers import cli

    args = ["fit", three_folder / "imgs", "--faces", 2, "-o", tmp_path / "run"]
    if "--face-size" not in extra:
        args += ["--face-size", "12x10"]
    r = cli(*args, *extra)
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def _stop_faces_at(monkeypatch, restart: int, iteration: int):
    """Patch ``engine.fit_mixture`` (as the command line calls it) to be stopped by SIGINT once
    it has reported the state of (restart, iteration), as a real Ctrl-C would."""
    import signal

    from facefinder_cli.interrupts import Interrupted

    real = E.fit_mixture

    def stopping(*args, on_state=None, **kw):
        def report(state):
            on_state(state)
            if (state.restart, state.iteration) == (restart, iteration):
                raise Interrupted(signal.SIGINT)

        return real(*args, on_state=report, **kw)

    monkeypatch.setattr(E, "fit_mixture", stopping)


def _same_runs(a_folder, b_folder):
    with np.load(a_folder / "result.npz") as a, np.load(b_folder / "result.npz") as b:
        assert set(a.files) == set(b.files)
        for key in a.files:
            if key not in ("seconds", "history_seconds", "settings"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("where", [(0, 0), (0, 3), (1, 0), (1, 2)])
def test_an_interrupted_fit_of_faces_resumes_to_the_whole_fit(
    three_folder, tmp_path, monkeypatch, where
):
    """Ctrl-C after a start or an iteration saves the state (with --truth); --resume ends as
    the uninterrupted fit, bit for bit, and the checkpoint is gone."""
    from helpers import cli, ok

    args = ["fit", three_folder / "imgs", "--face-size", "12x10", "--faces", 3, "--restarts", 2,
            "--method", "mc", "--max-iter", 6, "--tol", -1, "--seed", 5, "--no-plots", "--truth",
            three_folder / "imgs" / "truth.npz", "-q"]  # fmt: skip
    ok(*args, "-o", tmp_path / "whole")
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        _stop_faces_at(m, *where)
        r = cli(*args, "-o", cut)
    assert r.exit_code == 130, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert f"interrupted after iteration {where[1]} of restart {where[0] + 1} of 2" in line
    assert f"--resume {cut}" in line
    assert sorted(p.name for p in cut.iterdir()) == [".facefinder", "checkpoint.npz"]
    r = ok("fit", "--resume", cut, "--json")
    assert json.loads(r.stdout)["truth"]["faces_right"] >= 0.95
    _same_runs(tmp_path / "whole", cut)
    assert not (cut / "checkpoint.npz").exists()


def test_fits_of_faces_save_checkpoints_as_asked_and_in_the_final_write(
    three_folder, tmp_path, monkeypatch
):
    import signal

    from helpers import cli, ok

    from facefinder_cli import runs
    from facefinder_cli.interrupts import Interrupted

    args = ["fit", three_folder / "imgs", "--face-size", "12x10", "--faces", 2, "--restarts", 1,
            "--max-iter", 7, "--tol", -1, "--no-plots", "-q"]  # fmt: skip
    saved = []
    real_save = runs.save_checkpoint

    def save(path, state, *a, **kw):
        saved.append(state.iteration)
        return real_save(path, state, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(runs, "save_checkpoint", save)
        ok(*args, "--checkpoint-every", 3, "-o", tmp_path / "every")
    assert saved == [3, 6] and not (tmp_path / "every" / "checkpoint.npz").exists()
    ok(*args, "-o", tmp_path / "whole")

    def stopped(*a, **kw):
        raise Interrupted(signal.SIGTERM)

    with monkeypatch.context() as m:  # a signal while the run is written: its last state kept
        m.setattr(runs, "save_mixture_run", stopped)
        r = cli(*args, "-o", tmp_path / "late")
    assert r.exit_code == 143 and "interrupted after iteration 7 of restart 1 of 1" in r.stderr
    ok("fit", "--resume", tmp_path / "late")
    _same_runs(tmp_path / "whole", tmp_path / "late")
    # before the first start: nothing to save, nothing written
    with monkeypatch.context() as m:
        _stop_faces_at(m, 5, 0)  # (never reached: the one-face fit is stopped instead)
        m.setattr(M, "_one_face", stopped)
        r = cli(*args, "-o", tmp_path / "early")
    assert r.exit_code == 143 and "nothing was written" in r.stderr
    assert not (tmp_path / "early").exists()


def test_a_resume_interrupted_before_its_first_report_keeps_its_checkpoint_and_says_so(
    three_folder, tmp_path, monkeypatch
):
    """(Found by review: it said "nothing was written".) And a resume from a start whose
    file changed since carries on from the start it began with."""
    import shutil
    import signal
    import subprocess
    import sys

    from helpers import cli, ok

    from facefinder_cli.interrupts import Interrupted

    start = tmp_path / "start"
    shutil.copytree(three_folder / "imgs", tmp_path / "imgs")
    imgs = tmp_path / "imgs"
    ok("fit", imgs, "--face-size", "12x10", "--faces", 3, "--restarts", 1, "--max-iter", 3,
       "-o", start, "-q", "--no-plots")  # fmt: skip
    args = ["fit", imgs, "--faces", 3, "--init-from", start, "--method", "mc", "--max-iter", 5,
            "--tol", -1, "--no-plots", "-q"]  # fmt: skip
    ok(*args, "-o", tmp_path / "whole")
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        _stop_faces_at(m, 0, 2)
        assert cli(*args, "-o", cut).exit_code == 130
    saved = (cut / "checkpoint.npz").read_bytes()

    def stopped(*a, **kw):
        raise Interrupted(signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(M, "_iterate_mixture", stopped)
        r = cli("fit", "--resume", cut)
    assert r.exit_code == 130
    assert "interrupted after iteration 2 of restart 1 of 1; saved in" in r.stderr, r.stderr
    assert (cut / "checkpoint.npz").read_bytes() == saved
    # another start at the same path
    ok("fit", imgs, "--face-size", "12x10", "--faces", 3, "--restarts", 1, "--max-iter", 1,
       "-o", start, "-q", "--no-plots", "--overwrite")  # fmt: skip
    # images changed since (one pixel): the refusal is the only line, in a real process
    first = sorted(imgs.glob("*.tif"))[0]
    import tifffile

    pixels = tifffile.imread(first)
    pixels[0, 0] += 1
    tifffile.imwrite(first, pixels)
    done = subprocess.run([sys.executable, "-m", "facefinder_cli", "fit", "--resume", str(cut)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "the images differ" in done.stderr
    pixels[0, 0] -= 1
    tifffile.imwrite(first, pixels)
    r = ok("fit", "--resume", cut, "--json")  # --restarts auto, one from the given start
    assert (json.loads(r.stdout)["restarts"], json.loads(r.stdout)["restarts_asked"]) == (1, "auto")
    _same_runs(tmp_path / "whole", cut)


def test_resuming_a_fit_of_faces_refuses_what_does_not_fit_in_one_line(
    three_folder, tmp_path, monkeypatch
):
    import shutil

    from helpers import cli

    args = ["fit", three_folder / "imgs", "--face-size", "12x10", "--faces", 2, "--restarts", 1,
            "--max-iter", 5, "--tol", -1, "--no-plots", "-q"]  # fmt: skip
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        _stop_faces_at(m, 0, 2)
        assert cli(*args, "-o", cut).exit_code == 130
    r = cli("fit", "--resume", cut, "--faces", 2)
    assert r.exit_code == 2 and "drop --faces" in r.stderr
    r = cli(*args, "--init-from", cut / "checkpoint.npz", "-o", tmp_path / "y")
    assert r.exit_code == 1 and "the checkpoint of an unfinished fit" in r.stderr, r.stderr
    r = cli(*args[:-8], "--faces", "auto", "--checkpoint-every", 2, "-o", tmp_path / "auto")
    assert r.exit_code == 2 and "--faces auto is not checkpointed" in r.stderr
    # images changed since: one line naming the checkpoint, and the checkpoint kept
    images = tmp_path / "imgs"
    shutil.copytree(three_folder / "imgs", images)
    with np.load(cut / "checkpoint.npz") as z:
        arrays = dict(z)
    settings = json.loads(str(arrays["settings"]))
    settings["input_path"] = str(images)
    arrays["settings"] = json.dumps(settings)
    first = sorted(images.glob("*.tif"))[0]
    first.unlink()
    np.savez(cut / "checkpoint.npz", **arrays)
    r = cli("fit", "--resume", cut)
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "made from 90 images" in r.stderr and "checkpoint.npz" in r.stderr
    # a damaged record (one face too few in its parameters)
    shutil.copy(three_folder / "imgs" / first.name, first)
    arrays["faces"] = arrays["faces"][:1]
    np.savez(cut / "checkpoint.npz", **arrays)
    r = cli("fit", "--resume", cut)
    assert r.exit_code == 1 and "(its number of faces)" in r.stderr, r.stderr
    arrays["faces"] = arrays["faces"][[0, 0]]
    arrays["faces"][1, 0, 0] = np.nan
    np.savez(cut / "checkpoint.npz", **arrays)
    r = cli("fit", "--resume", cut)
    assert r.exit_code == 1 and "the checkpoint is damaged" in r.stderr, r.stderr
    assert (cut / "checkpoint.npz").exists() and not (cut / "result.npz").exists()


def test_fit_faces_starts_from_a_run_or_truth_of_as_many_faces(three_folder, tmp_path, monkeypatch):
    from helpers import cli, ok

    imgs, truth = three_folder / "imgs", three_folder / "imgs" / "truth.npz"
    r = ok("fit", imgs, "--faces", 3, "--init-from", truth, "--truth", truth, "-o",
           tmp_path / "t", "--json", "--no-plots")  # fmt: skip
    s = json.loads(r.stdout)
    assert s["restarts"] == 1 and s["face_size"] == [12, 10]  # (both from the start)
    assert s["truth"]["face_match"] == [1, 2, 3] and s["truth"]["faces_right"] >= 0.95
    r = ok("fit", imgs, "--faces", 3, "--init-from", tmp_path / "t", "-o", tmp_path / "again",
           "--json", "--no-plots")  # fmt: skip
    assert json.loads(r.stdout)["n_iter"] <= 3  # at its optimum already
    # interrupted and resumed, from the same start, bit for bit
    args = ["fit", imgs, "--faces", 3, "--init-from", truth, "--method", "mc", "--max-iter", 5,
            "--tol", -1, "--no-plots", "-q"]  # fmt: skip
    ok(*args, "-o", tmp_path / "whole")
    with monkeypatch.context() as m:
        _stop_faces_at(m, 0, 2)
        assert cli(*args, "-o", tmp_path / "cut").exit_code == 130
    ok("fit", "--resume", tmp_path / "cut")
    _same_runs(tmp_path / "whole", tmp_path / "cut")
    # starts that do not fit: one line each, naming the start
    one_face = tmp_path / "one"
    ok("fit", imgs, "--face-size", "12x10", "-o", one_face, "-q", "--no-plots")
    for start, faces, message in (
        (tmp_path / "t", 2, "holds 3 faces, not 2: give --faces 3"),
        (one_face, 3, "a fit or truth of one face: --faces 3 starts from a run or truth of 3"),
    ):
        r = cli(
            "fit", "--no-plots", imgs, "--faces", faces, "--init-from", start, "-o", tmp_path / "x"
        )
        assert r.exit_code == 1 and message in r.stderr and len(r.stderr.splitlines()) == 1
    r = cli("fit", imgs, "--faces", 3, "--init-from", truth, "--face-size", "10x10",
            "--no-plots", "-o", tmp_path / "x")  # fmt: skip
    assert r.exit_code == 2 and "its faces are 12x10, not 10x10" in r.stderr
    assert not (tmp_path / "x").exists()


def test_fit_faces_refuses_a_truth_of_another_number_of_faces(three_folder, tmp_path):
    from helpers import cli

    r = cli("fit", three_folder / "imgs", "--face-size", "12x10", "--faces", 2, "--no-plots",
            "--truth", three_folder / "imgs" / "truth.npz", "-o", tmp_path / "run")  # fmt: skip
    assert r.exit_code == 2 and "the truth of 3 faces, not 2" in r.stderr


def test_generate_faces_needs_two_images_and_not_face_too(three_folder, tmp_path):
    from helpers import cli

    a = str(three_folder / "a.png")
    r = cli("generate", "--faces", a, "-o", tmp_path / "x")
    assert r.exit_code == 2 and "two or more images" in r.stderr
    r = cli("generate", "--faces", f"{a},{a}", "--face", a, "-o", tmp_path / "x")
    assert r.exit_code == 2 and "--face and --faces" in r.stderr
    assert not (tmp_path / "x").exists()


def test_fit_faces_auto_chooses_three_and_writes_the_search(three_folder, tmp_path, monkeypatch):
    import csv
    import json

    from helpers import cli, ok

    from facefinder_cli.interrupts import Interrupted

    args = ["fit", "--no-plots", three_folder / "imgs", "--face-size", "12x10", "--faces",
            "auto", "--restarts", 2]  # fmt: skip
    real = M.fit_mixture

    def stopped_at_three(X, settings, n_faces, *a, **kw):
        if n_faces == 3:  # the fits of one and two faces are done
            raise Interrupted(signal.SIGTERM)
        return real(X, settings, n_faces, *a, **kw)

    with monkeypatch.context() as m:  # (it said "before the faces were fitted")
        m.setattr(M, "fit_mixture", stopped_at_three)
        r = cli(*args, "-o", tmp_path / "cut")
    assert r.exit_code == 143 and r.stderr.splitlines()[-1] == (
        "interrupted while the number of faces was being chosen (--faces auto saves no "
        "checkpoint): nothing was written"
    )
    assert not (tmp_path / "cut").exists()
    r = ok(*args, "-o", tmp_path / "run", "--json")
    s = json.loads(r.stdout)
    assert s["faces"] == 3 and s["faces_search"]["chosen"] == 3 and s["faces_search"]["clear"]
    tried = len(s["faces_search"]["tried"])
    assert " (the chosen fit) in " in r.stderr
    assert f" s (the whole search: {tried} numbers of faces): " in r.stderr
    with open(tmp_path / "run" / "faces.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["faces"]) for row in rows] == s["faces_search"]["tried"]
    criterion = {int(row["faces"]): float(row["criterion"]) for row in rows}
    assert max(criterion, key=criterion.get) == 3 and len(rows) >= 3 + M.PATIENCE


@pytest.mark.parametrize("value", ["0", "x", "-2", "2.5"])
def test_a_bad_number_of_faces_is_one_line(three_folder, tmp_path, value):
    from helpers import cli

    r = cli("fit", three_folder / "imgs", "--face-size", "12x10", "--faces", value,
            "--no-plots", "-o", tmp_path / "run")  # fmt: skip
    assert r.exit_code == 2 and "expected a number of faces from 1, or auto" in r.stderr


def test_review_edges_of_fit_faces(three_folder, tmp_path):
    """--max-iter 0 writes the start; a one-face fit refuses a truth of several faces, and
    so does --init-from; a file-like output name is refused; a face no image takes is said."""
    import json

    from helpers import cli, ok

    imgs, truth = three_folder / "imgs", three_folder / "imgs" / "truth.npz"
    r = ok("fit", imgs, "--face-size", "12x10", "--faces", 3, "--max-iter", 0, "--restarts", 1,
           "--no-plots", "-o", tmp_path / "start", "--json")  # fmt: skip
    assert json.loads(r.stdout)["n_iter"] == 0
    r = cli(
        "fit", "--no-plots", imgs, "--face-size", "12x10", "--truth", truth, "-o", tmp_path / "one"
    )
    assert r.exit_code == 2 and "the truth of 3 faces: fit with --faces 3" in r.stderr
    r = cli("fit", "--no-plots", imgs, "--init-from", truth, "-o", tmp_path / "one")
    assert r.exit_code == 1 and "the truth of 3 faces" in r.stderr
    r = cli(
        "fit", "--no-plots", imgs, "--face-size", "12x10", "--faces", 2, "-o", tmp_path / "run.npz"
    )
    assert r.exit_code == 2 and "fit writes a folder" in r.stderr
    assert not (tmp_path / "one").exists() and not (tmp_path / "run.npz").exists()


def test_truth_matching_takes_many_faces_at_once():
    """The faces are matched to the truth by an assignment, not by trying N! orderings."""
    from facefinder_cli import runs

    rng = np.random.default_rng(0)
    true = rng.normal(size=(12, 5, 4))
    order = rng.permutation(12)
    fitted = true[order] + rng.normal(0, 0.01, size=true.shape)
    labels = rng.integers(12, size=50)
    result = M.MixtureResult(
        M.MixtureParams(fitted, np.zeros((8, 8)), 1.0, np.full(12, 1 / 12), np.full((4, 5), 0.05)),
        np.zeros(1), np.zeros(1), np.zeros(1), 0, 0, True, np.argsort(order)[labels],
        np.zeros((50, 2), int),
        np.ones(50), np.ones(50), 0, np.zeros(1), 0.0, E.FitSettings((5, 4)),
    )  # fmt: skip
    truth = runs.Truth(E.Params(true[0], np.zeros((8, 8)), 1.0, np.full((4, 5), 0.05)),
                       np.zeros((50, 2), int), true, labels)  # fmt: skip
    errors = runs.mixture_errors(result, truth)
    assert errors["face_match"] == [int(j) + 1 for j in np.argsort(order)]
    assert errors["faces_right"] == 1.0 and min(errors["face_correlation"]) > 0.99


def test_the_start_clusters_a_sample_of_the_images_when_they_are_many(monkeypatch):
    """At most KMEANS_IMAGES crops are held (h w floats each): here 60 of 150."""
    monkeypatch.setattr(M, "KMEANS_IMAGES", 60)
    faces, labels, pos, X = _three_faces()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = M.fit_mixture(X, E.FitSettings((12, 10), seed=0, restarts=2), 3)
    perm = _match(faces, r.params.faces)
    assert min(np.corrcoef(faces[i].ravel(), r.params.faces[j].ravel())[0, 1]
               for i, j in enumerate(perm)) >= 0.95  # fmt: skip
    assert np.mean(np.argsort(perm)[r.faces_of_images] == labels) >= 0.95


def test_review_edges_of_faces_auto_and_damaged_runs(three_folder, tmp_path):
    """--faces auto takes a one-face truth (it may choose one), calls a choice at the most it
    could try unclear; a damaged run is named in one line; a run draws elbo.png."""
    import json
    import shutil

    from helpers import cli, ok

    imgs = three_folder / "imgs"
    one = tmp_path / "one"
    ok("generate", "-n", 40, "--noise", 25, "--face", three_folder / "a.png", "--size", "24x30",
       "--background", three_folder / "a.png", "-o", one, "-q")  # fmt: skip
    r = ok("fit", one, "--face-size", "12x10", "--faces", "auto", "--restarts", 1, "--no-plots",
           "--truth", one / "truth.npz", "-o", tmp_path / "auto1", "--json")  # fmt: skip
    s = json.loads(r.stdout)
    assert s["faces"] == 1 and s["truth"]["faces_right"] == 1.0
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(p.name for p in imgs.glob("*.tif"))[:3]:
        shutil.copy(imgs / name, few / name)
    r = ok("fit", few, "--face-size", "12x10", "--faces", "auto", "--restarts", 1,
           "--no-plots", "-o", tmp_path / "few-run", "--json")  # fmt: skip
    search = json.loads(r.stdout)["faces_search"]
    # one face per image scores best, as many as the images: the most it could try
    assert search["chosen"] == 3 and search["at_cap"] and not search["clear"]
    assert "the most that could be tried" in r.stderr
    run = tmp_path / "run"
    ok("fit", imgs, "--face-size", "12x10", "--faces", 2, "--restarts", 1, "-o", run, "-q")
    assert (run / "elbo.png").stat().st_size > 1000
    with np.load(run / "result.npz") as z:
        arrays = dict(z)
    arrays["faces"] = np.array("abc")
    np.savez(run / "result.npz", **arrays)
    r = cli("detect", run, imgs, "-o", tmp_path / "x.csv")
    assert r.exit_code == 1 and "result.npz: damaged" in r.stderr and "Traceback" not in r.stderr
    del arrays["faces"]
    np.savez(run / "result.npz", **arrays)
    r = cli("detect", run, imgs, "-o", tmp_path / "x.csv")
    assert r.exit_code == 1 and "without its faces" in r.stderr


@pytest.mark.parametrize("method", ["soft", "mc"])
def test_tol_zero_runs_max_iter_for_several_faces_too(method):
    """``tol <= 0`` runs ``max_iter`` iterations, as for one face: the bound falling by a
    rounding error at the optimum stopped two faces' soft EM after 60 of 200 iterations here
    ("gain < tol" with tol 0), Monte-Carlo EM after 40."""
    d = S.make_dataset(S.cartoon_face(8, 8), S.texture("stripes", (16, 20)), 40, 20.0, seed=0)
    settings = E.FitSettings((8, 8), method=method, tol=0.0, max_iter=200, seed=0, restarts=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", E.ConvergenceWarning)  # none: as many as asked
        r = M.fit_mixture(d.images, E.FitSettings.of(settings, accelerate="none"), 2)
    assert r.n_iter == 200 and not r.converged


def _edited(tmp_path, **changes):
    arrays = dict(faces=np.full((2, 4, 3), 100.0), background=np.full((8, 9), 50.0),
                  noise_std=np.array(5.0), weights=np.array([0.5, 0.5]),
                  prior=np.full((5, 7), 1 / 35), face_of_image=np.array([0, 1, 1]))  # fmt: skip
    arrays.update(changes)
    path = tmp_path / "result.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(noise_std=np.array(-1.0)), "'noise_std' is -1; it must be positive and finite"),
        # (before: NaN results with exit 0, or a ZeroDivisionError; found in review)
        (dict(noise_std=np.array(1e-160)), "'noise_std' is 1e-160, out of the range the fit"),
        (dict(noise_std=np.array(1e-320)), "'noise_std' is 1e-320, out of the range the fit"),
        (dict(faces=np.full((2, 4, 3), np.nan)), "'faces' holds values that are not finite"),
        (dict(weights=np.array([0.9, 0.3])), "'weights' sums to 1.2, not 1"),
        (dict(weights=np.array([np.nan, 1.0])), "'weights' holds values that are negative or"),
        (dict(prior=np.full((5, 7), 2 / 35)), "'prior' sums to 2, not 1"),
        (dict(prior=np.full((5, 7), -1 / 35)), "'prior' holds values that are negative or"),
        (dict(background=np.full((5, 9), 50.0)), "'prior' has shape (5, 7); 4x3 faces in a 5x9"),
        (dict(weights=np.array([1.0])), "'weights' has shape (1,); expected (2,), one per face"),
    ],
)
def test_a_damaged_run_of_several_faces_is_named_by_its_key(tmp_path, change, words):
    """Every damage gave "damaged (its faces, background, weights or prior do not agree)",
    even a negative noise std (found in review): the key is named, as for one face."""
    from facefinder_cli import runs
    from facefinder_cli.errors import InputError

    params, n_images, _ = runs.load_mixture(_edited(tmp_path))
    assert n_images == 3 and params.noise_std == 5.0
    with pytest.raises(InputError) as err:
        runs.load_mixture(_edited(tmp_path, **change))
    assert str(err.value).startswith(f"{tmp_path / 'result.npz'}: damaged: {words}"), err.value
