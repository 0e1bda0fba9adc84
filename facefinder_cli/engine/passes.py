"""One streaming pass over the images: the E-step at the current parameters and, in an EM
iteration, the M-step's sums, in one read of every chunk (Monte-Carlo EM draws its positions
here, in chunk order); and the held-out scoring of the final pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facefinder_cli.engine import _fft as sfft
from facefinder_cli.engine.data import _Data
from facefinder_cli.engine.estep import (
    PRIOR_PSEUDO_COUNT,
    _Posterior,
    _Scorer,
    _valid_correlation,
    shrinkage_gains,
)
from facefinder_cli.engine.model import Params
from facefinder_cli.engine.mstep import _Stats

# --------------------------------------------------------------------------------------------
# The EM loop
# --------------------------------------------------------------------------------------------


def _draw(q: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Independent draws from each image's posterior ``q`` (n, Dh, Dw) by inversion of the
    uniform numbers ``u`` (n, S), as flat position indices of shape (n, S); positions with
    ``q = 0`` are never drawn."""
    n = q.shape[0]
    cdf = np.cumsum(q.reshape(n, -1), axis=1, dtype=np.float64)
    cdf /= cdf[:, -1:]
    rows = np.arange(n)[:, None]
    # One searchsorted for the whole chunk: row k's CDF and draws shifted by k.
    flat = np.searchsorted((cdf + rows).ravel(), (u + rows).ravel(), side="right")
    flat = flat.reshape(u.shape) - rows * cdf.shape[1]
    return np.minimum(flat, cdf.shape[1] - 1)


class _Shrunk:
    """The shrunk face of the final pass (:func:`~facefinder_cli.engine.shrunk_face`): the
    Wiener gains of a face fitted to ``data``'s images at ``p``, and the shrunk face's
    conjugate spectrum zero-padded to the images' size, for :func:`_valid_correlation`."""

    def __init__(self, p: Params, data: _Data) -> None:
        self.gains = shrinkage_gains(p.face, p.noise_std**2 / (data.K - 1)).astype(data.dtype)
        face = sfft.irfft2(sfft.rfft2(p.face - data.offset) * self.gains, s=p.face.shape)
        self.face_f = np.conj(sfft.rfft2(face.astype(data.dtype), s=(data.H, data.W)))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """``crops`` (n, h, w) filtered as the face is."""
        return sfft.irfft2(sfft.rfft2(crops) * self.gains, s=crops.shape[-2:])


def _held_out(
    scorer: _Scorer,
    data: _Data,
    xf: np.ndarray,
    lp: np.ndarray,
    corr: np.ndarray,
    q: np.ndarray,
    prior: np.ndarray,
    fitted: tuple[bool, bool],
    support: np.ndarray | None = None,
    shrunk: _Shrunk | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's MAP position and its probability under the parameters fitted to the other
    images: ``(best flat index (n,), probability (n,))`` for a chunk with spectra ``xf``, log
    likelihoods ``lp`` (:meth:`_Scorer.log_joint` without the prior; modified in place), their
    face correlations ``corr``, and posterior ``q`` under the fitted parameters (its soft
    assignment; one-hot for hard EM).

    The fitted face holds each image's own crop with weight 1/K (noise included), and a learnt
    prior its own posterior: scored with them, an image matches itself, and its probability is
    too high (measured: 1.000 where 65% of the positions were right). Here image k is scored with
    the face without its crop, ``F_{-k} = (K F - c_k) / (K - 1)`` with ``c_k(u) = Σ_d q_k(d)
    X_k(d + u)``, ``shrunk`` (:class:`_Shrunk`, the posterior mean of a face fitted to K - 1
    images), and with the :func:`predictive_prior` of the other images' posteriors (only
    over ``support``, if given: the positions a given start prior allows); the
    background and noise std stay those of all the images. It costs four FFTs per image
    (``c_k``, its spectrum, its correlation with the image, the image's correlation with the
    shrunk face), and two small ones of ``c_k``'s size, in the final pass only.
    ``fitted`` says whether the face and the prior were fitted (re-estimated by an M-step):
    those that were not are used as they are."""
    K, H, W = data.K, data.H, data.W
    face_fitted, prior_learnt = fitted
    if face_fitted and K >= 2:
        qf = sfft.fft(sfft.rfft(q, n=W, axis=-1), n=H, axis=-2, overwrite_x=True)
        crop = sfft.irfft2(xf * qf.conj(), s=(H, W))[:, : data.h, : data.w]  # c_k (shifted)
        # W F_{-k} = (K W F - W c_k) / (K - 1): the shrinkage W is a linear filter
        own = _valid_correlation(data, xf, np.conj(sfft.rfft2(shrunk(crop), s=(H, W))))
        corr_w = _valid_correlation(data, xf, shrunk.face_f)
        lp += ((corr_w - corr + (corr_w - own) / (K - 1)) * scorer.inv_s2).astype(lp.dtype)
    if prior_learnt:
        others = np.maximum(K * prior[None] - q, 0.0)
        if support is None:
            held = (others + PRIOR_PSEUDO_COUNT) / (K - 1 + PRIOR_PSEUDO_COUNT * prior.size)
        else:  # no pseudo-count for the positions a given prior forbids
            held = (others + PRIOR_PSEUDO_COUNT) / (K - 1 + PRIOR_PSEUDO_COUNT * support.sum())
            held *= support
    else:
        held = np.broadcast_to(prior, lp.shape)
    with np.errstate(divide="ignore"):
        lp += np.log(held).astype(lp.dtype)
    post = _Posterior.from_log_joint(lp)
    return post.best, np.exp(post.best_log_joint - post.log_likelihood)


def _pass(
    data: _Data,
    p: Params,
    method: str,
    accumulate: bool,
    rng: np.random.Generator | None = None,
    samples: int = 0,
    held_out: tuple[bool, bool] | None = None,
    support: np.ndarray | None = None,
    beta: float = 1.0,
    learn_prior: bool = True,
) -> _Stats:
    """One streaming pass: the E-step at ``p`` (log-likelihood, bound, MAP positions and their
    probabilities) and, if ``accumulate``, the M-step sums. Monte-Carlo EM (``method="mc"``)
    draws ``samples`` positions per image from the posterior with ``rng``, and its ``q`` is the
    empirical distribution of the draws. With ``held_out`` (whether the face and the prior
    were fitted) the positions and probabilities are the held-out ones of :func:`_held_out`
    (with ``support``). ``beta < 1`` tempers soft EM's posteriors, ``q ∝ p(X_k, d | θ)^beta``
    (see :func:`_anneal`; the pass's log-likelihood and bound are then not ``θ``'s).
    ``learn_prior=False`` when the M-step after it holds the prior: soft EM's posteriors may
    then drop more of their smallest ratios (``model._log_cut``)."""
    if held_out is not None:
        assert not accumulate, "held-out positions are for the final pass"
        # The final pass scores with the likelihood alone, then adds the prior, so that the
        # held-out scores reuse the likelihood and its face correlation.
        scorer = _Scorer(p, data, with_prior=False)
        shrunk = _Shrunk(p, data) if held_out[0] and data.K >= 2 else None
        with np.errstate(divide="ignore"):
            log_prior = np.log(p.prior).astype(data.dtype)
    else:
        scorer = _Scorer(p, data)

    # Only soft EM's prior is the average of its posteriors (hard and Monte-Carlo EM count
    # positions); Monte-Carlo EM never draws a ratio below the cut.
    learn = method == "soft" and accumulate and learn_prior

    def chunk(a: int, b: int, u: np.ndarray | None = None) -> tuple:
        x, xf = data.chunk_data(a, b)
        part = _Stats(data)
        if method == "hard" and held_out is None:  # no posteriors needed, only the MAP
            flat, best_lj, ll_k = _Posterior.evidence(*scorer.log_joint(x, xf, data.sq_x[a:b]))
            best = np.column_stack(np.unravel_index(flat, (data.Dh, data.Dw)))
            part.log_likelihood = float(ll_k.sum())
            part.elbo = float(best_lj.sum())
            if accumulate:
                part.add_positions(x, best[:, None, :])
            return part, best, np.exp(best_lj - ll_k)
        if held_out is None:
            lp, c = scorer.log_joint(x, xf, data.sq_x[a:b])
            if beta != 1.0:
                lp *= lp.dtype.type(beta)
            post = _Posterior.from_log_joint(lp, c, learn)
        else:
            lp, c, corr = scorer.log_joint_and_correlation(x, xf, data.sq_x[a:b])
            # (lp + log_prior is a new array: lp itself goes on to _held_out, which needs it)
            post = _Posterior.from_log_joint(lp + log_prior, c, learn_prior=False)
        ll = float(post.log_likelihood.sum())
        part.log_likelihood = ll
        best = np.column_stack(np.unravel_index(post.best, (data.Dh, data.Dw)))
        if held_out is not None:
            q = post.q
            if method == "hard":  # its face is built from each image's MAP crop
                q = np.zeros_like(post.q)
                q.reshape(len(q), -1)[np.arange(len(q)), post.best] = 1.0
            flat, probability = _held_out(
                scorer, data, xf, lp, corr, q, p.prior, held_out, support, shrunk
            )
            part.elbo = ll if method == "soft" else float(post.best_log_joint.sum())
            part.entropy = float(post.entropy.sum())
            return part, np.column_stack(np.unravel_index(flat, (data.Dh, data.Dw))), probability
        if method == "soft":
            part.elbo = ll
            part.entropy = float(post.entropy.sum())
            if accumulate:
                part.add_dense(x, xf, post.q)
        else:
            part.add_draws(x, xf, post, _draw(post.q, u), accumulate)
        return part, best, np.exp(post.best_log_joint - post.log_likelihood)

    def uniforms(a: int, b: int) -> tuple[np.ndarray]:
        # drawn here, in chunk order, so that the draws do not depend on the threads
        return (rng.random((b - a, samples)),)

    stats = _Stats(data)
    stats.positions = np.empty((data.K, 2), dtype=np.intp)
    stats.probability = np.empty(data.K)
    for a, b, (part, best, probability) in data.map(chunk, uniforms if method == "mc" else None):
        stats.merge(part)
        stats.positions[a:b] = best
        stats.probability[a:b] = probability
        data.report(b)
    return stats


#: Deterministic annealing of a start: passes, and the first pass's inverse temperature.
ANNEAL_PASSES = 40
ANNEAL_BETA = 0.02


def _anneal(
    data: _Data,
    p: Params,
    rng: np.random.Generator | None = None,
    passes: int = ANNEAL_PASSES,
    report: Callable[[int, int], None] | None = None,
) -> Params:
    """``p`` carried through ``passes`` soft EM steps at rising inverse temperatures, from
    ``ANNEAL_BETA`` to nearly 1 in geometric steps (deterministic annealing, Ueda & Nakano,
    Neural Networks 1998). Tempered posteriors ``q ∝ p(X_k, d | θ)^beta`` are broad at first:
    the face is fitted to many positions at once, and it sharpens onto the positions that
    explain the images best, rather than onto those its start happened to favour. The prior
    is held; EM then carries on from the result, with ``p``'s prior.

    Annealing forgets its start, so annealed restarts would all end alike. With ``rng`` the
    prior held while annealing is a random one instead (Dirichlet(1) over ``p``'s support):
    it tilts the landscape, and each restart sharpens onto other positions. ``report(done,
    passes)`` before the first pass and after each."""
    start = p
    if rng is not None:
        tilt = rng.dirichlet(np.ones(p.prior.size)).reshape(p.prior.shape) * (p.prior > 0)
        p = Params(p.face, p.background, p.noise_std, tilt / tilt.sum())
    for done, beta in enumerate(np.geomspace(ANNEAL_BETA, 1.0, passes, endpoint=False)):
        if report is not None:
            report(done, passes)
        stats = _pass(data, p, "soft", True, beta=float(beta), learn_prior=False)
        p, _ = stats.m_step(p, update_prior=False)
    if report is not None:
        report(passes, passes)
    return Params(p.face, p.background, p.noise_std, start.prior)
