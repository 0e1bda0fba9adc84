"""The E-step: every position's log-likelihood from one FFT correlation per image
(``_Scorer``), posteriors in the log domain (``_Posterior``), the predictive prior and the
shrunk face that score images a fit has not seen, and the public step functions
``position_log_likelihood``, ``posterior``, ``map_positions``, ``detect`` and ``locate``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from facefinder_cli.engine import _fft as sfft
from facefinder_cli.engine.data import _check_params, _Data
from facefinder_cli.engine.model import (
    _LOG_CUT,
    DEFAULT_CHUNK_SIZE,
    Params,
    _box_valid,
    _log_cut,
)

# --------------------------------------------------------------------------------------------
# E-step
# --------------------------------------------------------------------------------------------


class _Scorer:
    """Per-iteration constants of the E-step for parameters ``p``."""

    def __init__(self, p: Params, data: _Data, with_prior: bool = True) -> None:
        H, W, h, w = data.H, data.W, data.h, data.w
        s2 = p.noise_std**2
        face = p.face - data.offset
        background = p.background - data.offset
        self.data = data
        self.background = background.astype(data.dtype)
        self.face_f = np.conj(sfft.rfft2(face.astype(data.dtype), s=(H, W)))
        with np.errstate(divide="ignore"):
            log_prior = np.log(p.prior) if with_prior else 0.0
        # log p(X_k, d | θ) = lp_k(d) + c_k (see ``log_joint``) with
        #   lp_k(d) = base(d) - (box(P_k)(d) - C_k(d)) / s²
        #   base(d) = log A(d) + box(B²)(d) / (2 s²)
        #   c_k = const - (Σ X_k² - 2 Σ P_k) / (2 s²)
        #   const = -HW/2 log(2π s²) - (ΣF² + ΣB²) / (2 s²)
        # The large per-image constant c_k stays in float64; lp_k varies with d only.
        self.base = (log_prior + _box_valid(background**2, h, w) / (2 * s2)).astype(data.dtype)
        self.const = -0.5 * H * W * math.log(2 * math.pi * s2) - float(
            np.sum(face**2) + np.sum(background**2)
        ) / (2 * s2)
        self.inv_s2 = 1.0 / s2

    def log_joint(
        self, x: np.ndarray, xf: np.ndarray, sq: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``log p(X_k, d | θ) = lp[k, d] + c[k]`` for a chunk: ``lp`` of shape (n, Dh, Dw) in
        the data's dtype, ``c`` (n,) in float64. Needs the chunk's spectra ``xf`` and
        ``sq = Σ_ij X_k²`` (both computed once per fit)."""
        lp, c, _ = self.log_joint_and_correlation(x, xf, sq)
        return lp, c

    def log_joint_and_correlation(
        self, x: np.ndarray, xf: np.ndarray, sq: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`log_joint`, and the correlation ``C_k(d)`` of the images with the face (in
        the shifted units) that it is built from."""
        d = self.data
        corr = _valid_correlation(d, xf, self.face_f)
        prod = x * self.background
        c = self.const - (0.5 * self.inv_s2) * (sq - 2.0 * prod.sum(axis=(1, 2), dtype=np.float64))
        lp = _box_valid(prod, d.h, d.w, d.dtype, d.by_slices)
        lp -= corr
        lp *= -self.inv_s2
        lp += self.base
        return lp, c, corr


def _valid_correlation(data: _Data, xf: np.ndarray, template_f: np.ndarray) -> np.ndarray:
    """``Σ_uv X_k(d + (u, v)) T(u, v)`` at every valid position ``d``, shape (n, Dh, Dw), from
    the images' spectra ``xf`` (n, H, W//2+1) and ``conj(rfft2(T))`` of a template zero-padded
    to H x W (one for all images, or one per image): ``irfft2(xf · conj(rfft2(T)))[:Dh, :Dw]``,
    inverting only the Dh rows that are needed."""
    rows = sfft.ifft(xf * template_f, axis=-2, overwrite_x=True)
    return sfft.irfft(rows[:, : data.Dh], n=data.W, axis=-1)[:, :, : data.Dw]


#: Pseudo-count per position of the Dirichlet prior behind :func:`predictive_prior`.
PRIOR_PSEUDO_COUNT = 1.0


def predictive_prior(prior: np.ndarray, n_images: int, alpha: float = PRIOR_PSEUDO_COUNT):
    """The prior over positions to use for a new image, given a prior fitted to ``n_images``.

    A fitted prior ``A`` is an average of ``n_images`` posteriors: with many more positions
    than images it puts its mass on the positions of the training images and none elsewhere,
    and a new image whose face sits elsewhere is then located wrongly, with confidence. The
    probability that a new image's face is at ``d``, given the training images and a uniform
    Dirichlet(``alpha``) prior on ``A``, is the posterior predictive ::

        (n_images · A(d) + alpha) / (n_images + alpha · D)        (D positions)

    close to the fitted prior when there are many images per position, close to uniform when
    there are few.

    Parameters
    ----------
    prior : ndarray of shape (H-h+1, W-w+1)
    n_images : int
        Images the prior was fitted to.
    alpha : float
        Pseudo-count per position (1: every position counts as seen once before any image).

    Returns
    -------
    ndarray of the shape of ``prior``, summing to one
    """
    a = np.asarray(prior, dtype=np.float64)
    if a.ndim != 2 or (a < 0).any() or not a.sum() > 0 or not np.isfinite(a).all():
        raise ValueError("prior must be a 2-D table of non-negative numbers with a positive sum")
    if not (int(n_images) == n_images >= 0 and alpha > 0):
        raise ValueError(f"need n_images >= 0 and alpha > 0, got {n_images} and {alpha}")
    counts = int(n_images) * a / a.sum()
    return (counts + alpha) / (int(n_images) + alpha * a.size)


#: Radial frequency bands in which :func:`shrinkage_gains` estimates the face's spectrum.
SPECTRUM_BANDS = 8


def shrinkage_gains(face: np.ndarray, noise_var: float) -> np.ndarray:
    """The Wiener gains that turn a fitted face into its posterior mean, on ``rfft2``'s grid of
    the face, shape ``(h, w // 2 + 1)``; the mean (gain at frequency 0) is kept as it is.

    A face fitted to K images holds estimation noise of about ``noise_var = s² / K`` per pixel,
    white: at the frequencies where the face itself is weak (the fine detail that tells a
    position from its neighbours) the fitted face is mostly noise, and scoring with it makes
    positions look surer than they are (docs/PROBABILITIES.md). The gain at frequency ``ω`` is
    ``S(ω) / (S(ω) + N)``, ``N = h w noise_var`` the noise's power, with the face's power ``S``
    estimated from the face itself (empirical Bayes): the power above ``N`` in
    ``SPECTRUM_BANDS`` log-spaced bands of radial frequency, fitted by a power law ``a |ω|^b``
    (``b <= 0``, as in images of natural scenes) over the bands where the face's power is at
    least twice ``N``; with fewer than two such bands, one level for all frequencies."""
    face = np.asarray(face, dtype=np.float64)
    h, w = face.shape
    noise = h * w * float(noise_var)
    gains = np.ones((h, w // 2 + 1))
    if not noise > 0 or h * w < 2:
        return gains
    power = np.abs(np.fft.fft2(face - face.mean())) ** 2
    freq = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    ac = freq > 0
    edges = np.geomspace(freq[ac].min(), freq.max() * (1 + 1e-9), SPECTRUM_BANDS + 1)
    band = np.searchsorted(edges, freq[ac], side="right") - 1
    count = np.bincount(band, minlength=SPECTRUM_BANDS)
    mean = np.bincount(band, power[ac], minlength=SPECTRUM_BANDS) / np.maximum(count, 1)
    where = np.bincount(band, np.log(freq[ac]), minlength=SPECTRUM_BANDS) / np.maximum(count, 1)
    strong = (count > 0) & (mean >= 2 * noise)
    if strong.sum() >= 2:
        slope, level = np.polyfit(
            where[strong], np.log(mean[strong] - noise), 1, w=np.sqrt(count[strong])
        )
        if slope > 0:  # flat at the strong bands' level rather than rising
            flat = np.average(mean[strong] - noise, weights=count[strong])
            slope, level = 0.0, float(np.log(flat))
        signal = np.exp(level + slope * np.log(np.where(ac, freq, 1.0)))
    else:
        signal = np.full(freq.shape, max(float(power[ac].mean()) - noise, 0.0))
    full = signal / (signal + noise)
    full[0, 0] = 1.0
    gains[:] = full[:, : w // 2 + 1]
    return gains


def shrunk_face(face: np.ndarray, noise_std: float, n_images: int) -> np.ndarray:
    """The face to score images with, given a face fitted to ``n_images`` images of noise std
    ``noise_std``: its posterior mean, the fitted face filtered by :func:`shrinkage_gains`
    with ``noise_var = noise_std² / n_images``. Scored with it, the positions' probabilities are
    calibrated where the fitted face's estimation noise would make them overstate (measured in
    ``benchmarks/bench_calibration.py``); with little noise it is the fitted face."""
    face = np.asarray(face, dtype=np.float64)
    if int(n_images) < 1:
        raise ValueError(f"need n_images >= 1, got {n_images}")
    gains = shrinkage_gains(face, float(noise_std) ** 2 / int(n_images))
    return np.fft.irfft2(np.fft.rfft2(face) * gains, s=face.shape)


def _exp_kept(t: np.ndarray, drop: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(t)``, with exact zeros where ``drop`` (the ratios below the cut, see
    ``model._LOG_CUT``), into ``out`` (may be ``t``). Once a fit has found its faces, most
    positions are dropped (95% or more at low noise): the exponential, about 10 ns a value in
    float64, is then taken of the others only. The values are the same either way."""
    kept = drop.size - np.count_nonzero(drop)
    if kept > drop.size // 2:
        q = np.exp(t, out=out)
        np.copyto(q, 0.0, where=drop)
        return q
    where = np.flatnonzero(~drop)
    values = np.exp(np.take(t, where))
    q = np.zeros_like(t) if out is None else out
    if out is not None:
        q.fill(0.0)
    np.put(q, where, values)  # (not through a flat view: a copy if ``out`` is not contiguous)
    return q


@dataclass
class _Posterior:
    """A chunk's normalised posterior, from its log joint ``lp`` (modified in place)."""

    q: np.ndarray  # (n, Dh, Dw) probabilities
    log_likelihood: np.ndarray  # (n,) log p(X_k | θ)
    entropy: np.ndarray  # (n,) H(q_k)
    best: np.ndarray  # (n,) flat index of the MAP position
    best_log_joint: np.ndarray  # (n,) log p(X_k, d*_k | θ)

    @classmethod
    def from_log_joint(
        cls, lp: np.ndarray, c: np.ndarray | float = 0.0, learn_prior: bool = True
    ) -> _Posterior:
        """From ``log p(X_k, d | θ) = lp[k, d] + c[k]`` (``lp`` float32 or float64).
        ``learn_prior=False`` where the posteriors' average will not be the new prior: the
        ratios below ``exp(model._LOG_CUT)`` to the best position are then zeros, instead of
        only those that would be subnormal (see ``model._log_cut``)."""
        n = lp.shape[0]
        flat = lp.reshape(n, -1)
        best = np.argmax(flat, axis=1)
        top = flat[np.arange(n), best]
        flat -= top[:, None]  # t = lp - max <= 0; -inf where the prior is zero
        drop = flat < _log_cut(flat.dtype, learn_prior)
        q = _exp_kept(flat, drop)
        np.copyto(flat, 0.0, where=drop)  # keeps q * t finite in the entropy
        z = q.sum(axis=1, dtype=np.float64)
        q /= z[:, None]
        log_z = np.log(z)
        entropy = log_z - np.einsum("kd,kd->k", q, flat, dtype=np.float64)
        top = top.astype(np.float64) + c
        return cls(q.reshape(lp.shape), top + log_z, np.maximum(entropy, 0.0), best, top)

    @staticmethod
    def evidence(
        lp: np.ndarray, c: np.ndarray | float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(best, best_log_joint, log_likelihood)`` of :meth:`from_log_joint` with
        ``learn_prior=False``, bit for bit, without the posteriors and their entropy, which
        hard EM's passes do not use: one exponential in place and a sum, about a third of the
        work (``lp`` is overwritten)."""
        n = lp.shape[0]
        flat = lp.reshape(n, -1)
        best = np.argmax(flat, axis=1)
        top = flat[np.arange(n), best]
        flat -= top[:, None]
        z = _exp_kept(flat, flat < _LOG_CUT, out=flat).sum(axis=1, dtype=np.float64)
        top = top.astype(np.float64) + c
        return best, top, top + np.log(z)


def _data_for(X: np.ndarray, params: Params, chunk_size: int) -> _Data:
    return _Data(X, np.shape(params.face), chunk_size=chunk_size, cache_fft=False)


def _chunk_log_joint(data: _Data, params: Params, with_prior: bool):
    """Shared driver of the public E-step functions: yields ``(start, stop, lp, c)``, the log
    joint being ``lp + c[:, None, None]`` (see ``_Scorer.log_joint``)."""
    scorer = _Scorer(_check_params(params, data), data, with_prior=with_prior)

    def chunk(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        return scorer.log_joint(*data.chunk_data(a, b), data.sq_x[a:b])

    for a, b, (lp, c) in data.map(chunk):
        yield a, b, lp, c


def position_log_likelihood(
    X: np.ndarray, params: Params, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """``log p(X_k | d, θ)`` for every image and position (not summed over the positions:
    that is :attr:`FitResult.log_likelihood`, ``log p(X | θ)``).

    Parameters
    ----------
    X : ndarray of shape (K, H, W)
    params : Params

    Returns
    -------
    ndarray of shape (K, H-h+1, W-w+1)
    """
    data = _data_for(X, params, chunk_size)
    out = np.empty((data.K, data.Dh, data.Dw))
    for a, b, lp, c in _chunk_log_joint(data, params, False):
        out[a:b] = lp + c[:, None, None]
    return out


def posterior(X: np.ndarray, params: Params, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """The E-step: ``q_k(d) = p(d | X_k, θ)``, computed in the log domain.

    Returns
    -------
    ndarray of shape (K, H-h+1, W-w+1)
        Each ``q[k]`` sums to one; positions with zero prior get exactly zero.
    """
    data = _data_for(X, params, chunk_size)
    out = np.empty((data.K, data.Dh, data.Dw))
    for a, b, lp, c in _chunk_log_joint(data, params, True):
        out[a:b] = _Posterior.from_log_joint(lp, c).q
    return out


def map_positions(
    X: np.ndarray, params: Params, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """The hard E-step: every image's most probable position (first one on ties).

    Returns
    -------
    ndarray of shape (K, 2), int
        ``(row, column)`` of the face's top-left corner.
    """
    data = _data_for(X, params, chunk_size)
    out = np.empty((data.K, 2), dtype=np.intp)
    for a, b, lp, c in _chunk_log_joint(data, params, True):
        best = _Posterior.evidence(lp, c)[0]  # (no posteriors: the MAP is all it needs)
        out[a:b] = np.column_stack(np.unravel_index(best, (data.Dh, data.Dw)))
    return out


@dataclass(frozen=True)
class Detection:
    """Where the face is in each image (:func:`detect`).

    Attributes
    ----------
    positions : ndarray of shape (K, 2), int
        The most probable position of the face's top-left corner, ``(row, column)``.
    probability : ndarray of shape (K,)
        Its posterior probability.
    residual_std : ndarray of shape (K,)
        The root mean square of ``X_k - Model_d`` at that position: about ``noise_std`` when
        the images fit the model, far from it when they do not (another value scale, another
        scene).
    """

    positions: np.ndarray
    probability: np.ndarray
    residual_std: np.ndarray


def detect(
    X: np.ndarray, params: Params, *, chunk_size: int = DEFAULT_CHUNK_SIZE, client: Any = None
) -> Detection:
    """Find the face in every image: the MAP position, its posterior probability, and how well
    the image fits the model there. Streams ``X`` chunk by chunk; with ``client`` (a
    ``distributed.Client``) on the workers of its Dask cluster, as :func:`fit` does (``X`` a
    reader they can open), with the same result.

    For images the parameters were not fitted to, give ``params.prior`` the prior of a new
    image, e.g. :func:`predictive_prior` of the fitted one (a fitted prior favours the training
    images' positions)."""
    if client is None:
        data = _data_for(X, params, chunk_size)
    else:
        from facefinder_cli.engine.cluster import _ClusterData

        data = _ClusterData(
            X, np.shape(params.face), client, chunk_size=chunk_size, cache_fft=False
        )
    try:
        return _detect(data, params)
    finally:
        if client is not None:
            data.close()


def _detect(data: _Data, params: Params) -> Detection:
    p = _check_params(params, data)
    scorer = _Scorer(p, data, with_prior=True)
    s2 = float(params.noise_std) ** 2
    n = data.H * data.W
    with np.errstate(divide="ignore"):
        log_prior = np.log(p.prior).ravel()

    def chunk(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lp, c = scorer.log_joint(*data.chunk_data(a, b), data.sq_x[a:b])
        post = _Posterior.from_log_joint(lp, c, learn_prior=False)
        probability = np.exp(post.best_log_joint - post.log_likelihood)
        # log p(X_k | d*) = -n/2 log(2π s²) - SSE / (2 s²)
        log_lik = post.best_log_joint - log_prior[post.best]
        sse = -2.0 * s2 * (log_lik + 0.5 * n * math.log(2 * math.pi * s2))
        return post.best, probability, np.sqrt(np.maximum(sse, 0.0) / n)

    positions = np.empty((data.K, 2), dtype=np.intp)
    probability = np.empty(data.K)
    residual = np.empty(data.K)
    for a, b, (best, prob, resid) in data.map(chunk):
        positions[a:b] = np.column_stack(np.unravel_index(best, (data.Dh, data.Dw)))
        probability[a:b] = prob
        residual[a:b] = resid
    if not np.isfinite(probability).all():
        k = int(np.argmin(np.isfinite(probability)))
        raise ValueError(f"the parameters give image {k} no finite probability")
    return Detection(positions, probability, residual)


def locate(
    X: np.ndarray, params: Params, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Find the face in every image: the MAP position and its posterior probability, as
    :func:`detect` does.

    Returns
    -------
    positions : ndarray of shape (K, 2), int
    probability : ndarray of shape (K,)
    """
    found = detect(X, params, chunk_size=chunk_size)
    return found.positions, found.probability
