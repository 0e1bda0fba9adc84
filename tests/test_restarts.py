"""Restarts: restart 0 is the default start, restart 1 anneals it, later ones start apart;
the same seed repeats them, and more restarts are never worse."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import quiet_fit

from facefinder_cli import engine as E
from facefinder_cli import synthetic as S

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


def test_restart_one_anneals_the_default_start_and_the_others_differ(hard):
    X = hard.images
    starts = _starts(X, 4, seed=5)
    assert len(starts) == 4
    for i in range(4):
        for j in range(i):
            assert not np.allclose(starts[i].face, starts[j].face), (i, j)
    r = quiet_fit(X, (16, 16), restarts=2, seed=5, max_iter=3)
    assert [h.passes[0] for h in r.restarts] == [0, E.ANNEAL_PASSES]
    # annealing is deterministic: another seed changes the random restarts only
    other = _starts(X, 4, seed=6)
    np.testing.assert_array_equal(other[0].face, starts[0].face)
    np.testing.assert_array_equal(other[1].face, starts[1].face)
    assert not np.allclose(other[2].face, starts[2].face)
    # the study's random starts are not annealed
    r = quiet_fit(X, (16, 16), init="random", restarts=2, seed=5, max_iter=1)
    assert [h.passes[0] for h in r.restarts] == [0, 0]


def test_the_annealed_restart_escapes_the_default_starts_local_optimum(hard):
    X, n = hard.images, hard.images.size
    truth = quiet_fit(X, (16, 16), init_params=hard.truth)
    r = quiet_fit(X, (16, 16), restarts=2, seed=0)
    first, annealed = (h.log_likelihood[-1] for h in r.restarts)
    assert (truth.log_likelihood[-1] - first) / n > 1e-4  # the default start falls short
    assert annealed >= truth.log_likelihood[-1] - 1e-7 * n  # EM from the truth's optimum, or higher
    assert r.best_restart == 1


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
