"""Several faces on one background: :func:`fit_mixture`.

Model: image ``k`` shows one of N faces ``F_1..F_N`` (all ``h x w``) pasted at ``d_k`` on the
shared background ``B``, plus Gaussian noise of std ``s``. The latent variable is the pair
(face ``m``, position ``d``), with the prior ``w_m A(d)``: face weights times one prior over
positions. With N = 1 it is the model of :func:`~facefinder_cli.engine.fit`.

An iteration is one streaming pass, as for one face, with N correlations per image:

* E-step. ``log p(X_k, m, d | θ) = lp[k, m, d] + c[k]`` with
  ``lp[k, m, d] = log w_m + log A(d) + box(B²)(d) / (2 s²) - ||F_m||² / (2 s²)
  + (C_km(d) - box(P_k)(d)) / s²``, ``C_km = X_k ⋆ F_m`` from the cached ``rfft2(X_k)`` and
  ``P_k = X_k ⊙ B``; ``c[k]`` does not depend on (m, d). Posteriors over the N·D pairs are
  normalised in the log domain.
* M-step. ``F_m = Σ_k Σ_d q_k(m, d) X_k(d + ·) / Σ_k Σ_d q_k(m, d)``, from
  ``irfft2(Σ_k rfft2(X_k) · conj(rfft2(q_k(m, ·))))``; the background from the cover of all
  faces, ``Σ_m box(q_k(m, ·))``, as for one face; ``w_m`` and ``A`` from the summed
  posterior; ``s²`` and the lower bound after the M-step in closed form.

Hard EM takes each image's best pair; Monte-Carlo EM draws pairs from the posterior. The start
(``init="kmeans"``) fits one face first, cuts every image's crop at its position there, and
seeds N faces among the crops as k-means++ does (Arthur & Vassilvitskii, 2007: each next seed
drawn with probability proportional to its squared distance from the nearest seed so far),
refined by a few rounds of k-means: the faces start apart, on different images' crops.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from facefinder_cli.engine import _fft as sfft
from facefinder_cli.engine.data import _Data
from facefinder_cli.engine.estep import _Posterior, _valid_correlation
from facefinder_cli.engine.loop import (
    _cluster,
    _differs,
    _fingerprint_differs,
    _fit,
    _samples_at,
)
from facefinder_cli.engine.machine import _chunk_for
from facefinder_cli.engine.model import (
    DEFAULT_TOL,
    CheckpointError,
    ConvergenceWarning,
    _box_full,
    _box_valid,
    _xlogy,
    uniform_prior,
)
from facefinder_cli.engine.mstep import (
    Mass,
    _background_update,
    _crops,
    _float32_mass,
    _noise_update,
    _plus_mass,
)
from facefinder_cli.engine.passes import _draw
from facefinder_cli.engine.settings import FitSettings
from facefinder_cli.engine.starts import _seed_child, _seed_sequence

__all__ = [
    "FacesChoice",
    "MixtureCheckpoint",
    "MixtureDetection",
    "MixtureParams",
    "MixtureRestart",
    "MixtureResult",
    "MixtureStart",
    "choose_faces",
    "detect_mixture",
    "fit_mixture",
    "mixture_log_joint",
]

#: Restarts of ``restarts="auto"`` (the default): one restart found the faces in 2 of 6
#: scenes of benchmarks/bench_faces.py, four in all 6.
MIXTURE_RESTARTS = 4
#: Rounds of k-means that refine the k-means++ seeds of the start.
KMEANS_ROUNDS = 10
#: Iterations of the one-face fits of the start.
START_ITER = 50
#: Images per face that the start's one-face fit of each cluster reads at most.
START_IMAGES = 500
#: Images whose crops the start clusters at most.
KMEANS_IMAGES = 20000


@dataclass(frozen=True)
class MixtureParams:
    """The parameters of N faces on one background.

    Attributes
    ----------
    faces : ndarray of shape (N, h, w)
    background : ndarray of shape (H, W)
    noise_std : float
    weights : ndarray of shape (N,)
        Prior probability of each face; sums to one.
    prior : ndarray of shape (H-h+1, W-w+1)
        Prior over positions, shared by the faces; sums to one.
    """

    faces: np.ndarray
    background: np.ndarray
    noise_std: float
    weights: np.ndarray
    prior: np.ndarray


@dataclass
class MixtureResult:
    """The outcome of :func:`fit_mixture`.

    Attributes
    ----------
    params : MixtureParams
    elbo, log_likelihood : ndarray
        Per iteration, of the best restart: the bound after each M-step (soft EM: never
        falls), and ``log p(X | θ)`` at each E-step's parameters, then at the final ones.
    history_seconds : ndarray
        Seconds from the restart's start (its start's fits included) to each M-step, with
        the start's own time first (the length of ``elbo``).
    prior_fixed_until : int
        The iterations (from the first) whose M-step held the prior over positions.
    n_iter : int
    converged : bool
    faces_of_images : ndarray of shape (K,), int
        Each image's face in its most probable (face, position) pair.
    positions : ndarray of shape (K, 2), int
        Its position.
    probability : ndarray of shape (K,)
        The pair's posterior probability (not held out: with the image's own crop in the face,
        it runs high; see docs/METHODS.md).
    face_probability : ndarray of shape (K,)
        The posterior probability of that face, over all positions.
    best_restart : int
    restart_log_likelihoods : ndarray
        Each restart's final log-likelihood.
    seconds : float
    settings : FitSettings
    """

    params: MixtureParams
    elbo: np.ndarray
    log_likelihood: np.ndarray
    history_seconds: np.ndarray
    prior_fixed_until: int
    n_iter: int
    converged: bool
    faces_of_images: np.ndarray
    positions: np.ndarray
    probability: np.ndarray
    face_probability: np.ndarray
    best_restart: int
    restart_log_likelihoods: np.ndarray
    seconds: float
    settings: FitSettings


@dataclass(frozen=True)
class MixtureStart:
    """What every restart's start builds on: the one-face fit to all the images (its face,
    background and noise std, and each image's position in it)."""

    face: np.ndarray
    background: np.ndarray
    noise_std: float
    positions: np.ndarray


@dataclass(frozen=True)
class MixtureRestart:
    """A finished restart of :func:`fit_mixture`: its parameters, its histories (as
    :class:`MixtureResult`'s) and every image's best (face, position) pair."""

    params: MixtureParams
    elbo: np.ndarray
    log_likelihood: np.ndarray
    seconds: np.ndarray
    n_iter: int
    converged: bool
    held: int
    faces_of_images: np.ndarray
    positions: np.ndarray
    probability: np.ndarray
    face_probability: np.ndarray


@dataclass(frozen=True)
class MixtureCheckpoint:
    """The state of :func:`fit_mixture` after its start or a completed iteration:
    ``fit_mixture(X, settings, n_faces, resume=checkpoint)`` on the same images ends exactly as
    the uninterrupted fit (bit for bit; only the timings differ).

    ``settings`` are the fit's (their ``seed`` resolved) and ``data`` a fingerprint of the
    images, as in :class:`~facefinder_cli.engine.Checkpoint`; ``one`` is the one-face fit the
    starts build on (None for a given start: ``given``, whose digest is ``start``),
    ``finished`` the restarts done. Restart ``restart`` has completed
    ``iteration`` iterations and stands at ``params``; ``elbo`` (with the start's bound from
    the first iteration on), ``log_likelihood`` and ``seconds`` (with the start's time first)
    are its histories; ``held`` counts the iterations whose M-step held the prior, ``released``
    is the iteration whose gain released it (Monte-Carlo EM's windows start there).
    ``rng_state`` is the restart's random generator's state."""

    settings: FitSettings
    n_faces: int
    data: dict
    one: MixtureStart | None
    finished: tuple[MixtureRestart, ...]
    restart: int
    iteration: int
    params: MixtureParams
    elbo: tuple[float, ...]
    log_likelihood: tuple[float, ...]
    seconds: tuple[float, ...]
    held: int
    released: int
    prior_free: bool
    converged: bool
    rng_state: dict = field(default_factory=dict, repr=False)
    start: str | None = None
    given: MixtureParams | None = None


class _MixScorer:
    """Per-iteration constants of the mixture's E-step (see the module's docstring)."""

    def __init__(self, p: MixtureParams, data: _Data) -> None:
        H, W, h, w = data.H, data.W, data.h, data.w
        s2 = p.noise_std**2
        faces = p.faces - data.offset
        background = p.background - data.offset
        self.data = data
        self.inv_s2 = 1.0 / s2
        self.background = background.astype(data.dtype)
        self.faces_f = np.conj(sfft.rfft2(faces.astype(data.dtype), s=(H, W)))
        with np.errstate(divide="ignore"):
            log_prior, log_w = np.log(p.prior), np.log(p.weights)
        self.base = (log_prior + _box_valid(background**2, h, w) / (2 * s2)).astype(data.dtype)
        self.face_const = log_w - np.einsum("mij,mij->m", faces, faces) / (2 * s2)
        self.const = -0.5 * H * W * math.log(2 * math.pi * s2) - float(np.sum(background**2)) / (
            2 * s2
        )

    def log_joint(self, x: np.ndarray, xf: np.ndarray, sq: np.ndarray):
        """``lp`` (n, N, Dh, Dw) and ``c`` (n,): ``log p(X_k, m, d | θ) = lp + c``."""
        d = self.data
        prod = x * self.background
        c = self.const - (0.5 * self.inv_s2) * (sq - 2.0 * prod.sum(axis=(1, 2), dtype=np.float64))
        box_p = _box_valid(prod, d.h, d.w, d.dtype, d.by_slices)
        lp = np.empty((x.shape[0], len(self.faces_f), d.Dh, d.Dw), d.dtype)
        for m, face_f in enumerate(self.faces_f):
            corr = _valid_correlation(d, xf, face_f)
            corr -= box_p
            corr *= self.inv_s2
            corr += self.base
            corr += d.dtype.type(self.face_const[m])
            lp[:, m] = corr
        return lp, c


class _MixStats:
    """Sums over images that the mixture's M-step needs, accumulated chunk by chunk."""

    def __init__(self, data: _Data, n_faces: int) -> None:
        H, W = data.H, data.W
        self.data = data
        self.face_f = np.zeros((n_faces, H, W // 2 + 1), np.complex128)
        self.face_sum = np.zeros((n_faces, data.h, data.w))
        self.cover_x = np.zeros((H, W))
        self.q_sum = np.zeros((n_faces, data.Dh, data.Dw))
        self.mass: Mass | None = None  # float32 posteriors (see mstep._background_update)
        self.entropy = 0.0
        self.log_likelihood = 0.0
        self.elbo = 0.0

    def add_dense(self, x: np.ndarray, xf: np.ndarray, q: np.ndarray) -> None:
        """Add a chunk with dense posteriors ``q`` (n, N, Dh, Dw)."""
        d = self.data
        for m in range(q.shape[1]):
            qf = sfft.fft(sfft.rfft(q[:, m], n=d.W, axis=-1), n=d.H, axis=-2, overwrite_x=True)
            self.face_f[m] += np.einsum("kij,kij->ij", xf, qf.conj(), dtype=np.complex128)
        # summed over the faces in float64: in float32 those sums would round apart from
        # q_sum's, which the background's update subtracts them from (see _float32_mass)
        cover = _box_full(q.sum(axis=1, dtype=np.float64), d.h, d.w, d.by_slices)
        self.cover_x += np.einsum("kij,kij->ij", cover, x, dtype=np.float64)
        self.q_sum += q.sum(axis=0, dtype=np.float64)
        self.mass = _plus_mass(self.mass, _float32_mass(q, x))

    def add_pairs(self, x: np.ndarray, faces: np.ndarray, pos: np.ndarray) -> None:
        """Add a chunk with ``S`` equally weighted pairs per image: ``faces`` (n, S) and
        ``pos`` (n, S, 2) (hard EM: ``S = 1``; Monte-Carlo EM: ``S`` draws)."""
        d = self.data
        n, S = faces.shape
        flat, crops = _crops(d, x, pos)
        np.add.at(self.face_sum, faces.ravel(), crops.reshape(-1, d.h, d.w) / S)
        self.cover_x += np.bincount(flat, crops, d.H * d.W).reshape(d.H, d.W) / S
        D = d.Dh * d.Dw
        pflat = (faces * D + pos[:, :, 0] * d.Dw + pos[:, :, 1]).ravel()
        size = self.q_sum.size
        self.q_sum += np.bincount(pflat, minlength=size).reshape(self.q_sum.shape) / S

    def merge(self, part: _MixStats) -> None:
        self.face_f += part.face_f
        self.face_sum += part.face_sum
        self.cover_x += part.cover_x
        self.q_sum += part.q_sum
        self.mass = _plus_mass(self.mass, part.mass)
        self.entropy += part.entropy
        self.log_likelihood += part.log_likelihood
        self.elbo += part.elbo

    def m_step(self, previous: MixtureParams, update_prior: bool) -> tuple[MixtureParams, dict]:
        """New parameters and the bound ``L(q, θ_new)`` in closed form. The weights are always
        re-estimated; the prior over positions with ``update_prior``. A face that no image
        took keeps its values."""
        d = self.data
        K, H, W, h, w = d.K, d.H, d.W, d.h, d.w
        mass = self.q_sum.sum(axis=(1, 2))  # Σ_k Σ_d q_k(m, d) per face
        faces = previous.faces - d.offset
        sse = d.total_sq
        for m in range(len(mass)):
            num = self.face_sum[m].copy()
            if self.face_f[m].any():
                num += sfft.irfft2(self.face_f[m], s=(H, W))[:h, :w]
            if mass[m] > 0:
                faces[m] = num / mass[m]
                sse -= mass[m] * float(np.sum(faces[m] ** 2))
        q_pos = self.q_sum.sum(axis=0)
        prior = q_pos / K if update_prior else previous.prior
        weights = mass / K
        mean, num, known, background = _background_update(
            d, q_pos, self.cover_x, previous, self.mass
        )
        sse -= float(np.sum(mean * num))
        n = K * H * W
        noise_std, floored = _noise_update(d, sse)
        s2 = noise_std**2
        log_w = float(_xlogy(mass, mass).sum() - K * math.log(K))
        if update_prior:
            log_a = float(_xlogy(q_pos, q_pos).sum() - K * math.log(K))
        else:
            log_a = float(_xlogy(q_pos, prior).sum())
        elbo = -0.5 * n * math.log(2 * math.pi * s2) - sse / (2 * s2) + log_w + log_a
        elbo += self.entropy
        new = MixtureParams(faces + d.offset, background, noise_std, weights, prior)
        return new, {"elbo": elbo, "unidentified": ~known, "floored": floored}


def _mix_pass(
    data: _Data,
    p: MixtureParams,
    method: str,
    accumulate: bool,
    rng: np.random.Generator | None = None,
    samples: int = 0,
):
    """One streaming pass: the E-step at ``p`` and, with ``accumulate``, the M-step's sums.
    Returns the sums and every image's best pair (face, position), its probability and the
    face's probability."""
    scorer = _MixScorer(p, data)
    N = len(p.weights)
    shape = (N, data.Dh, data.Dw)

    def chunk(a: int, b: int, u: np.ndarray | None = None):
        x, xf = data.chunk_data(a, b)
        part = _MixStats(data, N)
        lp, c = scorer.log_joint(x, xf, data.sq_x[a:b])
        post = _Posterior.from_log_joint(lp, c)
        part.log_likelihood = float(post.log_likelihood.sum())
        m, r, col = np.unravel_index(post.best, shape)
        n = b - a
        face_p = post.q.reshape(n, N, -1).sum(axis=2)[np.arange(n), m]
        best = (m, np.column_stack([r, col]), np.exp(post.best_log_joint - post.log_likelihood))
        if method == "soft":
            part.elbo, part.entropy = part.log_likelihood, float(post.entropy.sum())
            if accumulate:
                part.add_dense(x, xf, post.q)
        elif method == "hard":
            part.elbo = float(post.best_log_joint.sum())
            if accumulate:
                part.add_pairs(x, m[:, None], best[1][:, None, :])
        else:
            draws = _draw(post.q.reshape(n, -1), u)  # (n, S) flat pairs
            fm, fr, fc = np.unravel_index(draws, shape)
            log_q = np.log(np.take_along_axis(post.q.reshape(n, -1), draws, axis=1))
            S = draws.shape[1]
            part.entropy = _draws_entropy(draws)
            part.elbo = float((log_q + post.log_likelihood[:, None]).sum()) / S + part.entropy
            if accumulate:
                part.add_pairs(x, fm, np.stack([fr, fc], axis=-1))
        return part, best, face_p

    def uniforms(a: int, b: int) -> tuple[np.ndarray]:
        return (rng.random((b - a, samples)),)

    stats = _MixStats(data, N)
    faces = np.empty(data.K, dtype=np.intp)
    positions = np.empty((data.K, 2), dtype=np.intp)
    probability, face_probability = np.empty(data.K), np.empty(data.K)
    for a, b, (part, best, face_p) in data.map(chunk, uniforms if method == "mc" else None):
        stats.merge(part)
        faces[a:b], positions[a:b], probability[a:b] = best
        face_probability[a:b] = face_p
        data.report(b)
    return stats, (faces, positions, probability, face_probability)


def _draws_entropy(draws: np.ndarray) -> float:
    """Σ_k of the entropy of each image's empirical distribution of its draws (n, S)."""
    S = draws.shape[1]
    total = 0.0
    for row in np.sort(draws, axis=1):
        counts = np.diff(np.flatnonzero(np.diff(np.r_[-1, row, -1]) != 0))
        p = counts / S
        total -= float(np.sum(p * np.log(p)))
    return total


@dataclass
class MixtureDetection:
    """Which face is where in each image (:func:`detect_mixture`).

    Attributes
    ----------
    faces : ndarray of shape (K,), int
        The face of each image's most probable (face, position) pair.
    positions : ndarray of shape (K, 2), int
        Its position.
    probability : ndarray of shape (K,)
        The pair's posterior probability.
    face_probability : ndarray of shape (K,)
        The face's posterior probability, over all positions.
    residual_std : ndarray of shape (K,)
        The root mean square of ``X_k - Model`` at the pair: about ``noise_std`` when the
        images fit the model.
    """

    faces: np.ndarray
    positions: np.ndarray
    probability: np.ndarray
    face_probability: np.ndarray
    residual_std: np.ndarray


def detect_mixture(X, params: MixtureParams, *, chunk_size: int | None = None) -> MixtureDetection:
    """Each image's most probable face and position under ``params`` (one streaming pass)."""
    p = params
    data = _Data(X, p.faces.shape[1:], chunk_size=chunk_size, cache_fft=False)
    scorer = _MixScorer(p, data)
    N = len(p.weights)
    shape = (N, data.Dh, data.Dw)
    s2 = p.noise_std**2
    with np.errstate(divide="ignore"):
        log_w, log_a = np.log(p.weights), np.log(p.prior)
    gauss = -0.5 * data.H * data.W * math.log(2 * math.pi * s2)

    def chunk(a: int, b: int):
        x, xf = data.chunk_data(a, b)
        post = _Posterior.from_log_joint(*scorer.log_joint(x, xf, data.sq_x[a:b]))
        m, r, c = np.unravel_index(post.best, shape)
        n = b - a
        face_p = post.q.reshape(n, N, -1).sum(axis=2)[np.arange(n), m]
        sse = -2.0 * s2 * (post.best_log_joint - log_w[m] - log_a[r, c] - gauss)
        resid = np.sqrt(np.maximum(sse, 0.0) / (data.H * data.W))
        prob = np.exp(post.best_log_joint - post.log_likelihood)
        return m, np.column_stack([r, c]), prob, face_p, resid

    out = MixtureDetection(
        np.empty(data.K, np.intp), np.empty((data.K, 2), np.intp), np.empty(data.K),
        np.empty(data.K), np.empty(data.K),
    )  # fmt: skip
    for a, b, (m, pos, prob, face_p, resid) in data.map(chunk):
        out.faces[a:b], out.positions[a:b], out.probability[a:b] = m, pos, prob
        out.face_probability[a:b], out.residual_std[a:b] = face_p, resid
        data.report(b)
    return out


def mixture_log_joint(X, params: MixtureParams) -> np.ndarray:
    """``log p(X_k, m, d | θ)`` for every image, face and position: shape (K, N, Dh, Dw)."""
    p = params
    data = _Data(np.asarray(X), p.faces.shape[1:], cache_fft=False)
    scorer = _MixScorer(p, data)
    out = np.empty((data.K, len(p.weights), data.Dh, data.Dw))
    for a, b in data.bounds():
        x, xf = data.chunk_data(a, b)
        lp, c = scorer.log_joint(x, xf, data.sq_x[a:b])
        out[a:b] = lp + c[:, None, None, None]
    return out


def _image_log_likelihoods(data: _Data, p: MixtureParams) -> np.ndarray:
    """``log p(X_k | θ)`` of every image under the mixture ``p`` (one pass)."""
    scorer = _MixScorer(p, data)

    def chunk(a: int, b: int) -> np.ndarray:
        x, xf = data.chunk_data(a, b)
        return _Posterior.from_log_joint(*scorer.log_joint(x, xf, data.sq_x[a:b])).log_likelihood

    out = np.empty(data.K)
    for a, b, ll in data.map(chunk):
        out[a:b] = ll
    return out


def _fit_one(data: _Data, members: np.ndarray, settings: FitSettings, one, rng) -> np.ndarray:
    """The face of a one-face fit to the images ``members`` (at most ``START_IMAGES`` of
    them, drawn with ``rng``), from the background and noise of ``one``."""
    if len(members) > START_IMAGES:
        members = np.sort(rng.choice(members, START_IMAGES, replace=False))
    images = np.stack([np.asarray(data.X[int(k)], dtype=np.float64) for k in members])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = _fit(
            _Data(images, (data.h, data.w), dtype=data.dtype, workers=data.workers),
            replace(settings, seed=int(rng.integers(2**32))),
            {"background": one.background, "noise_std": one.noise_std},
            None,
            None,
        )
    return own.face


def _one_face(data: _Data, settings: FitSettings):
    """The one-face fit that every restart's start builds on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _fit(data, _one_settings(settings), None, None, None)


def _one_settings(settings: FitSettings) -> FitSettings:
    return replace(settings, restarts=1, max_iter=min(START_ITER, settings.max_iter))


def _start(
    data: _Data,
    n_faces: int,
    settings: FitSettings,
    rng: np.random.Generator,
    restart: int,
    one,
) -> MixtureParams:
    """Where restart ``restart`` starts: one face fitted to all the images, then N faces
    seeded among its crops (:func:`_start_kmeans`, each restart with its own draws); but
    restart 1 splits: for each next face, a one-face fit to the images the faces so far
    explain worst (the share ``1/m`` of them with the lowest likelihood, for the m-th face)."""
    one_settings = _one_settings(settings)
    if restart != 1:
        return _start_kmeans(data, n_faces, one_settings, rng, one)
    faces = [one.face]
    prior = uniform_prior((data.Dh, data.Dw))
    for m in range(2, n_faces + 1):
        p = MixtureParams(np.array(faces), one.background, one.noise_std,
                          np.full(len(faces), 1.0 / len(faces)), prior)  # fmt: skip
        ll = _image_log_likelihoods(data, p)
        worst = np.sort(np.argsort(ll, kind="stable")[: max(2, data.K // m)])
        faces.append(_fit_one(data, worst, one_settings, one, rng))
    return MixtureParams(np.array(faces), one.background, one.noise_std,
                         np.full(n_faces, 1.0 / n_faces), prior)  # fmt: skip


def _start_kmeans(
    data: _Data, n_faces: int, one_settings: FitSettings, rng: np.random.Generator, one
) -> MixtureParams:
    """Every image's crop at its position in the one-face fit ``one``, N faces seeded among
    the crops by k-means++ and refined by ``KMEANS_ROUNDS`` rounds of k-means, and each
    cluster's face fitted on its own images."""
    h, w = data.h, data.w
    # the crops of at most KMEANS_IMAGES images (memory: h w floats each)
    chosen = np.arange(data.K)
    if data.K > KMEANS_IMAGES:
        chosen = np.sort(rng.choice(data.K, KMEANS_IMAGES, replace=False))
    n = len(chosen)
    crops = np.empty((n, h * w))
    for i in range(0, n, data.chunk):
        ks = chosen[i : i + data.chunk]
        x = np.asarray(data.X[ks], dtype=np.float64)
        r, c = one.positions[ks, 0], one.positions[ks, 1]
        rows = r[:, None, None] + np.arange(h)[:, None]
        cols = c[:, None, None] + np.arange(w)
        crops[i : i + len(ks)] = x[np.arange(len(ks))[:, None, None], rows, cols].reshape(
            len(ks), -1
        )
    centres = [crops[int(rng.integers(n))]]
    nearest = np.sum((crops - centres[0]) ** 2, axis=1)
    for _ in range(1, n_faces):
        total = nearest.sum()
        pick = int(rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n))
        centres.append(crops[pick])
        nearest = np.minimum(nearest, np.sum((crops - centres[-1]) ** 2, axis=1))
    centres = np.array(centres)
    sq = np.einsum("ki,ki->k", crops, crops)
    for _ in range(KMEANS_ROUNDS):  # (distances as |c|² - 2 c·μ + |μ|²: no K x N x hw array)
        dist = sq[:, None] - 2.0 * crops @ centres.T + np.einsum("mi,mi->m", centres, centres)
        label = np.argmin(dist, axis=1)
        for m in range(n_faces):
            if np.any(label == m):
                centres[m] = crops[label == m].mean(axis=0)
    # Each cluster's face fitted on its own images (at most START_IMAGES of them): the
    # one-face fit may have placed one kind of face off its true position (a shifted face
    # fits images of several faces better on average), and its crops carry the shift.
    faces = centres.reshape(n_faces, h, w)
    for m in range(n_faces):
        members = chosen[label == m]
        if len(members) >= 2:
            faces[m] = _fit_one(data, members, one_settings, one, rng)
    counts = np.bincount(label, minlength=n_faces) + 1.0
    return MixtureParams(
        faces,
        one.background,
        one.noise_std,
        counts / counts.sum(),
        uniform_prior((data.Dh, data.Dw)),
    )


def fit_mixture(
    X,
    settings: FitSettings,
    n_faces: int,
    *,
    memory_limit: int | None = None,
    workers: int | None = None,
    callback: Callable[[int, int, float, float], None] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    on_state: Callable[[MixtureCheckpoint], None] | None = None,
    resume: MixtureCheckpoint | None = None,
    init_params: MixtureParams | None = None,
    client: Any = None,
) -> MixtureResult:
    """Fit ``n_faces`` faces, one background, the noise, the face weights and the prior over
    positions by EM (see the module's docstring).

    ``settings`` as for :func:`fit`: ``face_shape``, ``method`` (soft, hard, mc), ``max_iter``,
    ``tol`` (plain EM's rule: stop when an iteration raises the bound by less than ``tol``
    nats per image and pixel; Monte-Carlo EM: the log-likelihood's mean gain between the last
    two windows of 5 iterations), ``restarts`` (each seeds the faces with its own draws; the
    best final log-likelihood wins; ``"auto"``: ``MIXTURE_RESTARTS``, one from a given
    start), ``seed``, ``dtype``, ``chunk_size``, ``samples`` (Monte-
    Carlo EM's draws per image). The prior over positions is held uniform until the rest has
    settled (``prior_update="late"``, the default) or learnt from the start (``"always"``).
    ``callback(restart, iteration, elbo, log_likelihood)`` after every iteration. With a
    Dask ``client``, every pass runs on its workers as :func:`fit`'s do (the same result,
    bit for bit; the start's fits of each cluster's images, at most ``START_IMAGES``, run
    here).

    ``on_state(checkpoint)`` after each restart's start and every iteration: a
    :class:`MixtureCheckpoint` that ``resume`` carries on from, on the same images with the
    same settings (with ``settings.seed`` None, the checkpoint's seed), to the result the
    uninterrupted fit would have given. A checkpoint of another fit or other images, or a
    damaged one, is refused with a :class:`CheckpointError` that says why.

    ``init_params`` (:class:`MixtureParams` of ``n_faces`` faces of ``settings.face_shape``
    for images of this size, e.g. a previous fit's or the truth) is where every restart
    starts, instead of the one-face fit and its seeds.
    """
    if n_faces < 1:
        raise ValueError(f"n_faces must be at least 1, got {n_faces}")
    if resume is not None and settings.seed is None:
        settings = replace(settings, seed=resume.settings.seed)
    t0 = time.perf_counter()
    chunk_size = settings.chunk_size
    shape = tuple(X.shape) if hasattr(X, "shape") else np.shape(X)
    (h, w), image = settings.face_shape, shape[1:]
    if chunk_size is None and len(shape) == 3 and h <= image[0] and w <= image[1]:
        # a chunk's working memory grows with the faces: N posteriors per image
        Dh, Dw = image[0] - h + 1, image[1] - w + 1
        chunk_size = max(1, _chunk_for(None, *image, Dh, Dw) // n_faces)
    kind, where = (_Data, ()) if client is None else (_cluster()._ClusterData, (client,))
    data = kind(
        X,
        settings.face_shape,
        *where,
        chunk_size=chunk_size,
        workers=workers,
        memory_limit=memory_limit,
        dtype=settings.dtype,
        on_chunk=on_chunk,
    )
    try:
        return _fit_mixture(data, settings, n_faces, callback, t0, on_state, resume, init_params)
    finally:
        if client is not None:
            data.close()


def _mixture_resume_refused(
    cp: MixtureCheckpoint,
    settings: FitSettings,
    n_faces: int,
    data: _Data,
    fingerprint: dict,
    start: str | None,
) -> str | None:
    """Why ``cp`` does not resume the fit of ``n_faces`` faces to ``data`` with ``settings``;
    None if it does."""
    if not isinstance(cp.settings, FitSettings) or not isinstance(cp.data, dict):
        return "the checkpoint is damaged: its record of settings or images is not one"
    why = _differs(cp.settings, settings)
    if why is None and cp.n_faces != n_faces:
        why = f"the checkpoint belongs to a fit of {cp.n_faces} faces, not {n_faces}"
    if why is None and cp.start != start:
        why = "the checkpoint belongs to another fit: it started from other given parameters"
    if why is None and not 0 <= cp.restart < settings.restarts:
        why = "the checkpoint belongs to another fit (other restarts)"
    if why is None:
        why = _fingerprint_differs(cp.data, fingerprint)
    if why is None:
        damage = _mixture_damaged(cp, data)
        why = None if damage is None else f"the checkpoint is damaged: {damage}"
    return why


def _params_damaged(p: MixtureParams, data: _Data, n_faces: int) -> str | None:
    """What is wrong with parameters of ``n_faces`` faces for ``data``, or None."""
    shapes = ((p.faces, (n_faces, data.h, data.w)), (p.background, (data.H, data.W)),
              (p.weights, (n_faces,)), (p.prior, (data.Dh, data.Dw)))  # fmt: skip
    for a, shape in shapes:
        if np.shape(a) != shape or not np.isfinite(a).all():
            return "its parameters have the wrong shapes or values that are not numbers"
    if not (math.isfinite(p.noise_std) and p.noise_std > 0):
        return "its noise std is not a positive number"
    for a in (p.weights, p.prior):
        if (np.asarray(a) < 0).any() or not abs(float(np.sum(a)) - 1.0) < 1e-9:
            return "its weights or prior are not distributions"
    return None


def _mixture_damaged(cp: MixtureCheckpoint, data: _Data) -> str | None:
    """What is inconsistent in a checkpoint (edited, or damaged on disk), or None."""
    t, n = cp.iteration, cp.n_faces
    if not (isinstance(t, int) and 0 <= t <= cp.settings.max_iter):
        return "its iteration is out of range"
    if len(cp.log_likelihood) != t or len(cp.elbo) != (t + 1 if t else 0):
        return "its histories do not have one value per iteration"
    if len(cp.seconds) != t + 1:
        return "its histories do not have one value per iteration"
    if not (0 <= cp.held <= t and 0 <= cp.released <= t):
        return "its record of when the prior was held is out of range"
    if len(cp.finished) != cp.restart:
        return "its record of finished restarts does not match its restart"
    why = None if cp.one is None else _one_damaged(cp.one, data)
    if why is not None or (cp.one is None) != (cp.start is not None):
        return why or "its start is neither given nor the one-face fit's"
    why = _params_damaged(cp.params, data, n)
    if why is not None:
        return why
    for done in cp.finished:
        if not 0 <= done.held <= done.n_iter <= cp.settings.max_iter:
            return "a finished restart's iterations are out of range"
        k = done.n_iter + 1
        if any(len(a) != k for a in (done.elbo, done.log_likelihood, done.seconds)):
            return "a finished restart's histories do not match its iterations"
        if not (np.isfinite(done.elbo).all() and np.isfinite(done.log_likelihood).all()):
            return "a finished restart's histories hold values that are not numbers"
        per_image = (done.faces_of_images, done.probability, done.face_probability)
        if any(np.shape(a) != (data.K,) for a in per_image):
            return "a finished restart's faces of images do not match the images"
        labels = np.asarray(done.faces_of_images)
        if labels.dtype.kind not in "iu" or not ((labels >= 0).all() and (labels < n).all()):
            return f"a finished restart's faces of images are not faces 1 to {n}"
        if not _positions_fit(done.positions, data):
            return "a finished restart's positions do not match the images"
        for a in (done.probability, done.face_probability):
            a = np.asarray(a)
            if a.dtype.kind != "f" or not ((a >= 0) & (a <= 1)).all():  # (NaN fails too)
                return "a finished restart's probabilities are not probabilities"
        why = _params_damaged(done.params, data, n)
        if why is not None:
            return f"a finished restart: {why}"
    return None


def _positions_fit(positions, data: _Data) -> bool:
    """Whether ``positions`` are one whole-numbered position of the face per image."""
    pos = np.asarray(positions)
    return (
        pos.shape == (data.K, 2)
        and pos.dtype.kind in "iu"
        and bool((pos >= 0).all() and (pos < [data.Dh, data.Dw]).all())
    )


def _one_damaged(one: MixtureStart, data: _Data) -> str | None:
    """What is wrong with a checkpoint's one-face start for ``data``, or None."""
    if np.shape(one.face) != (data.h, data.w) or np.shape(one.background) != (data.H, data.W):
        return "its one-face start has the wrong shapes"
    if not _positions_fit(one.positions, data):
        return "its one-face start's positions do not match the images"
    if not (math.isfinite(one.noise_std) and one.noise_std > 0):
        return "its one-face start's noise std is not a positive number"
    return None


def _start_digest(p: MixtureParams) -> str:
    """A digest of given starting parameters, for checkpoints to compare."""
    digest = hashlib.sha256()
    for k in ("faces", "background", "noise_std", "weights", "prior"):
        digest.update(k.encode())
        digest.update(np.ascontiguousarray(getattr(p, k), dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _given_start(p: MixtureParams, data: _Data, n_faces: int) -> MixtureParams:
    """``p`` as a start for ``n_faces`` faces on ``data`` (float64, weights and prior summing
    to one); ValueError if it does not fit."""
    faces = np.asarray(p.faces, dtype=np.float64)
    if faces.ndim != 3 or len(faces) != n_faces:
        raise ValueError(f"init_params hold {len(faces)} faces, not {n_faces}")
    weights = np.asarray(p.weights, dtype=np.float64)
    prior = np.asarray(p.prior, dtype=np.float64)
    given = MixtureParams(faces, np.asarray(p.background, dtype=np.float64), float(p.noise_std),
                          weights / weights.sum(), prior / prior.sum())  # fmt: skip
    why = _params_damaged(given, data, n_faces)
    if why is not None:
        raise ValueError(
            f"init_params do not fit {n_faces} faces of {data.h}x{data.w} in images of "
            f"{data.H}x{data.W}: {why}"
        )
    return given


def _iterate_mixture(
    data: _Data, state: MixtureCheckpoint, rng: np.random.Generator, t_start: float
) -> MixtureCheckpoint:
    """One EM iteration from ``state``: the next state."""
    s, t = state.settings, state.iteration + 1
    samples = 0
    if s.method == "mc":
        samples = _samples_at(t, s.samples, s.samples_growth, s.max_samples)
    stats, _ = _mix_pass(data, state.params, s.method, True, rng, samples)
    params, info = stats.m_step(state.params, update_prior=state.prior_free)
    ll = state.log_likelihood + (stats.log_likelihood,)
    elbo = state.elbo + ((stats.elbo,) if t == 1 else ()) + (info["elbo"],)
    n_values = data.K * data.H * data.W
    if s.method == "mc":
        gain = _window_gain(list(ll[state.released :])) / n_values
    else:
        gain = (elbo[-1] - elbo[-2]) / n_values
    prior_free, released, converged = state.prior_free, state.released, False
    # As fit: "late" holds the prior until the rest has settled, "never" for good.
    if s.prior_update == "late" and not state.prior_free:
        if gain < (s.tol if s.tol > 0 else DEFAULT_TOL):
            prior_free, released = True, t
    else:  # (tol <= 0 runs max_iter iterations, whatever a gain of rounding error says)
        converged = bool(s.tol > 0 and gain < s.tol)
    return replace(
        state,
        iteration=t,
        params=params,
        elbo=elbo,
        log_likelihood=ll,
        seconds=state.seconds + (time.perf_counter() - t_start,),
        held=state.held + (not state.prior_free),
        released=released,
        prior_free=prior_free,
        converged=converged,
    )


def _fit_mixture(
    data: _Data,
    settings: FitSettings,
    n_faces: int,
    callback,
    t0: float,
    on_state=None,
    resume: MixtureCheckpoint | None = None,
    init_params: MixtureParams | None = None,
):
    """:func:`fit_mixture` once the images are read."""
    if data.K < n_faces:
        raise ValueError(f"{n_faces} faces need at least as many images, got {data.K}")
    if init_params is None and resume is not None and resume.given is not None:
        try:  # (the checkpoint's start: the file it came from may have changed since)
            given = _given_start(resume.given, data, n_faces)
        except (ValueError, TypeError, ZeroDivisionError) as err:
            raise CheckpointError(f"the checkpoint is damaged: its start: {err}") from None
    else:
        given = None if init_params is None else _given_start(init_params, data, n_faces)
    start = None if given is None else _start_digest(given)
    if settings.restarts == "auto":  # (from a given start every restart starts the same)
        settings = replace(settings, restarts=1 if given is not None else MIXTURE_RESTARTS)
    if given is not None and settings.restarts > 1 and settings.method != "mc":
        warnings.warn(
            f"all {settings.restarts} restarts start from the given parameters and end the same",
            UserWarning,
            stacklevel=3,
        )
    seeds = _seed_sequence(settings.seed)
    settings = replace(settings, seed=int(seeds.entropy))  # (repeatable from the result)
    fingerprint = data.fingerprint()
    runs: list[MixtureRestart] = []
    one = None
    if resume is not None:
        why = _mixture_resume_refused(resume, settings, n_faces, data, fingerprint, start)
        if why is not None:
            raise CheckpointError(why)
        one, runs = resume.one, list(resume.finished)
    elif given is None:
        fitted = _one_face(data, settings)  # (the same for every restart)
        one = MixtureStart(fitted.face, fitted.background, fitted.noise_std, fitted.positions)

    def report(state: MixtureCheckpoint, rng: np.random.Generator) -> None:
        if on_state is not None:
            on_state(replace(state, rng_state=rng.bit_generator.state))

    for r in range(len(runs), settings.restarts):
        t_start = time.perf_counter()
        rng = np.random.default_rng(_seed_child(seeds, r))
        if resume is not None and r == resume.restart:
            try:
                rng.bit_generator.state = resume.rng_state
            except (TypeError, ValueError, KeyError):
                raise CheckpointError(
                    "the checkpoint's random generator state is damaged"
                ) from None
            t_start -= resume.seconds[-1]
            state = replace(resume, rng_state={})
        else:
            p = given if given is not None else _start(data, n_faces, settings, rng, r, one)
            state = MixtureCheckpoint(
                settings=settings,
                n_faces=n_faces,
                data=fingerprint,
                one=one,
                finished=tuple(runs),
                restart=r,
                iteration=0,
                params=p,
                elbo=(),
                log_likelihood=(),
                seconds=(time.perf_counter() - t_start,),
                held=0,
                released=0,
                prior_free=settings.prior_update == "always",
                converged=False,
                start=start,
                given=given,
            )
            report(state, rng)
        while state.iteration < settings.max_iter and not state.converged:
            state = _iterate_mixture(data, state, rng, t_start)
            if callback is not None:
                callback(r, state.iteration, state.elbo[-1], state.log_likelihood[-1])
            report(state, rng)
        method = "soft" if settings.method == "mc" else settings.method
        stats, best = _mix_pass(data, state.params, method, False)
        runs.append(
            MixtureRestart(
                params=state.params,
                elbo=np.array(state.elbo or (stats.elbo,)),  # no iteration: the start's bound
                log_likelihood=np.array(state.log_likelihood + (stats.log_likelihood,)),
                seconds=np.array(state.seconds),
                n_iter=state.iteration,
                converged=state.converged,
                held=state.held,
                faces_of_images=best[0],
                positions=best[1],
                probability=best[2],
                face_probability=best[3],
            )
        )
    finals = np.array([run.log_likelihood[-1] for run in runs])
    b = int(np.argmax(finals))
    run = runs[b]
    if settings.max_iter > 0 and not run.converged and settings.tol > 0:
        warnings.warn(
            f"EM did not converge in {settings.max_iter} iterations (tol {settings.tol:g}); "
            "raise max_iter or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    return MixtureResult(
        params=run.params,
        elbo=run.elbo,
        log_likelihood=run.log_likelihood,
        history_seconds=run.seconds,
        prior_fixed_until=run.held,
        n_iter=run.n_iter,
        converged=run.converged,
        faces_of_images=run.faces_of_images,
        positions=run.positions,
        probability=run.probability,
        face_probability=run.face_probability,
        best_restart=b,
        restart_log_likelihoods=finals,
        seconds=time.perf_counter() - t0,
        settings=settings,
    )


def _window_gain(values: list[float], window: int = 5) -> float:
    """Mean gain per iteration between the last two windows (inf before two windows)."""
    if len(values) < 2 * window:
        return math.inf
    last, before = values[-window:], values[-2 * window : -window]
    return (sum(last) - sum(before)) / (window * window)


#: Numbers of faces that ``choose_faces`` tries at most, and how many in a row must score
#: worse than the best before it stops.
MOST_FACES = 8
PATIENCE = 2


@dataclass
class FacesChoice:
    """The outcome of :func:`choose_faces`.

    Attributes
    ----------
    n_faces : int
        The chosen number of faces.
    result : MixtureResult
        Its fit.
    trials : list of (n_faces, log_likelihood, criterion, n_params, iterations, seconds)
        Every number tried, in order.
    margin : float
        The chosen number's criterion minus the best other's (nats): under ``log 20`` the
        choice is unclear.
    at_cap : bool
        Whether the chosen number is the most that could be tried (``most``, or the number of
        images): more might have scored better, and the choice is unclear.
    """

    n_faces: int
    result: MixtureResult
    trials: list[tuple[int, float, float, int, int, float]]
    margin: float
    at_cap: bool = False


def choose_faces(
    X,
    settings: FitSettings,
    *,
    most: int = MOST_FACES,
    on_trial: Callable[[tuple], None] | None = None,
    **kw,
) -> FacesChoice:
    """Fit 1, 2, 3, ... faces (up to ``most``, and until ``PATIENCE`` numbers in a row score
    below the best) and keep the number with the best penalised log-likelihood, BIC's as for
    the face size: ``log p(X | θ̂) - n/2 log K`` with ``n = N h w + H W + 1 + (N - 1)`` (the
    faces, the background, the noise, the weights; the prior over positions not counted, as
    for the face size). ``kw`` as for :func:`fit_mixture`."""
    trials: list[tuple[int, float, float, int, int, float]] = []
    results: dict[int, MixtureResult] = {}
    best, behind = 0, 0
    for n in range(1, most + 1):
        r = fit_mixture(X, settings, n, **kw)
        K, H, W = len(r.faces_of_images), *r.params.background.shape
        h, w = r.params.faces.shape[1:]
        n_params = n * h * w + H * W + 1 + (n - 1)
        ll = float(r.log_likelihood[-1])
        trial = (n, ll, ll - 0.5 * n_params * math.log(K), n_params, r.n_iter, r.seconds)
        trials.append(trial)
        results[n] = r
        if on_trial is not None:
            on_trial(trial)
        if best == 0 or trial[2] > trials[best - 1][2]:
            best, behind = n, 0
        else:
            behind += 1
            if behind >= PATIENCE:
                break
        if n >= K:
            break
    others = [t[2] for t in trials if t[0] != best]
    margin = trials[best - 1][2] - max(others) if others else math.inf
    cap = min(most, len(results[best].faces_of_images))
    return FacesChoice(best, results[best], trials, margin, at_cap=best >= cap)
