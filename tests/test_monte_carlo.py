"""Monte-Carlo EM: the M-step on positions drawn from the posteriors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import quiet_fit

from facefinder_cli import engine as E
from facefinder_cli import synthetic as S
from facefinder_cli.cli import main
from facefinder_cli.engine import data as data_mod
from facefinder_cli.engine import loop, passes


@pytest.fixture(scope="module")
def broad():
    """The study's geometry at a noise where posteriors are spread over several positions."""
    return S.make_dataset(
        S.cartoon_face(16, 16), S.texture("stripes", (20, 30)), 200, 250.0, seed=4
    )


def test_recovers_the_face(broad):
    r = E.fit(broad.images, (16, 16), method="mc", seed=0, restarts=1)  # (one run of each)
    assert r.method == "mc" and r.converged
    assert np.corrcoef(r.face.ravel(), broad.truth.face.ravel())[0, 1] >= 0.95
    assert np.mean(np.all(r.positions == broad.positions, axis=1)) >= 0.7
    soft = E.fit(broad.images, (16, 16), seed=0, restarts=1)
    # The comparable number: log p(X | θ), per image and pixel, close to soft EM's.
    assert abs(r.log_likelihood[-1] - soft.log_likelihood[-1]) / broad.images.size < 1e-4


def test_many_draws_approach_soft_em(broad):
    X = broad.images
    start = E.initialize(X, (16, 16))
    kw = dict(init_params=start, max_iter=3, tol=-np.inf, prior_update="always", seed=1)
    soft = quiet_fit(X, (16, 16), accelerate="none", **kw)

    def error(n):
        mc = quiet_fit(X, (16, 16), method="mc", samples=n, samples_growth=1, max_samples=n, **kw)
        return np.linalg.norm(mc.face - soft.face) / np.linalg.norm(soft.face)

    few, many = error(5), error(2000)
    assert many < few / 5
    assert many < 1e-2  # Monte-Carlo error shrinks like 1 / sqrt(draws)


def test_same_seed_same_result_and_chunking(broad):
    X = broad.images[:80]
    a = quiet_fit(X, (16, 16), method="mc", seed=3, max_iter=8, tol=-np.inf, restarts=1)
    b = quiet_fit(X, (16, 16), method="mc", seed=3, max_iter=8, tol=-np.inf, restarts=1)
    for name in ("face", "background", "prior", "elbo", "log_likelihood", "positions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = quiet_fit(X, (16, 16), method="mc", seed=4, max_iter=8, tol=-np.inf, restarts=1)
    assert not np.array_equal(a.face, c.face)
    # The draws are consumed image by image, whatever the chunks.
    kw = dict(method="mc", seed=3, max_iter=8, tol=-np.inf, restarts=1)
    d = quiet_fit(X, (16, 16), chunk_size=7, **kw)
    np.testing.assert_allclose(d.face, a.face, rtol=1e-9)


def test_bound_of_the_draws_is_below_the_log_likelihood_and_matches_brute_force(broad):
    X = broad.images[:40]
    r = quiet_fit(X, (16, 16), method="mc", seed=2, max_iter=6, tol=-np.inf)
    # L(q, θ) <= log p(X | θ) for any q, the empirical distribution of draws included.
    assert np.all(r.elbo <= r.log_likelihood + 1e-9 * np.abs(r.log_likelihood))
    assert r.final_elbo == r.log_likelihood[-1]  # the final bound uses the exact posterior
    # One iteration by hand: the closed-form bound after the M-step equals L(q_draws, θ_1).
    p0 = E.initialize(X, (16, 16))
    data = data_mod._Data(X, (16, 16))
    stats = passes._pass(data, p0, "mc", True, np.random.default_rng(9), 7)
    p1, info = stats.m_step(p0, update_prior=True)
    post = E.posterior(X, p0)
    draws = passes._draw(post, np.random.default_rng(9).random((len(post), 7)))
    pos = np.stack(np.unravel_index(draws, post.shape[1:]), axis=-1)
    ref = E.m_step(X, (16, 16), positions=pos, previous=p0)
    np.testing.assert_allclose(p1.face, ref.face, rtol=1e-10)
    assert p1.noise_std == pytest.approx(ref.noise_std, rel=1e-10)
    bound = E.elbo(X, p1, positions=pos)
    assert info["elbo"] == pytest.approx(bound, rel=1e-10)


def test_draws_follow_the_posterior():
    rng = np.random.default_rng(0)
    q = np.array([[[0.0, 0.5], [0.2, 0.3]], [[1.0, 0.0], [0.0, 0.0]]])
    draws = passes._draw(q, rng.random((len(q), 20000)))
    assert draws.shape == (2, 20000)
    freq = np.bincount(draws[0], minlength=4) / 20000
    np.testing.assert_allclose(freq, [0.0, 0.5, 0.2, 0.3], atol=0.015)
    assert np.all(draws[1] == 0)


def test_samples_schedule_and_window():
    assert [loop._samples_at(t, 10, 1.2, 20) for t in (1, 2, 3, 5, 10)] == [10, 12, 15, 21 - 1, 20]
    assert loop._window_gain([1.0] * 9) == np.inf
    assert loop._window_gain([0.0] * 5 + [5.0] * 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="samples"):
        E.fit(np.zeros((3, 8, 8)), (2, 2), method="mc", samples=0)


def test_cli_fit_and_plot_with_mc(tmp_path, broad):
    np.save(tmp_path / "x.npy", broad.images[:60])
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(
        main,
        [
            "fit",
            str(tmp_path / "x.npy"),
            "--face-size",
            "16x16",
            "--method",
            "mc",
            "--samples",
            "5",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["method"] == "mc"
    with np.load(out / "result.npz") as z:
        assert str(z["method"]) == "mc"
        assert json.loads(str(z["settings"]))["samples"] == 5
    soft = tmp_path / "soft"
    res = runner.invoke(
        main, ["fit", str(tmp_path / "x.npy"), "--face-size", "16x16", "-o", str(soft)]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        main,
        [
            "plot-elbo",
            str(out),
            str(soft),
            "--quantity",
            "log-likelihood",
            "-o",
            str(tmp_path / "c.svg"),
        ],
    )
    assert res.exit_code == 0, res.output
    svg = (tmp_path / "c.svg").read_text()
    assert "mc" in svg and "soft" in svg


def test_after_the_prior_is_released_two_fresh_windows_are_watched(broad):
    # The release moves the log-likelihood; a window straddling it would stop EM at once.
    r = E.fit(broad.images, (16, 16), method="mc", seed=0, max_iter=1000, restarts=1)
    h = r.restarts[0]
    assert r.converged and 0 < h.prior_fixed_until
    assert r.n_iter >= h.prior_fixed_until + 2 * E.MC_WINDOW
