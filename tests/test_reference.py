"""The engine against the brute-force reference (``tests/reference.py``) on small random inputs.

Tolerances. The reference computes every quantity straight from sums of squares of model images;
the engine uses FFT correlations and summed-area tables on data shifted by a constant. Both are
float64 with round-off of a few ulp of the magnitudes involved, so agreement is expected to about
1e-13 of the magnitude (measured: <= 1e-15 for log-likelihoods, <= 1e-13 for posteriors). The
tolerances below are "1e-10 of the natural magnitude" of each quantity (``SCALE_RTOL``): three
orders of magnitude above the measured round-off, many orders below any modelling error (a wrong
term, a missing ``log 2π``, an off-by-one window, a swapped axis all show up at >= 1e-3).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from facefinder_cli import engine as E

try:  # pytest's default "prepend" import mode puts tests/ on sys.path
    import reference as ref
except ImportError:  # pragma: no cover - tests/ turned into a package
    from tests import reference as ref

#: Agreement required, relative to the natural magnitude of each quantity (see module docstring).
SCALE_RTOL = 1e-10

# (id, K, H, W, h, w)
CASES = [
    ("ordinary", 3, 7, 9, 3, 4),
    ("h_eq_H", 3, 6, 9, 6, 4),
    ("w_eq_W", 3, 7, 5, 3, 5),
    ("one_position", 3, 5, 6, 5, 6),
    ("pixel_face", 3, 4, 5, 1, 1),
    ("non_square", 4, 5, 11, 2, 5),
    ("single_image", 1, 6, 8, 3, 2),
    ("tall_face", 2, 8, 5, 4, 2),
]
# (mean, std, noise std) of the pixel values
SCALES = {
    "8bit": (100.0, 30.0, 25.0),
    "unit": (0.4, 0.12, 0.1),
    "16bit": (32768.0, 8000.0, 6500.0),
}
CASE_IDS = [c[0] for c in CASES]


def _seed(*keys) -> int:
    """A deterministic seed from test-case keys (no dependence on PYTHONHASHSEED)."""
    return sum((i + 1) * 7919 * sum(map(ord, str(k))) for i, k in enumerate(keys)) % 2**31


class Problem:
    """Random data from the model and perturbed parameters at which to compare."""

    def __init__(self, case, scale="8bit", seed_extra=0):
        name, K, H, W, h, w = case
        mean, std, noise = SCALES[scale]
        rng = np.random.default_rng(_seed(name, scale, seed_extra))
        self.K, self.H, self.W, self.h, self.w = K, H, W, h, w
        self.Dh, self.Dw = H - h + 1, W - w + 1
        self.mean, self.std, self.noise = mean, std, noise
        self.rng = rng
        face = mean + std * rng.standard_normal((h, w))
        background = mean + std * rng.standard_normal((H, W))
        self.true_positions = np.column_stack(
            [rng.integers(self.Dh, size=K), rng.integers(self.Dw, size=K)]
        )
        self.X = np.stack(
            [ref.model_image(face, background, d) for d in self.true_positions]
        ) + noise * rng.standard_normal((K, H, W))
        # Parameters to evaluate at: the truth, perturbed, with a random prior and a larger noise
        # std so that posteriors are neither uniform nor one-hot.
        prior = rng.dirichlet(np.ones(self.Dh * self.Dw)).reshape(self.Dh, self.Dw)
        self.params = E.Params(
            face + 0.3 * std * rng.standard_normal((h, w)),
            background + 0.3 * std * rng.standard_normal((H, W)),
            1.5 * noise,
            prior,
        )
        self.magnitude = float(np.max(np.abs(self.X)))

    def ref_args(self, p=None):
        p = self.params if p is None else p
        return (p.face, p.background, p.noise_std, p.prior)

    def random_q(self, with_zeros=True):
        """A random dense posterior (each q_k sums to one), optionally with exact zeros."""
        q = self.rng.gamma(0.5, size=(self.K, self.Dh, self.Dw))
        if with_zeros and self.Dh * self.Dw > 1:
            q[self.rng.random(q.shape) < 0.3] = 0.0
            q[:, 0, 0] += 0.1  # no image without support
        return q / q.sum(axis=(1, 2), keepdims=True)

    def draws(self, S):
        """``(K, S, 2)`` positions with repeats."""
        return np.stack(
            [
                self.rng.integers(self.Dh, size=(self.K, S)),
                self.rng.integers(self.Dw, size=(self.K, S)),
            ],
            axis=-1,
        )


def _assert_params_close(got: E.Params, want, X, q=None, what=""):
    """``want = (face, background, noise_std, prior)``: the reference M-step of ``q`` on ``X``.

    Face, background and noise std are compared to ``SCALE_RTOL`` of the data magnitude; the prior
    (a mean of probabilities, no cancellation) to 1e-12 absolute. The background is a ratio
    ``N_B / D_B`` whose denominator ``D_B = Σ_k (1 - cover_k)`` is a difference of numbers of
    order ``K``: both implementations get it to ~``K eps`` absolute, so where ``D_B`` is small
    (a sharp posterior) the background is only good to ~``K eps / D_B`` relative: that much is
    added to its tolerance, pixel by pixel.

    The engine clips the noise std at ``NOISE_FLOOR`` x the data's std (documented; it warns):
    the reference's ``s`` is clipped the same way before comparing (only degenerate cases, e.g.
    one image with a one-hot ``q``, where the maximum-likelihood ``s`` is 0).
    """
    face, background, noise_std, prior = want
    magnitude = float(np.max(np.abs(X)))
    atol = SCALE_RTOL * magnitude
    bg_atol = np.full(background.shape, atol)
    if q is not None:
        K = q.shape[0]
        den = ref.background_weight(q, face.shape, background.shape)
        thr = K * ref.UNCOVERED_MIN
        # Precondition: no weight within round-off reach of the threshold, so that engine and
        # reference must agree on which pixels are re-estimated.
        assert not np.any(np.abs(den - thr) < 1e-6 * thr), "ill-conditioned test data"
        known = den > thr
        bg_atol[known] += 100 * np.finfo(float).eps * K * magnitude / den[known]
    np.testing.assert_allclose(got.face, face, rtol=0, atol=atol, err_msg=f"face {what}")
    assert np.all(np.abs(got.background - background) <= bg_atol), (
        f"background {what}: max excess {np.max(np.abs(got.background - background) - bg_atol)}"
    )
    floor = E.NOISE_FLOOR * float(np.std(np.asarray(X, dtype=np.float64)))
    np.testing.assert_allclose(
        got.noise_std, max(noise_std, floor), rtol=SCALE_RTOL, err_msg=f"noise_std {what}"
    )
    np.testing.assert_allclose(got.prior, prior, rtol=0, atol=1e-12, err_msg=f"prior {what}")


def _fit(X, face_shape, **kw):
    """``fit`` without its ConvergenceWarning (the tests stop it on purpose) and NoiseFloorWarning
    (asserted through ``noise_floored`` where it matters). The prior is re-estimated from the
    first M-step, as in the reference M-step."""
    kw.setdefault("prior_update", "always")
    kw.setdefault("accelerate", "none")  # an iteration is one EM step, as in the reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", E.ConvergenceWarning)
        warnings.simplefilter("ignore", E.NoiseFloorWarning)
        return E.fit(X, face_shape, **kw)


def _scale_bound(x, X=None, noise_std=None):
    """Tolerance for a log-density sum ``x``: ``SCALE_RTOL`` of its magnitude.

    With the data ``X`` and the noise std ``s``, plus the fast path's intrinsic round-off: it
    expands ``||X - Model||²`` into sums of squares (and the closed-form bound uses
    ``Σ X² - K ||F||² - Σ N_B² / D_B``), losing ~``eps Σ (X - mean)²`` absolutely before the
    division by ``2 s²``. Negligible (< 1e-10) unless ``s`` collapses to its floor (one image,
    one-hot q: an exact fit), where the reference's sum of squares is ~0 but the expansion is not.
    """
    tol = SCALE_RTOL * max(1.0, abs(x))
    if X is not None:
        X = np.asarray(X, dtype=np.float64)
        spread = float(np.sum((X - X.mean()) ** 2))
        tol += 1e3 * np.finfo(float).eps * spread / (2 * noise_std**2)
    return tol


# ----------------------------------------------------------------------------------------------
# The reference itself
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_is_self_consistent(case):
    """Identities of the model that the reference must satisfy on its own."""
    pb = Problem(case)
    args = pb.ref_args()
    q = ref.posterior(pb.X, *args)
    np.testing.assert_allclose(q.sum(axis=(1, 2)), 1.0, rtol=1e-14)
    # Gibbs: L(posterior, θ) = log p(X | θ).
    lm = ref.log_marginal(pb.X, *args)
    assert ref.lower_bound(pb.X, *args, q) == pytest.approx(lm, rel=1e-12)
    # ... and any other q gives less.
    if pb.Dh * pb.Dw > 1:
        assert ref.lower_bound(pb.X, *args, pb.random_q()) < lm
    # The M-step maximises L(q, ·): perturbing its output (where identifiable) lowers the bound.
    face, bg, s, prior = ref.m_step(pb.X, q, pb.h, pb.w)
    best = ref.lower_bound(pb.X, face, bg, s, prior, q)
    rng = np.random.default_rng(0)
    for perturbed in (
        (face + 0.01 * rng.standard_normal(face.shape), bg, s, prior),
        (face, bg, s * 1.01, prior),
        (face, bg, s * 0.99, prior),
    ):
        assert ref.lower_bound(pb.X, *perturbed, q) < best
    known = ~ref.unidentified(q, (pb.h, pb.w), (pb.H, pb.W))
    if known.any():
        assert ref.lower_bound(pb.X, face, bg + 0.01 * known, s, prior, q) < best
    # m_step_positions' built-in crop-average check runs, and the one-hot M-step maximises too
    # (with one image it fits exactly: s = 0, a degenerate maximum).
    face1, bg1, s1, prior1 = ref.m_step_positions(pb.X, pb.true_positions, pb.h, pb.w)
    q1 = ref.positions_to_q(pb.true_positions, (pb.Dh, pb.Dw))
    if pb.K == 1:
        assert s1 == pytest.approx(0.0, abs=1e-12 * pb.magnitude)
        return
    assert ref.lower_bound(pb.X, face1, bg1, s1 * 1.01, prior1, q1) < ref.lower_bound(
        pb.X, face1, bg1, s1, prior1, q1
    )


# ----------------------------------------------------------------------------------------------
# E-step
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_log_likelihood(case, scale):
    pb = Problem(case, scale)
    want = ref.log_likelihood(pb.X, *pb.ref_args()[:3])
    got = E.position_log_likelihood(pb.X, pb.params)
    assert got.shape == (pb.K, pb.Dh, pb.Dw)
    np.testing.assert_allclose(got, want, rtol=0, atol=SCALE_RTOL * np.max(np.abs(want)))


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_posterior_and_map_positions(case, scale):
    pb = Problem(case, scale)
    want = ref.posterior(pb.X, *pb.ref_args())
    got = E.posterior(pb.X, pb.params)
    assert got.shape == want.shape
    # q = exp(lj(d) - log Z): an absolute error δ in the log joint is a relative error δ in q;
    # δ <= SCALE_RTOL * |lj| ~ 1e-7 would already be huge, measured δ ~ 1e-13: rtol 1e-9 checks
    # even the tiny probabilities, atol covers those below ~1e-300 (underflow).
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(got.sum(axis=(1, 2)), 1.0, rtol=1e-13)
    np.testing.assert_array_equal(
        E.map_positions(pb.X, pb.params), ref.map_positions(pb.X, *pb.ref_args())
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_posterior_with_zero_prior(case):
    pb = Problem(case, seed_extra="zeros")
    prior = np.array(pb.params.prior)
    if prior.size > 1:
        zero = pb.rng.random(prior.shape) < 0.5
        zero.flat[np.argmax(prior)] = False  # keep the prior's support non-empty
        # Also zero the reference MAP position of the first image, so that the zero-prior
        # masking actually changes the answer.
        lj = ref.log_joint(pb.X, *pb.ref_args()[:3], np.ones_like(prior))
        zero.flat[np.argmax(lj[0])] = True
        if zero.all():
            zero.flat[0] = False
        prior[zero] = 0.0
        prior /= prior.sum()
    p = E.Params(pb.params.face, pb.params.background, pb.params.noise_std, prior)
    args = pb.ref_args(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of any kind, not only RuntimeWarning
        want = ref.posterior(pb.X, *args)
        got = E.posterior(pb.X, p)
        pos = E.map_positions(pb.X, p)
        lb = E.elbo(pb.X, p, posterior=got)
        lb_pos = E.elbo(pb.X, p, positions=pos)
    assert not np.isnan(got).any()
    assert np.all(got[:, prior == 0] == 0.0), "zero prior must give exactly zero posterior"
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    np.testing.assert_array_equal(pos, ref.map_positions(pb.X, *args))
    assert np.all(prior[pos[:, 0], pos[:, 1]] > 0)
    # L(posterior) = log marginal, with the 0 * log 0 = 0 and 0 * (-inf) = 0 conventions.
    lm = ref.log_marginal(pb.X, *args)
    assert np.isfinite(lb)
    assert lb == pytest.approx(ref.lower_bound(pb.X, *args, want), abs=_scale_bound(lm))
    assert lb == pytest.approx(lm, abs=_scale_bound(lm))
    want_pos = ref.lower_bound(pb.X, *args, ref.positions_to_q(pos, prior.shape))
    assert lb_pos == pytest.approx(want_pos, abs=_scale_bound(want_pos))


# ----------------------------------------------------------------------------------------------
# M-step
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_m_step_dense(case, scale):
    pb = Problem(case, scale)
    previous_bg = pb.mean + pb.std * pb.rng.standard_normal((pb.H, pb.W))
    previous = E.Params(np.zeros((pb.h, pb.w)), previous_bg, 1.0, pb.params.prior)
    for label, q in (
        ("posterior", ref.posterior(pb.X, *pb.ref_args())),
        ("random q with zeros", pb.random_q()),
    ):
        want = ref.m_step(pb.X, q, pb.h, pb.w)
        got = E.m_step(pb.X, (pb.h, pb.w), posterior=q)
        _assert_params_close(got, want, pb.X, q, f"({label}, previous=None)")
        want = ref.m_step(pb.X, q, pb.h, pb.w, previous_background=previous_bg)
        got = E.m_step(pb.X, (pb.h, pb.w), posterior=q, previous=previous)
        _assert_params_close(got, want, pb.X, q, f"({label}, previous given)")


@pytest.mark.parametrize("S", [None, 1, 6], ids=["K_2", "K_1_2", "K_6_2"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_m_step_positions(case, S):
    pb = Problem(case, seed_extra=f"positions{S}")
    positions = pb.true_positions if S is None else pb.draws(S)
    previous_bg = pb.mean + pb.std * pb.rng.standard_normal((pb.H, pb.W))
    previous = E.Params(np.zeros((pb.h, pb.w)), previous_bg, 1.0, pb.params.prior)
    q = ref.positions_to_q(positions, (pb.Dh, pb.Dw))
    want = ref.m_step_positions(pb.X, positions, pb.h, pb.w)
    got = E.m_step(pb.X, (pb.h, pb.w), positions=positions)
    _assert_params_close(got, want, pb.X, q, "(previous=None)")
    want = ref.m_step_positions(pb.X, positions, pb.h, pb.w, previous_background=previous_bg)
    got = E.m_step(pb.X, (pb.h, pb.w), positions=positions, previous=previous)
    _assert_params_close(got, want, pb.X, q, "(previous given)")
    # The same positions given as a dense q must give the same M-step.
    dense = E.m_step(pb.X, (pb.h, pb.w), posterior=q, previous=previous)
    _assert_params_close(dense, want, pb.X, q, "(positions as dense q)")


# ----------------------------------------------------------------------------------------------
# The lower bound
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_lower_bound(case, scale):
    pb = Problem(case, scale)
    args = pb.ref_args()
    for label, q in (
        ("posterior", ref.posterior(pb.X, *args)),
        ("random q with zeros", pb.random_q()),
    ):
        want = ref.lower_bound(pb.X, *args, q)
        got = E.elbo(pb.X, pb.params, posterior=q)
        assert got == pytest.approx(want, abs=_scale_bound(want)), label
    for label, positions in (("(K, 2)", pb.true_positions), ("(K, S, 2)", pb.draws(5))):
        want = ref.lower_bound(pb.X, *args, ref.positions_to_q(positions, (pb.Dh, pb.Dw)))
        got = E.elbo(pb.X, pb.params, positions=positions)
        assert got == pytest.approx(want, abs=_scale_bound(want)), label


# ----------------------------------------------------------------------------------------------
# fit: the first iteration against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fit_first_iteration_soft(case, scale):
    pb = Problem(case, scale)
    p0 = pb.params
    args0 = pb.ref_args(p0)
    r = _fit(pb.X, (pb.h, pb.w), max_iter=1, tol=-np.inf, init_params=p0)
    assert r.n_iter == 1 and r.elbo.shape == (2,) and r.log_likelihood.shape == (2,)
    q0 = ref.posterior(pb.X, *args0)
    # θ1 is the reference M-step of q0 (unidentifiable pixels keep p0's background).
    _assert_params_close(r.params, ref.m_step(pb.X, q0, pb.h, pb.w, p0.background), pb.X, q0)
    np.testing.assert_array_equal(r.unidentified, ref.unidentified(q0, (pb.h, pb.w), (pb.H, pb.W)))
    # elbo[0] = L(q0, θ0) = log p(X | θ0) = log_likelihood[0].
    lm0 = ref.log_marginal(pb.X, *args0)
    assert r.elbo[0] == pytest.approx(lm0, abs=_scale_bound(lm0))
    assert r.log_likelihood[0] == pytest.approx(lm0, abs=_scale_bound(lm0))
    # elbo[1]: the closed form after the M-step equals L(q0, θ1) built from model images.
    want = ref.lower_bound(pb.X, *(r.face, r.background, r.noise_std, r.prior), q0)
    assert r.elbo[1] == pytest.approx(want, abs=_scale_bound(want))
    assert r.elbo[1] >= r.elbo[0] - _scale_bound(lm0)
    # The final pass: log p(X | θ1), and each image's MAP position and its probability under
    # the face and the prior fitted to the other images.
    args1 = (r.face, r.background, r.noise_std, r.prior)
    lm1 = ref.log_marginal(pb.X, *args1)
    assert r.log_likelihood[1] == pytest.approx(lm1, abs=_scale_bound(lm1))
    assert r.final_elbo == pytest.approx(lm1, abs=_scale_bound(lm1))
    q1 = ref.held_out_posterior(pb.X, *args1, face_fitted=True, prior_learnt=True)
    flat = q1.reshape(pb.K, -1).argmax(axis=1)
    np.testing.assert_array_equal(
        r.positions, np.column_stack(np.unravel_index(flat, q1.shape[1:]))
    )
    np.testing.assert_allclose(
        r.position_probability, q1[np.arange(pb.K), r.positions[:, 0], r.positions[:, 1]], rtol=1e-9
    )


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fit_first_iteration_hard(case, scale):
    pb = Problem(case, scale)
    p0 = pb.params
    args0 = pb.ref_args(p0)
    r = _fit(pb.X, (pb.h, pb.w), method="hard", max_iter=1, tol=-np.inf, init_params=p0)
    map0 = ref.map_positions(pb.X, *args0)
    q0 = ref.positions_to_q(map0, (pb.Dh, pb.Dw))
    want = ref.m_step_positions(pb.X, map0, pb.h, pb.w, p0.background)
    _assert_params_close(r.params, want, pb.X, q0)
    # One image with a one-hot q fits exactly (s = 0): the engine clips s and says so.
    assert r.noise_floored == (want[2] < E.NOISE_FLOOR * float(np.std(pb.X)))
    assert r.noise_floored == (pb.K == 1)
    np.testing.assert_array_equal(r.unidentified, ref.unidentified(q0, (pb.h, pb.w), (pb.H, pb.W)))
    # log_likelihood[0] is the log marginal at θ0; elbo[0] is hard EM's bound: L(one-hot q0, θ0)
    # (RestartHistory: "for t = 0, the posterior at θ0"; MODEL.md: the hard-EM L is not log p(X)).
    lm0 = ref.log_marginal(pb.X, *args0)
    assert r.log_likelihood[0] == pytest.approx(lm0, abs=_scale_bound(lm0))
    want0 = ref.lower_bound(pb.X, *args0, q0)
    assert r.elbo[0] == pytest.approx(want0, abs=_scale_bound(want0))
    args1 = (r.face, r.background, r.noise_std, r.prior)
    want1 = ref.lower_bound(pb.X, *args1, q0)
    assert r.elbo[1] == pytest.approx(want1, abs=_scale_bound(want1, pb.X, r.noise_std))
    lm1 = ref.log_marginal(pb.X, *args1)
    assert r.log_likelihood[1] == pytest.approx(lm1, abs=_scale_bound(lm1, pb.X, r.noise_std))
    map1 = ref.map_positions(pb.X, *args1)
    held = ref.held_out_posterior(pb.X, *args1, face_fitted=True, prior_learnt=True, hard=True)
    flat = held.reshape(pb.K, -1).argmax(axis=1)
    np.testing.assert_array_equal(
        r.positions, np.column_stack(np.unravel_index(flat, (pb.Dh, pb.Dw)))
    )
    np.testing.assert_allclose(
        r.position_probability, held.reshape(pb.K, -1).max(axis=1), rtol=1e-9
    )
    want_final = ref.lower_bound(pb.X, *args1, ref.positions_to_q(map1, (pb.Dh, pb.Dw)))
    assert r.final_elbo == pytest.approx(
        want_final, abs=_scale_bound(want_final, pb.X, r.noise_std)
    )


# ----------------------------------------------------------------------------------------------
# Non-identifiable background pixels
# ----------------------------------------------------------------------------------------------

STUDY = ("study", 4, 20, 30, 16, 16)  # face 16x16 on a 20x30 background: 5 x 15 positions


def _study_block():
    block = np.zeros((20, 30), dtype=bool)
    block[4:16, 14:16] = True  # rows 4..15, columns 14..15: covered by every window
    return block


@pytest.mark.parametrize("previous", ["near_data", "far_from_data"])
def test_unidentified_block_soft(previous):
    pb = Problem(STUDY)
    # A large noise std makes the posterior positive (and not tiny) everywhere.
    if previous == "near_data":
        bg0 = pb.mean + pb.std * pb.rng.standard_normal((pb.H, pb.W))
    else:  # values on another scale than the data (e.g. a user-supplied 0..1 background)
        bg0 = pb.rng.uniform(0.0, 1.0, (pb.H, pb.W))
    p0 = E.Params(pb.params.face, bg0, 20 * pb.noise, pb.params.prior)
    q0 = ref.posterior(pb.X, *pb.ref_args(p0))
    assert q0.min() > 1e-6  # the precondition of the block's shape
    block = _study_block()
    np.testing.assert_array_equal(ref.unidentified(q0, (16, 16), (20, 30)), block)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r = _fit(pb.X, (16, 16), max_iter=1, tol=-np.inf, init_params=p0)
        m = E.m_step(pb.X, (16, 16), posterior=q0, previous=p0)
    np.testing.assert_array_equal(r.unidentified, block)
    for label, got in (("fit", r.params), ("m_step", m)):
        for name in ("face", "background", "prior"):
            assert np.isfinite(getattr(got, name)).all(), f"{label}: {name} has NaN/inf"
        assert math.isfinite(got.noise_std)
        # Exactly the previous values (not a round-trip through a shift of the data).
        np.testing.assert_array_equal(got.background[block], bg0[block], err_msg=label)
        _assert_params_close(got, ref.m_step(pb.X, q0, 16, 16, bg0), pb.X, q0, label)
    assert np.isfinite(r.elbo).all() and np.isfinite(r.log_likelihood).all()


def test_unidentified_hard():
    """Hard EM: the pixels covered by every chosen window are the unidentified ones."""
    case = ("hard_block", 5, 12, 14, 6, 7)
    pb = Problem(case)
    # Data whose faces sit close together, so the chosen windows share a block of pixels.
    rng = np.random.default_rng(11)
    face = pb.mean + 60 * rng.standard_normal((6, 7))
    bg = pb.mean + 60 * rng.standard_normal((12, 14))
    true = np.array([[1, 2], [2, 2], [1, 3], [3, 1], [2, 4]])
    X = np.stack([ref.model_image(face, bg, d) for d in true]) + 5 * rng.standard_normal(
        (5, 12, 14)
    )
    p0 = E.Params(face, bg + 1.0, 5.0, np.full((7, 8), 1 / 56))
    map0 = ref.map_positions(X, *pb.ref_args(p0))
    np.testing.assert_array_equal(map0, true)  # precondition
    every = np.ones((12, 14), dtype=bool)
    for d in map0:
        every &= ref.window_mask((12, 14), (6, 7), d)
    assert every.sum() == 4 * 4  # rows 3..6, columns 4..7
    r = _fit(X, (6, 7), method="hard", max_iter=1, tol=-np.inf, init_params=p0)
    np.testing.assert_array_equal(r.unidentified, every)
    assert np.isfinite(r.background).all()
    np.testing.assert_array_equal(r.background[every], p0.background[every])
    want = ref.m_step_positions(X, map0, 6, 7, p0.background)
    _assert_params_close(r.params, want, X, ref.positions_to_q(map0, (7, 8)))


# ----------------------------------------------------------------------------------------------
# Chunking
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_chunking_does_not_change_the_fit(method):
    pb = Problem(("chunks", 7, 9, 11, 4, 5), seed_extra=method)
    runs = [
        _fit(pb.X, (pb.h, pb.w), method=method, max_iter=4, tol=-np.inf, seed=3, chunk_size=c)
        for c in (1, 3, 1000)
    ]
    base = runs[0]
    assert base.n_iter == 4
    # Sums over chunks only change the order of float64 additions: ~1e-15 relative.
    for r in runs[1:]:
        _assert_params_close(
            r.params,
            (base.face, base.background, base.noise_std, base.prior),
            pb.X,
            None,
            "chunking",
        )
        np.testing.assert_allclose(r.elbo, base.elbo, rtol=SCALE_RTOL)
        np.testing.assert_allclose(r.log_likelihood, base.log_likelihood, rtol=SCALE_RTOL)
        assert r.final_elbo == pytest.approx(base.final_elbo, rel=SCALE_RTOL)
        np.testing.assert_array_equal(r.positions, base.positions)
        np.testing.assert_allclose(r.position_probability, base.position_probability, rtol=1e-9)
        np.testing.assert_array_equal(r.unidentified, base.unidentified)
    # And the history is the reference's: the last θ's log marginal.
    lm = ref.log_marginal(pb.X, base.face, base.background, base.noise_std, base.prior)
    assert base.log_likelihood[-1] == pytest.approx(lm, abs=_scale_bound(lm))
