"""Tests of the course-assignment API (``facefinder_cli.compat``, layout (H, W, K)).

The wrappers must agree exactly with the engine on the transposed stack (they are thin layers),
reproduce hand-computed values, and keep the course's conventions for ``run_EM`` (history length,
absolute tolerance, starting point) and ``run_EM_with_restarts``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from facefinder_cli import compat, engine

H, W, h, w, K = 8, 10, 4, 3, 12


def make_stack(seed=0, H=H, W=W, h=h, w=w, K=K, noise=0.6):
    """A synthetic stack in the engine layout (K, H, W), and the true parameters."""
    rng = np.random.default_rng(seed)
    face = rng.normal(0.0, 3.0, (h, w))
    background = rng.normal(0.0, 1.0, (H, W))
    X = np.empty((K, H, W))
    for k in range(K):
        r, c = rng.integers(H - h + 1), rng.integers(W - w + 1)
        X[k] = background
        X[k, r : r + h, c : c + w] = face
    X += rng.normal(0.0, noise, X.shape)
    prior = rng.random((H - h + 1, W - w + 1)) + 0.1
    return X, engine.Params(face, background, noise, prior / prior.sum())


@pytest.fixture
def data():
    X_khw, p = make_stack()
    return X_khw, X_khw.transpose(1, 2, 0), p


def course_args(p):
    return p.face, p.background, p.noise_std, p.prior


def brute_log_probability(X_hwk, F, B, s):
    """Straight from the model: paste the face, sum squared residuals, one position at a time."""
    Hx, Wx, Kx = X_hwk.shape
    hf, wf = F.shape
    out = np.empty((Hx - hf + 1, Wx - wf + 1, Kx))
    for k in range(Kx):
        for dh in range(Hx - hf + 1):
            for dw in range(Wx - wf + 1):
                model = np.array(B, dtype=float)
                model[dh : dh + hf, dw : dw + wf] = F
                sse = np.sum((X_hwk[:, :, k] - model) ** 2)
                out[dh, dw, k] = -0.5 * Hx * Wx * math.log(2 * math.pi * s**2) - sse / (2 * s**2)
    return out


# ----------------------------------------------------------------------------------------------
# Layout: each wrapper is the engine on the transposed stack
# ----------------------------------------------------------------------------------------------


def test_log_probability_is_engine_transposed(data):
    X_khw, X_hwk, p = data
    ll = compat.calculate_log_probability(X_hwk, p.face, p.background, p.noise_std)
    assert ll.shape == (H - h + 1, W - w + 1, K)
    np.testing.assert_array_equal(ll, engine.position_log_likelihood(X_khw, p).transpose(1, 2, 0))


def test_e_step_is_engine_transposed(data):
    X_khw, X_hwk, p = data
    q = compat.run_e_step(X_hwk, *course_args(p))
    assert q.shape == (H - h + 1, W - w + 1, K)
    np.testing.assert_array_equal(q, engine.posterior(X_khw, p).transpose(1, 2, 0))
    np.testing.assert_allclose(q.sum(axis=(0, 1)), 1.0, rtol=1e-12)

    pos = compat.run_e_step(X_hwk, *course_args(p), use_MAP=True)
    assert pos.shape == (2, K) and np.issubdtype(pos.dtype, np.integer)
    np.testing.assert_array_equal(pos, engine.map_positions(X_khw, p).T)
    # rows in pos[0], columns in pos[1]: the argmax of each image's posterior
    flat = q.reshape(-1, K).argmax(axis=0)
    np.testing.assert_array_equal(pos, np.unravel_index(flat, q.shape[:2]))


def test_m_step_is_engine_transposed(data):
    X_khw, X_hwk, p = data
    q = compat.run_e_step(X_hwk, *course_args(p))
    F, B, s, A = compat.run_m_step(X_hwk, q, h, w)
    ref = engine.m_step(X_khw, (h, w), posterior=q.transpose(2, 0, 1))
    np.testing.assert_array_equal(F, ref.face)
    np.testing.assert_array_equal(B, ref.background)
    np.testing.assert_array_equal(A, ref.prior)
    assert isinstance(s, float) and s == ref.noise_std
    assert F.shape == (h, w) and B.shape == (H, W) and A.shape == (H - h + 1, W - w + 1)

    pos = compat.run_e_step(X_hwk, *course_args(p), use_MAP=True)
    F, B, s, A = compat.run_m_step(X_hwk, pos, h, w, use_MAP=True)
    ref = engine.m_step(X_khw, (h, w), positions=pos.T)
    np.testing.assert_array_equal(F, ref.face)
    np.testing.assert_array_equal(B, ref.background)
    np.testing.assert_array_equal(A, ref.prior)
    assert s == ref.noise_std
    # hard M-step: the face is the mean of the chosen crops
    crops = [X_hwk[r : r + h, c : c + w, k] for k, (r, c) in enumerate(pos.T)]
    np.testing.assert_allclose(F, np.mean(crops, axis=0), rtol=1e-10, atol=1e-10)


def test_lower_bound_is_engine_transposed(data):
    X_khw, X_hwk, p = data
    q = compat.run_e_step(X_hwk, *course_args(p))
    L = compat.calculate_lower_bound(X_hwk, *course_args(p), q)
    assert isinstance(L, float)
    assert L == engine.elbo(X_khw, p, posterior=q.transpose(2, 0, 1))
    # with its own posterior the bound is log p(X | θ)
    ll = compat.calculate_log_probability(X_hwk, p.face, p.background, p.noise_std)
    lj = ll + np.log(p.prior)[:, :, None]
    top = lj.max(axis=(0, 1))
    evidence = np.sum(top + np.log(np.exp(lj - top).sum(axis=(0, 1))))
    assert L == pytest.approx(evidence, rel=1e-12)

    pos = compat.run_e_step(X_hwk, *course_args(p), use_MAP=True)
    L_map = compat.calculate_lower_bound(X_hwk, *course_args(p), pos, use_MAP=True)
    assert L_map == engine.elbo(X_khw, p, positions=pos.T)
    # entropy 0: the sum of the log joints at the positions
    assert L_map == pytest.approx(lj[pos[0], pos[1], np.arange(K)].sum(), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Values: by hand and against an explicit loop
# ----------------------------------------------------------------------------------------------


def test_tiny_case_by_hand():
    # 1-D course case h = H = 1: X = [1, 2, 3], F = [2, 3], B = 0, s = 1, one image.
    X = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
    F, B, s = np.array([[2.0, 3.0]]), np.zeros((1, 3)), 1.0
    c = -1.5 * math.log(2 * math.pi)
    # d = 0: model [2, 3, 0], residuals [-1, -1, 3], SSE 11; d = 1: model [0, 2, 3], SSE 1
    ll = compat.calculate_log_probability(X, F, B, s)
    np.testing.assert_allclose(ll[:, :, 0], [[c - 5.5, c - 0.5]], rtol=1e-13)

    A = np.array([[0.5, 0.5]])
    q = compat.run_e_step(X, F, B, s, A)
    q1 = 1.0 / (1.0 + math.exp(-5.0))
    np.testing.assert_allclose(q[:, :, 0], [[1.0 - q1, q1]], rtol=1e-12)
    np.testing.assert_array_equal(compat.run_e_step(X, F, B, s, A, use_MAP=True), [[0], [1]])
    evidence = math.log(0.5 * math.exp(c - 5.5) + 0.5 * math.exp(c - 0.5))
    assert compat.calculate_lower_bound(X, F, B, s, A, q) == pytest.approx(evidence, rel=1e-13)
    L_map = compat.calculate_lower_bound(X, F, B, s, A, np.array([[0], [1]]), use_MAP=True)
    assert L_map == pytest.approx(c - 0.5 + math.log(0.5), rel=1e-13)


@pytest.mark.parametrize(
    "shape",
    [(5, 7, 2, 3, 3), (4, 9, 4, 2, 2), (6, 5, 3, 5, 2), (3, 4, 1, 1, 2), (3, 4, 3, 4, 2)],
    ids=["general", "h=H", "w=W", "h=w=1", "face=image"],
)
def test_log_probability_matches_explicit_loop(shape):
    Hs, Ws, hs, ws, Ks = shape
    rng = np.random.default_rng(sum(shape))
    X = rng.normal(5.0, 2.0, (Hs, Ws, Ks))
    F, B, s = rng.normal(5.0, 2.0, (hs, ws)), rng.normal(5.0, 2.0, (Hs, Ws)), 1.7
    ll = compat.calculate_log_probability(X, F, B, s)
    np.testing.assert_allclose(ll, brute_log_probability(X, F, B, s), rtol=1e-11)


# ----------------------------------------------------------------------------------------------
# run_EM
# ----------------------------------------------------------------------------------------------


def test_run_em_history(data):
    _, X_hwk, p = data
    start = (p.face + 0.5, p.background - 0.3, 2.0, p.prior)
    F, B, s, A, LL = compat.run_EM(X_hwk, h, w, *start, tolerance=1e-3, max_iter=100)
    n_iter = len(LL) - 2
    assert 1 <= n_iter < 100
    assert F.shape == (h, w) and B.shape == (H, W) and A.shape == (H - h + 1, W - w + 1)
    assert np.all(np.diff(LL) >= -1e-9 * np.abs(LL[:-1]))
    # LL[0]: the bound at the start with its own posterior
    q0 = compat.run_e_step(X_hwk, *start)
    assert LL[0] == pytest.approx(compat.calculate_lower_bound(X_hwk, *start, q0), rel=1e-10)
    # LL[-1]: the bound at the result with its own posterior
    q = compat.run_e_step(X_hwk, F, B, s, A)
    assert LL[-1] == pytest.approx(compat.calculate_lower_bound(X_hwk, F, B, s, A, q), rel=1e-10)
    # the course's stopping rule, in absolute nats: every gain but the last >= tolerance
    gains = np.diff(LL[:-1])
    assert np.all(gains[:-1] >= 1e-3) and gains[-1] < 1e-3


def test_run_em_tolerance_minus_inf_runs_max_iter(data):
    _, X_hwk, _ = data
    *_, LL = compat.run_EM(X_hwk, h, w, tolerance=-np.inf, max_iter=7)
    assert len(LL) == 7 + 2


def test_run_em_infinite_tolerance_stops_after_one_iteration(data):
    _, X_hwk, _ = data
    *_, LL = compat.run_EM(X_hwk, h, w, tolerance=np.inf, max_iter=20)
    assert len(LL) == 1 + 2


def test_run_em_warns_when_not_converged(data):
    """A positive tolerance not met warns; tolerance <= 0 asks for max_iter and does not."""
    _, X_hwk, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", engine.ConvergenceWarning)
        compat.run_EM(X_hwk, h, w, tolerance=0.0, max_iter=1)
    with pytest.warns(engine.ConvergenceWarning):
        *_, LL = compat.run_EM(X_hwk, h, w, tolerance=1e-12, max_iter=1)
    assert len(LL) == 3


def test_run_em_max_iter_zero_returns_the_start(data):
    _, X_hwk, p = data
    start = (p.face + 0.5, p.background - 0.3, 2.0, p.prior)
    F, B, s, A, LL = compat.run_EM(X_hwk, h, w, *start, max_iter=0)
    scale = np.abs(X_hwk).max()
    np.testing.assert_allclose(F, start[0], rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(B, start[1], rtol=1e-12, atol=1e-12 * scale)
    assert s == 2.0
    np.testing.assert_allclose(A, start[3], rtol=1e-12)
    assert len(LL) == 2 and LL[0] == LL[1]
    q = compat.run_e_step(X_hwk, *start)
    assert LL[0] == pytest.approx(compat.calculate_lower_bound(X_hwk, *start, q), rel=1e-10)


def test_run_em_missing_parameters_come_from_the_default_start(data):
    X_khw, X_hwk, p = data
    init = engine.initialize(X_khw, (h, w))
    F, B, s, A, LL = compat.run_EM(X_hwk, h, w, F=p.face, max_iter=0)
    np.testing.assert_allclose(F, p.face, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(B, init.background, rtol=1e-12, atol=1e-12)
    assert s == pytest.approx(init.noise_std, rel=1e-12)
    np.testing.assert_allclose(A, 1.0 / A.size, rtol=1e-12)  # uniform
    assert len(LL) == 2


def test_run_em_map(data):
    _, X_hwk, p = data
    start = (p.face + 0.5, p.background - 0.3, 2.0, p.prior)
    F, B, s, A, LL = compat.run_EM(X_hwk, h, w, *start, tolerance=-np.inf, max_iter=5, use_MAP=True)
    assert len(LL) == 5 + 2
    assert np.isfinite(LL).all() and np.isfinite(F).all() and np.isfinite(B).all()
    assert np.isfinite(s) and s > 0 and A.sum() == pytest.approx(1.0)
    pos0 = compat.run_e_step(X_hwk, *start, use_MAP=True)
    L0 = compat.calculate_lower_bound(X_hwk, *start, pos0, use_MAP=True)
    assert LL[0] == pytest.approx(L0, rel=1e-10)
    pos = compat.run_e_step(X_hwk, F, B, s, A, use_MAP=True)
    assert LL[-1] == pytest.approx(
        compat.calculate_lower_bound(X_hwk, F, B, s, A, pos, use_MAP=True), rel=1e-10
    )


def test_run_em_recovers_the_face(data):
    _, X_hwk, p = data
    F, B, s, A, LL = compat.run_EM(X_hwk, h, w, tolerance=-np.inf, max_iter=30)
    np.testing.assert_allclose(F, p.face, atol=4 * p.noise_std / math.sqrt(K))
    assert s == pytest.approx(p.noise_std, rel=0.3)


# ----------------------------------------------------------------------------------------------
# run_EM_with_restarts
# ----------------------------------------------------------------------------------------------


def test_restarts_are_reproducible_and_keep_the_best():
    X_khw, p = make_stack(seed=2, noise=3.0)  # a stack where restart 2 beats restart 0
    X_hwk = X_khw.transpose(1, 2, 0)
    kw = dict(tolerance=-np.inf, max_iter=4, n_restarts=4, seed=123)
    first = compat.run_EM_with_restarts(X_hwk, h, w, **kw)
    second = compat.run_EM_with_restarts(X_hwk, h, w, **kw)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    L = first[-1]
    assert isinstance(L, float)
    ref = engine.fit(
        X_khw,
        (h, w),
        max_iter=4,
        tol=-np.inf,
        restarts=4,
        seed=123,
        prior_update="always",
        accelerate="none",
    )
    assert ref.best_restart != 0
    assert L == max(r.final_elbo for r in ref.restarts)
    one = compat.run_EM_with_restarts(X_hwk, h, w, **{**kw, "n_restarts": 1})
    assert L > one[-1]  # more restarts never worse; here strictly better
    # restart 0 is run_EM's start
    *_, LL = compat.run_EM(X_hwk, h, w, tolerance=-np.inf, max_iter=4)
    assert one[-1] == pytest.approx(LL[-1], rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_x_must_be_3d(data):
    _, X_hwk, p = data
    X2 = X_hwk[:, :, 0]
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        compat.calculate_log_probability(X2, p.face, p.background, p.noise_std)
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        compat.run_e_step(X2, *course_args(p))
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        compat.run_m_step(X2, np.ones((H - h + 1, W - w + 1, 1)), h, w)
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        compat.run_EM(X2, h, w)
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        compat.run_EM_with_restarts(X2, h, w)
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        compat.calculate_lower_bound(X2, *course_args(p), np.ones((H - h + 1, W - w + 1, 1)))


def test_face_larger_than_images(data):
    _, X_hwk, p = data
    with pytest.raises(ValueError, match="fit in the images"):
        compat.calculate_log_probability(X_hwk, np.zeros((H + 1, w)), p.background, 1.0)
    with pytest.raises(ValueError, match="fit in the images"):
        compat.run_EM(X_hwk, h, W + 1)
    with pytest.raises(ValueError, match="fit in the images"):
        compat.run_EM_with_restarts(X_hwk, H + 1, w)


def test_wrong_shapes_are_named(data):
    _, X_hwk, p = data
    with pytest.raises(ValueError, match="B must have"):
        compat.run_e_step(X_hwk, p.face, p.background.T, p.noise_std, p.prior)
    with pytest.raises(ValueError, match="A must have"):
        compat.run_e_step(X_hwk, p.face, p.background, p.noise_std, p.prior[:-1])
    with pytest.raises(ValueError, match="q must have"):
        compat.run_m_step(X_hwk, np.ones((H - h + 1, W - w + 1, K + 1)), h, w)
    with pytest.raises(ValueError, match=r"\(2, K\)"):
        compat.run_m_step(X_hwk, np.zeros((K, 2), dtype=int), h, w, use_MAP=True)
    with pytest.raises(ValueError, match="integer"):
        compat.run_m_step(X_hwk, np.zeros((2, K)), h, w, use_MAP=True)
    with pytest.raises(ValueError, match="F must have"):
        compat.run_EM(X_hwk, h, w, F=np.zeros((h + 1, w)))
