"""Restarts: restart 0 is the default start; 1, 3, 4 and 5 start from its fit with the face
window moved two pixels diagonally, 2 anneals the default start, 6 starts from the positions'
sampler, later ones anneal the default start under random priors; the same seed repeats them,
and more restarts are never worse."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import quiet_fit

from facefinder_cli import engine as E
from facefinder_cli import synthetic as S
from facefinder_cli.engine.data import _Data
from facefinder_cli.engine.loop import SHIFTS, _shifted

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


@pytest.fixture(scope="module")
def hard():
    """The bundled photo face and bricks in the study's geometry (16x16 in 20x30), with few
    images for the noise: the default start ends in a local optimum here."""
    face = S.resize(iio.imread(SAMPLE / "face.png").astype(float), (16, 16))
    background = S.resize(iio.imread(SAMPLE / "background.png").astype(float), (20, 30))
    return S.make_dataset(face, background, 60, 200.0, seed=1)


def _starts(X, restarts, seed):
    seen = []
    quiet_fit(X, (16, 16), restarts=restarts, seed=seed, max_iter=0, callback=seen.append)
    return [p.params for p in seen]


def test_later_restarts_start_apart_each_its_own_way(hard, monkeypatch):
    from facefinder_cli.engine import sampler

    monkeypatch.setattr(sampler, "SAMPLER_SWEEPS", 5)  # (restart 6: the same sampler, quicker)
    X = hard.images
    starts = _starts(X, 8, seed=5)
    assert len(starts) == 8
    for i in range(8):
        for j in range(i):
            assert not np.allclose(starts[i].face, starts[j].face), (i, j)
    r = quiet_fit(X, (16, 16), restarts=3, seed=5, max_iter=3)
    assert [h.passes[0] for h in r.restarts] == [0, 1, E.ANNEAL_PASSES]
    # moved windows and annealing are deterministic: another seed changes the sampler's start
    # and the randomly tilted annealing
    other = _starts(X, 8, seed=6)
    for i in range(6):
        np.testing.assert_array_equal(other[i].face, starts[i].face)
    for i in (6, 7):
        assert not np.allclose(other[i].face, starts[i].face), i
    # the study's random starts are neither moved nor annealed
    r = quiet_fit(X, (16, 16), init="random", restarts=2, seed=5, max_iter=1)
    assert [h.passes[0] for h in r.restarts] == [0, 0]


def test_a_moved_start_is_the_mean_of_the_moved_windows():
    rng = np.random.default_rng(0)
    X = rng.normal(100.0, 20.0, (23, 12, 15))
    h, w = 5, 4
    data = _Data(X, (h, w), chunk_size=4)  # several chunks, the last one short
    Dh, Dw = data.Dh, data.Dw
    positions = np.column_stack([rng.integers(0, Dh, 23), rng.integers(0, Dw, 23)])
    positions[:2] = [[0, 0], [Dh - 1, Dw - 1]]  # at the borders: moved windows stay inside
    fitted = E.Params(np.zeros((h, w)), rng.normal(size=(12, 15)), 7.0, E.uniform_prior((Dh, Dw)))
    first = type("First", (), {"positions": positions, "params": fitted})
    prior = rng.dirichlet(np.ones(Dh * Dw)).reshape(Dh, Dw)
    for shift in SHIFTS.values():
        start = _shifted(data, first, shift, prior)
        windows = []
        for k, (i, j) in enumerate(positions):
            i, j = min(max(i + shift[0], 0), Dh - 1), min(max(j + shift[1], 0), Dw - 1)
            windows.append(X[k, i : i + h, j : j + w])
        np.testing.assert_allclose(start.face, np.mean(windows, axis=0), rtol=1e-12)
        np.testing.assert_array_equal(start.background, fitted.background)
        assert start.noise_std == fitted.noise_std and start.prior is prior


def test_a_moved_restart_reaches_the_optimum_the_default_start_misses():
    """The bundled photo face on clouds, 100 images at noise 400 (a data set of
    benchmarks/bench_convergence.py): the default start settles below EM from the truth,
    restart 1 (two pixels over) above it."""
    photo = iio.imread(SAMPLE / "face.png").astype(float)
    photo = photo[..., :3] @ [0.299, 0.587, 0.114] if photo.ndim == 3 else photo
    face = S.resize(photo, (16, 16))
    data = S.make_dataset(face, S.texture("clouds", (20, 30), seed=3), 100, 400.0, seed=102)
    X, n = data.images, data.images.size
    truth = quiet_fit(X, (16, 16), init_params=data.truth, tol=1e-12, max_iter=1000)
    r = quiet_fit(X, (16, 16), restarts=2, seed=0)
    first, moved = (h.log_likelihood[-1] for h in r.restarts)
    assert (truth.log_likelihood[-1] - first) / n > 1e-4
    assert moved >= truth.log_likelihood[-1] - 1e-7 * n
    assert r.best_restart == 1


def test_the_annealed_restart_escapes_the_default_starts_local_optimum(hard):
    X, n = hard.images, hard.images.size
    truth = quiet_fit(X, (16, 16), init_params=hard.truth)
    r = quiet_fit(X, (16, 16), restarts=3, seed=0)
    first, _, annealed = (h.log_likelihood[-1] for h in r.restarts)
    assert (truth.log_likelihood[-1] - first) / n > 1e-4  # the default start falls short
    assert annealed >= truth.log_likelihood[-1] - 1e-7 * n  # EM from the truth's optimum, or higher
    assert r.best_restart == 2


def test_the_sampled_restart_reaches_an_optimum_the_others_miss():
    """The bundled photo face on bricks, 100 images at noise 200 (a data set of
    benchmarks/bench_convergence.py that sixteen restarts of the other kinds never took to EM
    from the truth's optimum): restart 6, from the positions' sampler, ends above it."""
    photo = iio.imread(SAMPLE / "face.png").astype(float)
    photo = photo[..., :3] @ [0.299, 0.587, 0.114] if photo.ndim == 3 else photo
    bricks = iio.imread(SAMPLE / "background.png").astype(float)
    bricks = bricks[..., :3] @ [0.299, 0.587, 0.114] if bricks.ndim == 3 else bricks
    face, background = S.resize(photo, (16, 16)), S.resize(bricks, (20, 30))
    data = S.make_dataset(face, background, 100, 200.0, seed=100)
    X, n = data.images, data.images.size
    truth = quiet_fit(X, (16, 16), init_params=data.truth, tol=1e-12, max_iter=1000)
    r = quiet_fit(X, (16, 16), restarts=7, seed=0)
    *others, sampled = (h.log_likelihood[-1] for h in r.restarts)
    assert all((truth.log_likelihood[-1] - ll) / n > 1e-4 for ll in others)
    assert sampled >= truth.log_likelihood[-1] - 1e-7 * n
    assert r.best_restart == 6


def test_with_one_image_or_one_position_restart_6_anneals(hard, recwarn):
    """The sampler draws each image's position given the other images: with one image there
    are none (its face was 0/0), with one position nothing to draw. Annealed instead."""
    anneal = E.ANNEAL_PASSES
    one_image = quiet_fit(hard.images[:1], (16, 16), restarts=7, seed=0, max_iter=2)
    assert [int(h.passes[0]) for h in one_image.restarts] == [0, 1, anneal, 1, 1, 1, anneal]
    whole = quiet_fit(hard.images[:20], (20, 30), restarts=7, seed=0, max_iter=2)
    assert [int(h.passes[0]) for h in whole.restarts] == [0] + [anneal] * 6
    assert np.isfinite(one_image.face).all() and not [w for w in recwarn if "invalid" in str(w)]


def test_more_restarts_are_never_worse_and_repeat_the_fewer(hard):
    X = hard.images[:40]
    fits = [quiet_fit(X, (16, 16), restarts=n, seed=3, max_iter=30) for n in (1, 2, 3, 4)]
    for fewer, more in zip(fits, fits[1:]):
        assert more.log_likelihood[-1] >= fewer.log_likelihood[-1]
        for a, b in zip(fewer.restarts, more.restarts):
            np.testing.assert_array_equal(a.log_likelihood, b.log_likelihood)


def test_restarts_from_a_partly_given_start_differ_and_keep_what_was_given(hard):
    X = hard.images[:40]
    background = np.full((20, 30), 120.0)
    seen = []
    quiet_fit(
        X,
        (16, 16),
        init_params={"background": background},
        restarts=3,
        seed=1,
        max_iter=0,
        callback=seen.append,
    )
    starts = [p.params for p in seen]
    for p in starts:
        np.testing.assert_array_equal(p.background, background)
    assert not np.allclose(starts[0].face, starts[1].face)
    assert not np.allclose(starts[1].face, starts[2].face)


def test_initialize_gives_the_start_of_a_moved_restart(hard):
    X = hard.images[:40]
    seen = []
    quiet_fit(X, (16, 16), restarts=2, seed=5, callback=seen.append)
    start = next(p.params for p in seen if p.restart == 1 and p.iteration == 0)
    alone = E.initialize(X, (16, 16), seed=5, restart=1)  # fits restart 0 itself
    for f in ("face", "background", "noise_std", "prior"):
        np.testing.assert_array_equal(getattr(alone, f), getattr(start, f), f)


def test_a_face_as_tall_as_the_images_moves_along_the_rows_only_and_never_twice():
    data = S.make_dataset(S.cartoon_face(14, 8), S.texture("clouds", (14, 24), seed=1), 60, 60.0,
                          seed=5)  # fmt: skip
    seen = []
    r = quiet_fit(data.images, (14, 8), restarts=6, seed=1, max_iter=4, callback=seen.append)
    # restarts 1 and 3 move the window by 2 and -2 columns; 4 and 5 would repeat them: annealed
    passes = [int(h.passes[0]) for h in r.restarts]
    assert passes == [0, 1, E.ANNEAL_PASSES, 1, E.ANNEAL_PASSES, E.ANNEAL_PASSES]
    starts = [p.params.face for p in seen if p.iteration == 0]
    for i, j in ((1, 0), (3, 0), (3, 1)):  # two moves, two other windows
        assert not np.allclose(starts[i], starts[j]), (i, j)


def test_every_pass_is_reported_the_moved_start_too(hard):
    X = hard.images[:30]
    passes = []
    for n in (1, 2):
        done: list[int] = []
        quiet_fit(X, (16, 16), restarts=n, seed=2, max_iter=3, on_chunk=lambda d, k, done=done:
                  done.append(d))  # fmt: skip
        passes.append(done.count(len(X)))
    r = quiet_fit(X, (16, 16), restarts=2, seed=2, max_iter=3)
    # restart 1: its start's pass, its iterations' passes and its final (held-out) pass
    assert passes[1] - passes[0] == int(r.restarts[1].passes[-1]) + 1


def test_none_in_a_given_start_is_not_given(hard):
    X = hard.images[:30]
    kw = dict(restarts=2, seed=2, max_iter=2)
    plain = quiet_fit(X, (16, 16), **kw)
    nones = quiet_fit(X, (16, 16), init_params={"prior": None, "face": None}, **kw)
    np.testing.assert_array_equal(nones.face, plain.face)
    assert [int(h.passes[0]) for h in nones.restarts] == [0, 1]


def test_the_passes_that_build_a_start_are_reported_and_change_nothing(hard, monkeypatch):
    """``on_start`` hears of every pass of annealing and of the sampler, restart by restart,
    in order; the fit is the same bit for bit with it or without."""
    from facefinder_cli.engine import sampler

    monkeypatch.setattr(sampler, "SAMPLER_SWEEPS", 4)
    kw = dict(restarts=8, seed=3, max_iter=2)
    heard = []
    told = quiet_fit(hard.images, (16, 16), on_start=lambda *a: heard.append(a), **kw)
    plain = quiet_fit(hard.images, (16, 16), **kw)
    np.testing.assert_array_equal(told.face, plain.face)
    np.testing.assert_array_equal(told.background, plain.background)
    n = E.ANNEAL_PASSES
    want = [(2, "annealing", d, n) for d in range(n + 1)]
    want += [(6, "sampling positions", d, 4) for d in range(5)]
    want += [(7, "annealing", d, n) for d in range(n + 1)]
    assert heard == want


# ----------------------------------------------------------------------------------------------
# restarts="auto" (the default): more starts where the first fit's positions are unsure


def test_auto_runs_three_restarts_where_the_first_fits_positions_are_unsure(hard):
    """Here restart 0 alone ends in a local optimum, 52 nats below EM from the truth, with
    its positions not sure (mean probability 0.82): the default runs three restarts, those of
    ``restarts=3`` bit for bit, and the annealed restart 2 ends above EM from the truth."""
    X, n = hard.images, hard.images.size
    auto = quiet_fit(X, (16, 16), seed=0)
    one = quiet_fit(X, (16, 16), seed=0, restarts=1)
    three = quiet_fit(X, (16, 16), seed=0, restarts=3)
    assert E.FitSettings((16, 16)).restarts == "auto" == auto.settings.restarts
    assert np.mean(one.position_probability) < E.settings.SURE_PROBABILITY
    assert len(auto.restarts) == E.settings.AUTO_RESTARTS == 3
    for name in ("face", "background", "prior", "log_likelihood", "positions"):
        np.testing.assert_array_equal(getattr(auto, name), getattr(three, name), name)
    np.testing.assert_array_equal(auto.restarts[0].log_likelihood, one.log_likelihood)
    truth = quiet_fit(X, (16, 16), init_params=hard.truth, tol=1e-12, max_iter=1000)
    assert len(truth.restarts) == 1  # (a start given whole: every restart would repeat it)
    assert one.log_likelihood[-1] < truth.log_likelihood[-1] - 1e-6 * n
    assert auto.best_restart > 0 and auto.log_likelihood[-1] >= truth.log_likelihood[-1]


def test_auto_runs_one_restart_where_it_is_sure_or_would_repeat_itself(hard):
    easy = S.make_dataset(S.cartoon_face(8, 8), S.texture("stripes", (12, 16)), 60, 60.0, seed=1)
    auto = quiet_fit(easy.images, (8, 8), seed=0)
    assert np.mean(auto.position_probability) >= E.settings.SURE_PROBABILITY
    assert len(auto.restarts) == 1
    one = quiet_fit(easy.images, (8, 8), seed=0, restarts=1)
    np.testing.assert_array_equal(auto.face, one.face)
    X = hard.images
    for kw in (dict(init="zeros"), dict(init="bright"), dict(max_iter=0)):  # unsure, but...
        assert len(quiet_fit(X, (16, 16), seed=0, **kw).restarts) == 1, kw


def test_auto_resumes_bit_for_bit_from_any_restart(hard):
    X = hard.images
    seen = []
    whole = quiet_fit(X, (16, 16), seed=0, callback=lambda p: seen.append(p))
    assert [p.restarts for p in seen if p.iteration == 0] == [1, 3, 3]  # (as far as known)
    assert {p.checkpoint.restarts for p in seen if p.restart > 0} == {3}
    for restart, iteration in ((0, 3), (1, 0), (2, 4)):
        cp = next(p.checkpoint for p in seen if (p.restart, p.iteration) == (restart, iteration))
        again = quiet_fit(X, (16, 16), seed=0, resume=cp)
        assert len(again.restarts) == 3
        for name in ("face", "background", "prior", "log_likelihood", "positions"):
            np.testing.assert_array_equal(getattr(again, name), getattr(whole, name), name)


def test_auto_is_the_only_word_restarts_take():
    assert E.FitSettings.from_dict(E.FitSettings((8, 8)).to_dict()).restarts == "auto"
    for bad in ("Auto", "3", 0, 2.0, True):
        with pytest.raises(ValueError, match="restarts must be"):
            E.FitSettings((8, 8), restarts=bad)
