"""The EM engine: find one face hidden at unknown positions in many noisy images.

Model: image ``k`` of a stack ``X`` of shape ``(K, H, W)`` is the background
``B`` (``H x W``) with the face ``F`` (``h x w``) pasted with its top-left corner at ``d_k``, plus
Gaussian noise of std ``s``; ``d_k`` has prior ``A`` over the ``(H-h+1) x (W-w+1)`` positions.

How an iteration is computed
----------------------------
One streaming pass over chunks of images does both steps; per image it costs one inverse FFT
(E-step), one forward FFT (M-step) and a few summed-area tables:

* E-step. With ``C_k = X_k ⋆ F`` (valid cross-correlation, from the cached ``rfft2(X_k)``) and
  ``P_k = X_k ⊙ B``, the log-likelihood of every position is ::

      ll_k(d) = -HW/2 log(2π s²) - [ Σ X_k² - 2 Σ P_k + G(d) + 2 (box(P_k)(d) - C_k(d)) ] / (2 s²)
      G(d)    = ||F||² + Σ B² - box(B²)(d)

  where ``box`` sums over the ``h x w`` window at ``d``. (``box(X_k²)`` of the textbook form cancels
  out, so it is never computed.) Posteriors are normalised with log-sum-exp.
* M-step from frequency-domain sums: ``Σ_k Σ_d q_k(d) X_k(d + ·) = irfft2(Σ_k rfft2(X_k) ·
  conj(rfft2(q_k)))``; ``Σ_k cover_k ⊙ X_k`` from a "full" summed-area table of each ``q_k``;
  the background denominator ``Σ_k (1 - cover_k)`` from the summed posterior only. ``s²`` and the
  lower bound after the M-step are closed forms of these sums, so no second pass is needed.
* Hard (MAP) EM and Monte-Carlo EM use the same E-step; their M-step statistics are sums of
  crops at the chosen or drawn positions (``_Stats.add_positions``).

Data are shifted by a constant (the mean of the first images) before any arithmetic, which keeps
the sums small and the FFT round-off low; parameters stay in the data's own units. ``rfft2(X)``
(as much of it as ``memory_limit`` holds) and the per-image sums are computed once per fit and
shared by all restarts.

Scale. The stack is only ever read a chunk at a time, so it may be a file read on demand
(``images.NpyReader``) and memory does not grow with K beyond a few numbers per image. Chunks
are processed on ``workers`` threads and their sums reduced in chunk order, so the result is the
same bit for bit on any number of threads. ``dtype="float32"`` does the per-image work in single
precision and keeps every sum over images in float64.

Everything here is NumPy/SciPy: no I/O, no printing. Progress is reported through a callback.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import hashlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import numpy as np
from scipy import fft as sfft

__all__ = [
    "Checkpoint",
    "Detection",
    "ConvergenceWarning",
    "FitResult",
    "INIT_METHODS",
    "NoiseFloorWarning",
    "NonFiniteError",
    "Params",
    "Progress",
    "RestartHistory",
    "RestartResult",
    "ValueRangeError",
    "available_cores",
    "default_memory_limit",
    "detect",
    "elbo",
    "fit",
    "initialize",
    "locate",
    "position_log_likelihood",
    "FitSettings",
    "m_step",
    "map_positions",
    "posterior",
    "predictive_prior",
]

Method = Literal["soft", "hard", "mc"]
METHODS: tuple[str, ...] = ("soft", "hard", "mc")
PriorUpdate = Literal["late", "always", "never"]
PRIOR_UPDATES: tuple[str, ...] = ("late", "always", "never")
INIT_METHODS: tuple[str, ...] = ("median", "zeros", "bright", "random", "smooth")

#: The study's white level: its initialisations assume pixels on the 0..255 scale.
WHITE = 255.0
#: ``noise_std`` never goes below this fraction of the data's standard deviation.
NOISE_FLOOR = 1e-5
#: A background pixel is re-estimated only where the posterior expects it uncovered in more than
#: this fraction of one image per image (``Σ_k (1 - cover_k) > K · UNCOVERED_MIN``); elsewhere it is
#: not identifiable and keeps its previous value. ``sqrt(eps)`` keeps round-off out of ``B``.
UNCOVERED_MIN = math.sqrt(np.finfo(np.float64).eps)
#: Default of ``tol``: the least gain of the lower bound per image and pixel worth iterating for.
DEFAULT_TOL = 1e-7
#: Images per chunk of the streaming pass (64 was faster than 32 and 128 for 64x64 images:
#: ``benchmarks/bench_scale.py --sections chunks``, docs/PERFORMANCE.md).
DEFAULT_CHUNK_SIZE = 64
#: Posterior ratios below ``exp(_LOG_TINY)`` to the most probable position are set to exactly zero:
#: they change no sum and would otherwise become slow subnormal numbers.
_LOG_TINY = -680.0
_LOG_TINY_32 = -80.0  # the same for float32 (smallest normal: exp(-87.3))
#: Monte-Carlo EM: draws per image in the first iteration, growth per iteration, most draws,
#: and iterations per window of its stopping rule (see ``fit``).
MC_SAMPLES = 3
MC_GROWTH = 1.05
MC_MAX_SAMPLES = 30
MC_WINDOW = 5


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the lower bound settled within ``tol``."""


class NonFiniteError(ValueError):
    """Image ``index`` (the first such) holds NaN (``what == "NaN"``) or ``"infinite values"``."""

    def __init__(self, index: int, what: str = "NaN or infinite values") -> None:
        super().__init__(f"X contains {what} (image {index})")
        self.index = index
        self.what = what


class CheckpointError(ValueError):
    """A checkpoint given to ``fit(resume=...)`` that does not resume this fit: made from other
    images or with other settings, or damaged."""


class ValueRangeError(ValueError):
    """Pixel values too large or too spread out (or too little) for float64 arithmetic."""


class NoiseFloorWarning(UserWarning):
    """The noise std hit its floor: the data may be noise-free or the fit degenerate."""


# --------------------------------------------------------------------------------------------
# Parameters and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """The model parameters θ.

    Attributes
    ----------
    face : ndarray of shape (h, w)
    background : ndarray of shape (H, W)
    noise_std : float
        Standard deviation ``s`` of the pixel noise (a std, not a variance).
    prior : ndarray of shape (H-h+1, W-w+1)
        Prior ``A`` over the face's top-left corner; non-negative, sums to one.
    """

    face: np.ndarray
    background: np.ndarray
    noise_std: float
    prior: np.ndarray

    @property
    def face_shape(self) -> tuple[int, int]:
        return self.face.shape  # type: ignore[return-value]

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.background.shape  # type: ignore[return-value]


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides what :func:`fit` returns, besides the images and a given start:
    one value, built once (by the command line from its options), stored in results and
    checkpoints, and compared on resume. Fields are validated and normalised on construction
    (a ValueError names the field).

    Attributes
    ----------
    face_shape : (h, w)
        Size of the face, at most the image size.
    method : {"soft", "hard", "mc"}
        Soft EM (exact posteriors), hard EM (each image's MAP position) or Monte-Carlo EM (the
        M-step on ``samples`` positions drawn from each image's posterior).
    init : {"median", "zeros", "bright", "random", "smooth"}
        How each restart starts; see :func:`initialize`. ``init_params`` entries override it.
    restarts : int
        Number of restarts; the one with the highest final ``log p(X | θ)`` is returned.
        Restart ``r`` draws its randomness from child ``r`` of ``SeedSequence(seed)``.
    max_iter : int
        Maximum EM iterations per restart; 0 returns the initialisation.
    tol : float
        Stop when an iteration's gain is below ``tol`` nats per image and pixel: the rise of
        the lower bound, ``(elbo[t] - elbo[t-1]) / (K H W)``. ``tol <= 0`` runs ``max_iter``
        iterations (the soft-EM ELBO never falls), without a ConvergenceWarning.
        Monte-Carlo EM, whose bound is noisy, uses the exact log-likelihood instead, averaged
        over windows of ``MC_WINDOW`` iterations: its gain is the mean rise per iteration of
        the last window over the one before. Either way the gain is kept in the history.
    seed : int or None
        ``None`` draws fresh entropy; the result's settings record it, so they repeat the run.
    prior_update : {"late", "always", "never"}
        When the M-step re-estimates the prior. ``"always"``: in every M-step, as the study does.
        ``"late"`` (default): hold it at its start until the other parameters converge (within
        ``tol``, or ``DEFAULT_TOL`` if ``tol <= 0``), then re-estimate it in every M-step until
        all converge. With few images per position a learnt prior sharpens on the current
        guesses and locks EM into them; holding it back first avoids that (see
        ``docs/INITIALISATION.md``). Either way the lower bound never decreases (holding a
        parameter is a partial M-step). ``"never"``: keep it.
    samples, samples_growth, max_samples : int, float, int
        Monte-Carlo EM only: ``samples`` draws per image in the first iteration, multiplied by
        ``samples_growth`` every iteration up to ``max_samples`` (raised to ``samples`` if
        lower). Few draws move fast while far from the optimum; more let the parameters settle.
    chunk_size : int
        Most images per chunk of the streaming pass (fewer when large images would need more
        than ``CHUNK_BYTES`` of working memory); results do not depend on it beyond rounding.
        Each thread works on one chunk at a time: the working memory is about
        ``workers * chunk_size`` images' worth of temporaries.
    dtype : {"float64", "float32"}
        Precision of the per-image work: reads, FFTs, posteriors. float32 halves the memory
        traffic and the cache; sums over images stay float64. See ``docs/PERFORMANCE.md``.
    """

    face_shape: tuple[int, int]
    method: Method = "soft"
    init: str = "median"
    restarts: int = 1
    max_iter: int = 200
    tol: float = DEFAULT_TOL
    seed: int | None = None
    prior_update: PriorUpdate = "late"
    samples: int = MC_SAMPLES
    samples_growth: float = MC_GROWTH
    max_samples: int = MC_MAX_SAMPLES
    chunk_size: int = DEFAULT_CHUNK_SIZE
    dtype: str = "float64"

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        def whole(name: str, least: int) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
            put(name, int(value))
            return int(value)

        def real(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if value != value:
                raise ValueError(f"{name} must not be NaN")
            put(name, float(value))
            return float(value)

        def choice(name: str, choices: tuple[str, ...]) -> None:
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(choices)}"
                )

        shape = self.face_shape
        if isinstance(shape, (str, bytes)) or len(shape) != 2:
            raise ValueError(f"face_shape must be two whole numbers (h, w), got {shape!r}")
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape):
            raise ValueError(f"face_shape must be two whole numbers (h, w), got {shape!r}")
        if min(shape) < 1:
            raise ValueError(f"face_shape must be positive, got {tuple(shape)}")
        put("face_shape", (int(shape[0]), int(shape[1])))
        choice("method", METHODS)
        choice("init", INIT_METHODS)
        choice("prior_update", PRIOR_UPDATES)
        whole("restarts", 1)
        whole("max_iter", 0)
        real("tol")
        if self.seed is not None:
            whole("seed", 0)
        samples = whole("samples", 1)
        growth = real("samples_growth")
        if not (growth >= 1 and math.isfinite(growth)):
            raise ValueError(f"samples_growth must be at least 1 and finite, got {growth}")
        put("max_samples", max(whole("max_samples", 1), samples))
        whole("chunk_size", 1)
        put("dtype", _check_dtype(self.dtype).name)

    @classmethod
    def of(cls, settings: FitSettings | Sequence[int] | None, **changes: object) -> FitSettings:
        """``settings`` with ``changes``; new settings for a face of shape ``settings``; or,
        with ``settings`` None, settings of the fields ``changes``."""
        if isinstance(settings, FitSettings):
            return replace(settings, **changes) if changes else settings
        if settings is None:
            return cls(**changes)  # type: ignore[arg-type]
        return cls(tuple(settings), **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """The settings as JSON-able values (``face_shape`` a list)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> FitSettings:
        """What :meth:`to_dict` made; a ValueError if any field is missing, unknown or bad."""
        if not isinstance(values, dict):
            raise ValueError("the settings are not a record of fields")
        names = {f.name for f in fields(cls)}
        if set(values) != names:
            odd = sorted(set(values) ^ names)
            raise ValueError(f"the settings have other fields than these settings ({odd})")
        face_shape = values["face_shape"]
        if not isinstance(face_shape, (list, tuple)):
            raise ValueError(f"face_shape must be two whole numbers (h, w), got {face_shape!r}")
        return cls(**{**values, "face_shape": tuple(face_shape)})


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Progress:
    """What the fit reports to its callback: once per restart with the starting parameters
    (``iteration`` 0; the numbers are NaN, ``positions`` None), then after every iteration.

    ``elbo`` is the lower bound after the M-step, ``gain`` its change per image and pixel,
    ``params`` the new θ. ``log_likelihood`` and ``positions`` (the MAP positions, shape (K, 2))
    belong to the parameters the iteration started from, whose E-step computed them.
    """

    restart: int
    restarts: int
    iteration: int
    max_iter: int
    elbo: float
    log_likelihood: float
    gain: float
    params: Params
    positions: np.ndarray | None
    checkpoint: Checkpoint | None = None


@dataclass(frozen=True)
class RestartHistory:
    """One restart of a fit: where it started and how it went.

    ``elbo[t]`` and ``log_likelihood[t]`` belong to the parameters after ``t`` iterations
    (``t = 0`` is the initialisation): ``log_likelihood[t] = log p(X | θ_t)`` and
    ``elbo[t] = L(q_{t-1}, θ_t)``, the bound with the posterior that produced ``θ_t``
    (for ``t = 0``, the posterior at ``θ_0``). ``gain[t]`` is what the stopping rule compared
    with ``tol`` after iteration ``t`` (see :class:`FitSettings`; ``gain[0]`` is NaN).
    ``seconds[t]`` is the time since the start
    (``seconds[0]``: the initialisation). The prior was held fixed in the first
    ``prior_fixed_until`` iterations.
    """

    init: str
    elbo: np.ndarray
    log_likelihood: np.ndarray
    gain: np.ndarray
    seconds: np.ndarray
    n_iter: int
    converged: bool
    final_elbo: float
    prior_fixed_until: int


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`fit`: the best restart's parameters, histories and positions.

    Attributes
    ----------
    face : ndarray of shape (h, w)
    background : ndarray of shape (H, W)
    noise_std : float
    prior : ndarray of shape (H-h+1, W-w+1)
    elbo, log_likelihood, gain, seconds : ndarray of shape (n_iter + 1,)
        Histories of the best restart (see :class:`RestartHistory`).
    final_elbo : float
        ``L(q, θ)`` at the final parameters with their own posterior (soft and Monte-Carlo EM:
        the exact posterior, so it equals ``log_likelihood[-1]``; hard EM: the MAP objective).
    n_iter : int
    converged : bool
    positions : ndarray of shape (K, 2), int
        Every image's most probable face position ``(row, column)``, held out: under the final
        parameters with the face and a learnt prior as the *other* images fitted them (see
        ``_held_out``: an image scored with its own crop in the face matches itself). It can
        differ from ``locate(X, result.params)`` where an image's position is ambiguous.
    position_probability : ndarray of shape (K,)
        The held-out posterior probability of that position.
    unidentified : ndarray of shape (H, W), bool
        Background pixels the face covered in every image (up to ``UNCOVERED_MIN``) at the last
        M-step: not identifiable, they kept their previous value.
    noise_floored : bool
        Whether ``noise_std`` was clipped at its floor.
    settings : FitSettings
        The fit's settings, ``seed`` resolved: ``fit(X, result.settings)`` repeats the run.
    method, init : str
        ``settings.method`` and ``settings.init``.
    seed_entropy : int
        Entropy of the ``SeedSequence`` (``settings.seed``).
    best_restart : int
    restarts : tuple of RestartHistory
    fft_cached : int
        Images whose spectra ``memory_limit`` let the fit keep between iterations (the others
        were recomputed in every pass).
    """

    face: np.ndarray
    background: np.ndarray
    noise_std: float
    prior: np.ndarray
    elbo: np.ndarray
    log_likelihood: np.ndarray
    gain: np.ndarray
    seconds: np.ndarray
    final_elbo: float
    n_iter: int
    converged: bool
    positions: np.ndarray
    position_probability: np.ndarray
    unidentified: np.ndarray
    noise_floored: bool
    settings: FitSettings
    seed_entropy: int
    best_restart: int
    restarts: tuple[RestartHistory, ...] = field(repr=False)
    fft_cached: int = 0

    @property
    def params(self) -> Params:
        return Params(self.face, self.background, self.noise_std, self.prior)

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def init(self) -> str:
        return self.settings.init


# --------------------------------------------------------------------------------------------
# Box sums (summed-area tables)
# --------------------------------------------------------------------------------------------


def _box_valid(y: np.ndarray, h: int, w: int, dtype: np.dtype = np.float64) -> np.ndarray:
    """Sums of ``y`` over every ``h x w`` window: ``(..., H, W) -> (..., H-h+1, W-w+1)``.
    The summed-area tables are float64 whatever ``y``'s dtype; the result is ``dtype``."""
    c = np.cumsum(y, axis=-2, dtype=np.float64)
    rows = np.empty(c.shape[:-2] + (c.shape[-2] - h + 1, c.shape[-1]))
    rows[..., 0, :] = c[..., h - 1, :]
    np.subtract(c[..., h:, :], c[..., :-h, :], out=rows[..., 1:, :])
    c = np.cumsum(rows, axis=-1)
    out = np.empty(c.shape[:-1] + (c.shape[-1] - w + 1,), dtype=dtype)
    out[..., 0] = c[..., w - 1]
    np.subtract(c[..., w:], c[..., :-w], out=out[..., 1:])
    return out


def _box_full(q: np.ndarray, h: int, w: int) -> np.ndarray:
    """Full box filter: ``out[i, j] = Σ q[d]`` over the positions ``d`` whose window covers
    ``(i, j)``: ``(..., Dh, Dw) -> (..., Dh+h-1, Dw+w-1)``."""
    return _full_sum(_full_sum(q, h, -2), w, -1)


def _full_sum(q: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Along ``axis`` (length ``D``): ``out[i] = Σ q[max(0, i-n+1) : i+1]``, ``i < D + n - 1``."""
    q = np.moveaxis(q, axis, -1)
    D = q.shape[-1]
    c = np.zeros(q.shape[:-1] + (D + 2 * n - 1,))  # c[n - 1 + m] = Σ q[:m], m = 0 .. D + n - 1
    np.cumsum(q, axis=-1, out=c[..., n : n + D])
    c[..., n + D :] = c[..., n + D - 1 : n + D]
    out = c[..., n:] - c[..., : D + n - 1]
    return np.moveaxis(out, -1, axis)


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x * log(y)`` with ``0 * log(0) = 0``."""
    out = np.zeros(np.broadcast(x, y).shape)
    np.multiply(x, np.log(y, out=np.full(y.shape, -np.inf), where=y > 0), out=out, where=x != 0)
    return out


# --------------------------------------------------------------------------------------------
# The data, prepared once per fit
# --------------------------------------------------------------------------------------------


class _Data:
    """The image stack, shifted, with what does not change between iterations.

    ``X`` may be any array-like of shape ``(K, H, W)`` that slices to NumPy (an in-memory array,
    a memory map, an :class:`~facefinder_cli.images.NpyReader` reading a file chunk by chunk);
    chunks are read and shifted on the fly, so the pass holds one chunk per thread, never the
    stack. The FFT cache holds ``rfft2`` of the first ``n_cached`` shifted images, as many as
    ``memory_limit`` allows; the spectra of the others are recomputed in every pass.

    ``dtype`` is the precision of the per-image work (reads, FFTs, posteriors): float64, or
    float32 for half the memory traffic. Sums over images are always accumulated in float64, and
    the per-fit sums (``sum_x``, ``sq_x``) are computed from float64 copies of the images.
    """

    def __init__(
        self,
        X: np.ndarray,
        face_shape: tuple[int, int],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cache_fft: bool | None = None,
        workers: int | None = None,
        memory_limit: int | None = None,
        dtype: np.dtype | type | str = np.float64,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> None:
        if not (hasattr(X, "ndim") and hasattr(X, "dtype")):
            X = np.asarray(X)  # nested lists and other array-likes
        if X.ndim != 3:
            raise ValueError(f"X must have shape (n_images, height, width), got {np.shape(X)}")
        if np.dtype(X.dtype).kind not in "biuf":
            raise ValueError(f"X must hold real numbers, got dtype {X.dtype}")
        K, H, W = X.shape
        h, w = _check_face_shape(face_shape, (H, W))
        if K < 1:
            raise ValueError("X holds no images")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.dtype = _check_dtype(dtype)
        self.workers = _check_workers(workers)
        self.on_chunk = on_chunk
        limit = default_memory_limit() if memory_limit is None else _check_limit(memory_limit)
        self.X = X
        self.K, self.H, self.W, self.h, self.w = K, H, W, h, w
        self.Dh, self.Dw = H - h + 1, W - w + 1
        per_image = _working_bytes(H, W, self.Dh, self.Dw)
        self.chunk = _chunk_for(chunk_size, H, W, self.Dh, self.Dw)
        first = np.asarray(X[: min(K, 16)], dtype=np.float64)
        self.offset = float(first.mean()) if np.isfinite(first).all() else 0.0  # else: error below
        spectrum_bytes = H * (W // 2 + 1) * 2 * self.dtype.itemsize
        if cache_fft is None:
            room = max(0, limit - self.workers * self.chunk * per_image) // spectrum_bytes
            n_cached = K if room >= K else (room // self.chunk) * self.chunk
        else:
            n_cached = K if cache_fft else 0
        self.n_cached = int(n_cached)
        complex_type = np.complex64 if self.dtype == np.float32 else np.complex128
        self._xf = np.empty((self.n_cached, H, W // 2 + 1), complex_type)
        # One pass: sums over images (in float64) and the cached spectra.
        self.sum_x = np.zeros((H, W))
        self.sq_x = np.empty(K)  # Σ_ij X_k² per image (shifted)
        largest = 0.0
        for _, b, (part, top) in self.map(self._first_pass):
            self.sum_x += part
            largest = max(largest, top)
            self.report(b)
        # float32 products of images, background and face, summed over a window, must not
        # overflow (largest: 3.4e38); values this large would lose all precision anyway.
        if self.dtype == np.float32 and largest**2 * H * W > 1e34:
            raise ValueRangeError(
                f"pixel values up to {largest:.3g} from their mean are too large for float32 "
                "arithmetic: use dtype float64"
            )
        if largest > LARGEST_VALUE:
            raise ValueRangeError(
                f"pixel values up to {largest:.3g} from their mean are too large: their squares "
                "overflow float64; divide the images by a constant"
            )
        self.total_sq = float(self.sq_x.sum())
        n = K * H * W
        var = self.total_sq / n - (self.sum_x.sum() / n) ** 2
        std = math.sqrt(max(var, 0.0))
        self.scale = std if std > 0 else (abs(self.offset) or 1.0)
        if self.scale < SMALLEST_SCALE:
            raise ValueRangeError(
                f"pixel values vary by only {self.scale:.3g}: too little for float64 (the "
                "noise variance would underflow); multiply the images by a constant"
            )
        self.noise_floor = NOISE_FLOOR * self.scale

    def fingerprint(self) -> dict:
        """A summary of the images that changes when any of them changes, is reordered or is
        replaced, cheap because it comes from sums the first pass computes anyway: the size,
        the shift and a few fixed, irregularly weighted sums of each image's ``Σ X²`` and of
        the pixel-wise ``Σ_k X_k``, with the sums of their magnitudes (to compare them within
        round-off, see :func:`_fingerprint_differs`: a change of less than about 1e-12 of
        these sums goes unnoticed; one grey level of one pixel among a million images of
        64x64 with noise 50 is about 3e-9 of the pixel-wise sum). Needs ``total_sq``."""
        k = np.arange(1, self.K + 1, dtype=np.float64)
        i, j = np.indices((self.H, self.W), dtype=np.float64)
        sums, scale = [], []
        for a, b in zip(_IRRATIONAL, _IRRATIONAL[1:] + _IRRATIONAL[:1]):
            weights = np.modf(k * a)[0]
            sums.append(float(weights @ self.sq_x))
            scale.append(float(self.sq_x.sum()))
            field = np.modf(i * a + j * b + 0.5)[0]
            sums.append(float(np.sum(field * self.sum_x)))
            scale.append(float(np.abs(self.sum_x).sum()))
        # the shift (the mean of the first images) with its own scale: data shifted by a
        # constant have the same shifted sums
        sums.append(self.offset)
        scale.append(abs(self.offset) + math.sqrt(self.total_sq / (self.K * self.H * self.W)))
        return {"n_images": self.K, "image_size": [self.H, self.W], "sums": sums, "scale": scale}

    def _first_pass(self, a: int, b: int) -> tuple[np.ndarray, float]:
        x = self._read(a, b, np.float64)
        if not np.isfinite(x).all():
            k = int(np.argmin(np.isfinite(x).reshape(b - a, -1).all(1)))
            raise NonFiniteError(a + k, "NaN" if np.isnan(x[k]).any() else "infinite values")
        self.sq_x[a:b] = np.einsum("kij,kij->k", x, x)
        if b <= self.n_cached:  # the same spectra as ``chunk`` computes when not cached
            self._xf[a:b] = sfft.rfft2(x.astype(self.dtype, copy=False))
        return x.sum(axis=0), float(np.abs(x).max())

    @functools.cached_property
    def median_background(self) -> tuple[np.ndarray, float]:
        """The per-pixel median of (up to 512 of) the images and the robust spread (MAD) of the
        residuals around it: computed once per fit, shared by the restarts."""
        sample = _subsample(self)
        background = np.median(sample, axis=0)
        resid = sample - background
        noise = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
        if not noise > self.noise_floor:
            noise = max(float(np.std(resid)), self.noise_floor)
        return background, noise

    def report(self, done: int) -> None:
        """Tell ``on_chunk`` that ``done`` of the K images of the current pass are through."""
        if self.on_chunk is not None:
            self.on_chunk(done, self.K)

    def bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of every chunk, in order."""
        return [(a, min(a + self.chunk, self.K)) for a in range(0, self.K, self.chunk)]

    def _read(self, a: int, b: int, dtype: np.dtype) -> np.ndarray:
        x = np.subtract(self.X[a:b], self.offset, dtype=np.float64)
        return x.astype(dtype, copy=False)

    def chunk_data(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``[a, b)``: the shifted images in ``dtype`` and their spectra."""
        x = self._read(a, b, self.dtype)
        xf = self._xf[a:b] if b <= self.n_cached else sfft.rfft2(x)
        return x, xf

    def chunks(self):
        """Yield ``(start, stop, x, xf)`` for every chunk, in order, in this thread."""
        for a, b in self.bounds():
            yield (a, b, *self.chunk_data(a, b))

    def map(self, fn: Callable, extra: Callable[[int, int], object] | None = None):
        """Yield ``(start, stop, fn(start, stop, *extra(start, stop)))`` for every chunk, in
        chunk order, computed on ``workers`` threads (on this one when a chunk holds fewer than
        ``THREAD_MIN_VALUES`` pixels and positions, or there is a single chunk).

        ``extra`` is called in this thread, in chunk order, when a chunk is handed out (random
        draws, say, so that they do not depend on the threads). At most two chunks per thread
        are in flight, so memory stays bounded whatever K; the caller reduces the results in
        chunk order, which makes every sum independent of the number of threads. NumPy and
        ``scipy.fft`` release the GIL in the work that matters.
        """
        bounds = self.bounds()

        def args(a: int, b: int) -> tuple:
            return (a, b) if extra is None else (a, b, *extra(a, b))

        threads = min(self.workers, len(bounds))
        if self.chunk * (self.H * self.W + self.Dh * self.Dw) < THREAD_MIN_VALUES:
            threads = 1  # hand-offs between threads would cost more than the work they share
        if threads == 1:
            for a, b in bounds:
                yield a, b, fn(*args(a, b))
            return
        pool = ThreadPoolExecutor(threads, thread_name_prefix="facefinder")
        try:
            pending: collections.deque = collections.deque()
            for a, b in bounds:
                pending.append((a, b, pool.submit(fn, *args(a, b))))
                if len(pending) >= 2 * threads:
                    a0, b0, future = pending.popleft()
                    yield a0, b0, future.result()
            while pending:
                a0, b0, future = pending.popleft()
                yield a0, b0, future.result()
        finally:  # on an error or an interrupt: drop what has not started, wait for the rest
            pool.shutdown(wait=True, cancel_futures=True)


#: Largest distance of a pixel value from the images' mean that the fit accepts: the sums of
#: squares over millions of pixels must stay far from float64's 1.8e308.
LARGEST_VALUE = 1e100
#: Smallest spread of the pixel values the fit accepts: the noise floor squared must stay far
#: above float64's smallest numbers.
SMALLEST_SCALE = 1e-100
#: Weights of the input fingerprint (``_Data.fingerprint``): fractional parts of multiples of
#: these are irregular enough that no reordering or edit of the images keeps the sums.
_IRRATIONAL = [math.sqrt(2.0), math.sqrt(3.0), math.sqrt(5.0), math.sqrt(7.0)]

#: Chunks with fewer pixels and positions than this (summed over their images) are processed on
#: one thread. Measured on 2 cores, 1 thread / 2 threads for chunks of 32 images: 0.74-0.82 for
#: 24x32 images (31,000 values), 1.18-1.34 for 48x48 (101,000), 1.48 for 64x64, 1.60-1.76 for
#: 72x96.
THREAD_MIN_VALUES = 100_000

#: Working memory of one chunk of the streaming pass, at most (the chunk shrinks to fit).
CHUNK_BYTES = 256 * 2**20

#: Memory a fit may use for its chunks and its FFT cache by default, at most (an eighth of the
#: machine's memory if that is less); see :func:`default_memory_limit`.
DEFAULT_MEMORY_LIMIT = 2**30

DTYPES: tuple[str, ...] = ("float64", "float32")


def default_memory_limit() -> int:
    """The default ``memory_limit`` of :func:`fit` in bytes: ``DEFAULT_MEMORY_LIMIT`` (1 GiB),
    or an eighth of this machine's physical memory if that is less.

    The working memory of the chunks in flight (``workers * chunk_size`` images' temporaries)
    comes out of it first; the cache of ``rfft2(X)`` gets the rest. With it a fit of 100,000
    images of 64x64 peaked at 1.07 GiB of resident memory on 2 threads
    (``benchmarks/bench_scale.py``); a larger limit caches more spectra and saves one FFT per
    cached image and iteration.
    """
    total = _physical_memory()
    return min(DEFAULT_MEMORY_LIMIT, total // 8) if total else DEFAULT_MEMORY_LIMIT


def available_cores() -> int:
    """The CPU cores this process may use: its affinity mask where the system has one, capped by
    a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _check_dtype(dtype: np.dtype | type | str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return available_cores()
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return int(workers)


def _check_limit(limit: int) -> int:
    if not int(limit) >= 0:
        raise ValueError(f"memory_limit must be a number of bytes >= 0, got {limit}")
    return int(limit)


def _working_bytes(H: int, W: int, Dh: int, Dw: int) -> int:
    """Working memory of the pass per image, about: 16 image-sized and 8 position-table-sized
    float64 arrays (spectra, products, summed-area tables, the posterior and its transforms)."""
    return 8 * (16 * H * W + 8 * Dh * Dw)


def _chunk_for(chunk_size: int, H: int, W: int, Dh: int, Dw: int) -> int:
    """Images per chunk: at most ``chunk_size``, and few enough that a chunk's temporaries
    fit in ``CHUNK_BYTES``; at least one. Refuses images too large for this machine's memory
    even one at a time."""
    per_image = _working_bytes(H, W, Dh, Dw)
    total = _physical_memory()
    if total and per_image > total // 2:
        raise ValueError(
            f"images of {H}x{W} with {Dh}x{Dw} face positions need about "
            f"{per_image / 2**30:.1f} GiB of working memory each, more than half of this "
            f"machine's {total / 2**30:.1f} GiB: crop or downsample them"
        )
    return max(1, min(int(chunk_size), CHUNK_BYTES // per_image))


def _physical_memory() -> int:
    """Bytes of physical memory, or 0 where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


@functools.cache
def _retain_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse rather than give it back to the OS at once.

    The streaming pass allocates and frees temporaries of about a megabyte per chunk. With
    glibc's default thresholds each of them is mapped afresh, page faults and all, until the
    allocator's dynamic threshold happens to grow (measured: a soft iteration of
    ``benchmarks/bench_engine.py`` took 160 ms in a process's first fit, 102 ms after). Raising
    the mmap and trim thresholds to 32 and 128 MiB removes that. Once per process; a no-op where
    ``mallopt`` does not exist (other C libraries, other systems).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 128 * 2**20)


def _check_face_shape(face_shape: Sequence[int], image_shape: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in face_shape)
    except (TypeError, ValueError):
        raise ValueError(f"face_shape must be (height, width), got {face_shape!r}") from None
    H, W = image_shape
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"face_shape {h}x{w} must be at least 1x1 and fit in the images ({H}x{W})")
    return h, w


def _check_params(p: Params, data: _Data) -> Params:
    face = np.asarray(p.face, dtype=np.float64)
    background = np.asarray(p.background, dtype=np.float64)
    prior = np.asarray(p.prior, dtype=np.float64)
    if face.shape != (data.h, data.w):
        raise ValueError(f"face has shape {face.shape}, expected {(data.h, data.w)}")
    if background.shape != (data.H, data.W):
        raise ValueError(f"background has shape {background.shape}, expected {(data.H, data.W)}")
    if prior.shape != (data.Dh, data.Dw):
        raise ValueError(f"prior has shape {prior.shape}, expected {(data.Dh, data.Dw)}")
    s = float(p.noise_std)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"noise_std must be positive and finite, got {p.noise_std}")
    for name, arr in (("face", face), ("background", background), ("prior", prior)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    for name, arr in (("face", face - data.offset), ("background", background - data.offset)):
        top = float(np.abs(arr).max())
        if top > LARGEST_VALUE:
            raise ValueError(
                f"{name} holds values {top:.3g} away from the images' mean: too large to "
                "compute with"
            )
    if not SMALLEST_SCALE * NOISE_FLOOR <= s <= LARGEST_VALUE:
        raise ValueError(f"noise_std {s:.3g} is out of the range the fit can compute with")
    if (prior < 0).any() or prior.sum() <= 0:
        raise ValueError("prior must be non-negative with a positive sum")
    return Params(face, background, s, prior / prior.sum())


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
        lp = _box_valid(prod, d.h, d.w, d.dtype)
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
    if not (int(n_images) >= 0 and alpha > 0):
        raise ValueError(f"need n_images >= 0 and alpha > 0, got {n_images} and {alpha}")
    counts = int(n_images) * a / a.sum()
    return (counts + alpha) / (int(n_images) + alpha * a.size)


@dataclass
class _Posterior:
    """A chunk's normalised posterior, from its log joint ``lp`` (modified in place)."""

    q: np.ndarray  # (n, Dh, Dw) probabilities
    log_likelihood: np.ndarray  # (n,) log p(X_k | θ)
    entropy: np.ndarray  # (n,) H(q_k)
    best: np.ndarray  # (n,) flat index of the MAP position
    best_log_joint: np.ndarray  # (n,) log p(X_k, d*_k | θ)

    @classmethod
    def from_log_joint(cls, lp: np.ndarray, c: np.ndarray | float = 0.0) -> _Posterior:
        """From ``log p(X_k, d | θ) = lp[k, d] + c[k]`` (``lp`` float32 or float64)."""
        n = lp.shape[0]
        flat = lp.reshape(n, -1)
        best = np.argmax(flat, axis=1)
        top = flat[np.arange(n), best]
        flat -= top[:, None]  # t = lp - max <= 0; -inf where the prior is zero
        drop = flat < (_LOG_TINY if flat.dtype == np.float64 else _LOG_TINY_32)
        np.copyto(flat, 0.0, where=drop)  # keeps q * t finite in the entropy
        q = np.exp(flat)
        np.copyto(q, 0.0, where=drop)
        z = q.sum(axis=1, dtype=np.float64)
        q /= z[:, None]
        log_z = np.log(z)
        entropy = log_z - np.einsum("kd,kd->k", q, flat, dtype=np.float64)
        top = top.astype(np.float64) + c
        return cls(q.reshape(lp.shape), top + log_z, np.maximum(entropy, 0.0), best, top)


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
    return locate(X, params, chunk_size=chunk_size)[0]


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


def detect(X: np.ndarray, params: Params, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Detection:
    """Find the face in every image: the MAP position, its posterior probability, and how well
    the image fits the model there. Streams ``X`` chunk by chunk.

    For images the parameters were not fitted to, give ``params.prior`` the prior of a new
    image, e.g. :func:`predictive_prior` of the fitted one (a fitted prior favours the training
    images' positions)."""
    data = _data_for(X, params, chunk_size)
    positions = np.empty((data.K, 2), dtype=np.intp)
    probability = np.empty(data.K)
    residual = np.empty(data.K)
    prior = _check_params(params, data).prior
    s2 = float(params.noise_std) ** 2
    n = data.H * data.W
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior).ravel()
    for a, b, lp, c in _chunk_log_joint(data, params, True):
        post = _Posterior.from_log_joint(lp, c)
        positions[a:b] = np.column_stack(np.unravel_index(post.best, lp.shape[1:]))
        probability[a:b] = np.exp(post.best_log_joint - post.log_likelihood)
        # log p(X_k | d*) = -n/2 log(2π s²) - SSE / (2 s²)
        log_lik = post.best_log_joint - log_prior[post.best]
        sse = -2.0 * s2 * (log_lik + 0.5 * n * math.log(2 * math.pi * s2))
        residual[a:b] = np.sqrt(np.maximum(sse, 0.0) / n)
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


# --------------------------------------------------------------------------------------------
# M-step
# --------------------------------------------------------------------------------------------


class _Stats:
    """Sums over images that the M-step needs, accumulated chunk by chunk."""

    def __init__(self, data: _Data) -> None:
        H, W = data.H, data.W
        self.data = data
        self.face_f = np.zeros((H, W // 2 + 1), np.complex128)  # Σ rfft2(X_k) conj(rfft2(q_k))
        self.face_sum = np.zeros((data.h, data.w))  # Σ of weighted crops (sparse q)
        self.cover_x = np.zeros((H, W))  # Σ_k cover_k ⊙ X_k
        self.q_sum = np.zeros((data.Dh, data.Dw))  # Σ_k q_k
        self.entropy = 0.0  # Σ_k H(q_k)
        self.log_likelihood = 0.0  # Σ_k log p(X_k | θ)
        self.elbo = 0.0  # L(q, θ) at the parameters of the E-step
        self.positions: np.ndarray | None = None  # (K, 2) MAP positions, filled by a full pass
        self.probability: np.ndarray | None = None  # (K,) their posterior probabilities

    def add_dense(self, x: np.ndarray, xf: np.ndarray, q: np.ndarray) -> None:
        """Add a chunk with dense posteriors ``q`` of shape ``(n, Dh, Dw)``."""
        d = self.data
        # rfft2 of q zero-padded to H x W, transforming only its Dh non-zero rows first.
        qf = sfft.rfft(q, n=d.W, axis=-1)
        qf = sfft.fft(qf, n=d.H, axis=-2, overwrite_x=True)
        if qf.dtype == np.complex128:
            self.face_f += np.einsum("kij,kij->ij", xf, qf.conj())
        else:  # single precision: products in float32, their sum over images in float64
            self.face_f += np.multiply(xf, qf.conj(), out=qf).sum(axis=0, dtype=np.complex128)
        self.cover_x += np.einsum("kij,kij->ij", _box_full(q, d.h, d.w), x, dtype=np.float64)
        self.q_sum += q.sum(axis=0, dtype=np.float64)

    def add_positions(self, x: np.ndarray, pos: np.ndarray) -> None:
        """Add a chunk with ``S`` equally weighted positions per image, ``pos`` of shape
        ``(n, S, 2)`` (hard EM: ``S = 1``; Monte-Carlo EM: ``S`` draws)."""
        d = self.data
        n, S = pos.shape[:2]
        rows = pos[:, :, 0, None, None] + np.arange(d.h)[:, None]  # (n, S, h, 1)
        cols = pos[:, :, 1, None, None] + np.arange(d.w)  # (n, S, 1, w)
        crops = x[np.arange(n)[:, None, None, None], rows, cols]  # (n, S, h, w)
        self.face_sum += crops.sum(axis=(0, 1), dtype=np.float64) / S
        flat = (rows * d.W + cols).ravel()
        self.cover_x += np.bincount(flat, crops.ravel(), d.H * d.W).reshape(d.H, d.W) / S
        pflat = (pos[:, :, 0] * d.Dw + pos[:, :, 1]).ravel()
        self.q_sum += np.bincount(pflat, minlength=d.Dh * d.Dw).reshape(d.Dh, d.Dw) / S

    def add_draws(
        self, x: np.ndarray, xf: np.ndarray, post: _Posterior, draws: np.ndarray, accumulate: bool
    ) -> None:
        """Add a chunk of Monte-Carlo EM: ``draws`` (n, S) are flat positions drawn from the
        posterior ``post``; ``q`` is their empirical distribution. Its bound and entropy always
        count; the M-step sums only with ``accumulate``, as crops when ``S`` crops cost less
        than the dense path, else through it."""
        d = self.data
        n, S = draws.shape
        entropy = _draws_entropy(draws)
        # log p(X_k, z | θ) = log q_k(z) + log p(X_k | θ) at every drawn z (q_k(z) > 0 there)
        log_q = np.log(np.take_along_axis(post.q.reshape(n, -1), draws, axis=1))
        self.elbo += float((log_q + post.log_likelihood[:, None]).sum(dtype=np.float64)) / S
        self.elbo += entropy
        self.entropy += entropy
        if not accumulate:
            return
        if S * d.h * d.w <= 2 * d.H * d.W:  # measured crossover: 1.7 to 3.5 x H W
            pos = np.stack(np.unravel_index(draws, (d.Dh, d.Dw)), axis=-1)
            self.add_positions(x, pos)
        else:
            D = d.Dh * d.Dw
            counts = np.bincount((draws + D * np.arange(n)[:, None]).ravel(), minlength=n * D)
            self.add_dense(x, xf, counts.reshape(n, d.Dh, d.Dw) / S)

    def merge(self, part: _Stats) -> None:
        """Add the sums of another chunk (the pass adds chunks in order: same sums whatever
        the number of threads)."""
        self.face_f += part.face_f
        self.face_sum += part.face_sum
        self.cover_x += part.cover_x
        self.q_sum += part.q_sum
        self.entropy += part.entropy
        self.log_likelihood += part.log_likelihood
        self.elbo += part.elbo

    def m_step(self, previous: Params, update_prior: bool = True) -> tuple[Params, dict]:
        """Close the M-step: new parameters, and the bound ``L(q, θ_new)`` in closed form."""
        d = self.data
        K, H, W, h, w = d.K, d.H, d.W, d.h, d.w
        face_num = self.face_sum.copy()
        if self.face_f.any():
            face_num += sfft.irfft2(self.face_f, s=(H, W))[:h, :w]
        face = face_num / K  # shifted
        prior = self.q_sum / K if update_prior else previous.prior
        den = K - _box_full(self.q_sum, h, w)  # Σ_k (1 - cover_k)
        num = d.sum_x - self.cover_x  # Σ_k (1 - cover_k) X_k
        known = den > K * UNCOVERED_MIN
        mean = np.divide(num, den, out=np.zeros_like(num), where=known)
        # Σ_k Σ_d q_k(d) ||X_k - Model_d||² at the new F (optimal) and B (optimal where known).
        sse = d.total_sq - K * float(np.sum(face**2)) - float(np.sum(mean * num))
        background = np.where(known, mean + d.offset, previous.background)
        n = K * H * W
        s2 = sse / n
        floored = s2 < d.noise_floor**2 or not np.isfinite(s2)
        noise_std = d.noise_floor if floored else math.sqrt(s2)
        s2 = noise_std**2
        if update_prior:  # Σ_d q_sum log(q_sum / K), safe where q_sum / K underflows
            q_sum = self.q_sum
            log_prior_term = float(_xlogy(q_sum, q_sum).sum() - q_sum.sum() * math.log(K))
        else:
            log_prior_term = float(_xlogy(self.q_sum, prior).sum())
        elbo = (
            -0.5 * n * math.log(2 * math.pi * s2) - sse / (2 * s2) + log_prior_term + self.entropy
        )
        new = Params(face + d.offset, background, noise_std, prior)
        return new, {"elbo": elbo, "unidentified": ~known, "floored": floored}


def _prepare_q_input(X, face_shape, posterior_, positions_, chunk_size):
    if (posterior_ is None) == (positions_ is None):
        raise ValueError("give exactly one of posterior and positions")
    data = _Data(X, face_shape, chunk_size=chunk_size, cache_fft=False)
    if posterior_ is not None:
        q = np.asarray(posterior_, dtype=np.float64)
        if q.shape != (data.K, data.Dh, data.Dw):
            raise ValueError(
                f"posterior has shape {q.shape}, expected {(data.K, data.Dh, data.Dw)}"
            )
        return data, q, None
    pos = np.asarray(positions_)
    if pos.ndim == 2:
        pos = pos[:, None, :]
    if pos.ndim != 3 or pos.shape[0] != data.K or pos.shape[2] != 2:
        raise ValueError(
            f"positions must have shape (K, 2) or (K, S, 2), got {np.shape(positions_)}"
        )
    if not np.issubdtype(pos.dtype, np.integer):
        raise ValueError("positions must be integers")
    if (pos < 0).any() or (pos[..., 0] >= data.Dh).any() or (pos[..., 1] >= data.Dw).any():
        raise ValueError(f"positions must lie in [0, {data.Dh - 1}] x [0, {data.Dw - 1}]")
    return data, None, pos.astype(np.intp)


def m_step(
    X: np.ndarray,
    face_shape: tuple[int, int],
    *,
    posterior: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    previous: Params | None = None,
    update_prior: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Params:
    """The M-step for a given posterior (soft EM) or given positions (hard / Monte-Carlo EM).

    Parameters
    ----------
    X : ndarray of shape (K, H, W)
    face_shape : (h, w)
    posterior : ndarray of shape (K, H-h+1, W-w+1), optional
        Dense posteriors ``q_k``.
    positions : int ndarray of shape (K, 2) or (K, S, 2), optional
        One position per image (hard EM) or ``S`` equally weighted draws per image.
    previous : Params, optional
        Used for the background pixels that are not identifiable (covered in every image) and,
        with ``update_prior=False``, for the prior. Without it such pixels get the mean of the
        images there and the prior is uniform.

    Returns
    -------
    Params
    """
    data, q, pos = _prepare_q_input(X, face_shape, posterior, positions, chunk_size)
    stats = _Stats(data)
    for a, b, x, xf in data.chunks():
        if q is not None:
            stats.add_dense(x, xf, q[a:b])
        else:
            stats.add_positions(x, pos[a:b])
    if previous is None:
        prev = Params(
            np.zeros((data.h, data.w)),
            data.sum_x / data.K + data.offset,
            1.0,
            np.full((data.Dh, data.Dw), 1.0 / (data.Dh * data.Dw)),
        )
    else:
        prev = _check_params(previous, data)
    new, _ = stats.m_step(prev, update_prior=update_prior)
    return new


def elbo(
    X: np.ndarray,
    params: Params,
    *,
    posterior: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> float:
    """``L(q, θ) = Σ_k E_q[log p(X_k, d | θ)] - E_q[log q]`` for a dense posterior or for
    positions (a one-hot ``q``, or the empirical distribution of ``S`` draws per image)."""
    data, q, pos = _prepare_q_input(X, params.face.shape, posterior, positions, chunk_size)
    total = 0.0
    for a, b, lp, c in _chunk_log_joint(data, params, True):
        lp += c[:, None, None]
        if q is not None:
            qc = q[a:b]
            with np.errstate(invalid="ignore"):
                expected = np.where(qc > 0, qc * lp, 0.0).sum()
            total += float(expected) - float(_xlogy(qc, qc).sum())
        else:
            pc = pos[a:b]
            n, S = pc.shape[:2]
            total += float(lp[np.arange(n)[:, None], pc[..., 0], pc[..., 1]].sum()) / S
            total += _draws_entropy(pc[..., 0] * data.Dw + pc[..., 1])
    return total


def _draws_entropy(draws: np.ndarray) -> float:
    """Total entropy of the empirical distributions of ``draws`` (n, S): one row per image."""
    n, S = draws.shape
    ordered = np.sort(draws, axis=1)
    first = np.ones((n, S), dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # where a run of equal draws starts
    runs = np.diff(np.append(np.flatnonzero(first), n * S)) / S
    return float(-np.sum(runs * np.log(runs)))


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


def _uniform_prior(data: _Data) -> np.ndarray:
    return np.full((data.Dh, data.Dw), 1.0 / (data.Dh * data.Dw))


def _subsample(data: _Data, n: int = 512) -> np.ndarray:
    """Up to ``n`` evenly spaced images, for statistics that need them all at once."""
    idx = np.unique(np.linspace(0, data.K - 1, min(n, data.K)).round().astype(int))
    return np.asarray(data.X[idx], dtype=np.float64)


def _init_study(data: _Data, method: str, rng: np.random.Generator, prior: np.ndarray) -> Params:
    """The study's initialisations (0..255 scale)."""
    h, w, H, W = data.h, data.w, data.H, data.W
    if method == "zeros":
        return Params(np.zeros((h, w)), np.zeros((H, W)), 1.0, prior)
    if method == "bright":
        return Params(np.full((h, w), WHITE), np.full((H, W), WHITE), WHITE, prior)
    if method == "random":
        face = rng.uniform(0.0, WHITE, (h, w))
        background = rng.uniform(0.0, WHITE, (H, W))
        return Params(face, background, float(rng.exponential(10.0)), prior)
    if method == "smooth":
        i, j = rng.integers(data.K, size=2)
        background = _smooth_image(data, i)
        r, c = rng.integers(data.Dh), rng.integers(data.Dw)
        face = _smooth_image(data, j)[r : r + h, c : c + w].copy()
        noise = float(np.std(np.asarray(data.X[i], dtype=np.float64) - background))
        return Params(face, background, noise, prior)
    raise ValueError(f"unknown init {method!r}; choose from {', '.join(INIT_METHODS)}")


def _smooth_image(data: _Data, k: int) -> np.ndarray:
    """Image ``k`` filtered by a Gaussian of std ``min(h, w) / 8`` (at least one pixel)."""
    from scipy import ndimage  # here: importing it costs every command 0.1 s of start-up

    sigma = max(1.0, min(data.h, data.w) / 8.0)
    return ndimage.gaussian_filter(np.asarray(data.X[k], dtype=np.float64), sigma)


def _init_median(data: _Data, rng: np.random.Generator | None, prior: np.ndarray) -> Params:
    """The default start, from the data.

    The face moves and the background does not, so the background is the per-pixel median of
    the images and the noise std a robust spread (MAD) of the residuals. The face starts as what
    the first M-step would give if every image's posterior were the prior: the prior-weighted
    average of the mean image's windows, a blur that favours no position. Restarts after the
    first (``rng`` given) start the face from a smoothed window of a random image instead.
    """
    background, noise = data.median_background
    if rng is None:
        mean = data.sum_x / data.K + data.offset
        # Σ_d A(d) mean(d + ·): a valid correlation, computed like the M-step's face sum.
        spectrum = sfft.rfft2(mean) * np.conj(sfft.rfft2(prior, s=mean.shape))
        face = sfft.irfft2(spectrum, s=mean.shape)[: data.h, : data.w]
    else:
        r, c = rng.integers(data.Dh), rng.integers(data.Dw)
        face = _smooth_image(data, rng.integers(data.K))[r : r + data.h, c : c + data.w].copy()
    return Params(face, background, noise, prior)


def _initialize(
    data: _Data,
    method: str,
    rng: np.random.Generator,
    restart: int,
    given: dict,
) -> Params:
    """Starting parameters; ``given`` entries override the method's."""
    prior = given.get("prior")
    prior = _uniform_prior(data) if prior is None else np.asarray(prior, dtype=np.float64)
    if prior.shape != (data.Dh, data.Dw) or (prior < 0).any() or not prior.sum() > 0:
        raise ValueError(
            f"prior must be non-negative of shape {(data.Dh, data.Dw)} with a positive sum"
        )
    prior = prior / prior.sum()
    if all(given.get(k) is not None for k in ("face", "background", "noise_std")):
        p = Params(given["face"], given["background"], given["noise_std"], prior)
    elif method == "median":
        p = _init_median(data, rng if restart > 0 else None, prior)
    else:
        p = _init_study(data, method, rng, prior)
    p = replace(p, noise_std=max(float(p.noise_std), data.noise_floor))
    p = replace(p, **{k: v for k, v in given.items() if v is not None and k != "prior"})
    return _check_params(p, data)


def _given(init_params: Params | dict | None) -> dict:
    if init_params is None:
        return {}
    if isinstance(init_params, Params):
        return {k: getattr(init_params, k) for k in ("face", "background", "noise_std", "prior")}
    unknown = set(init_params) - {"face", "background", "noise_std", "prior"}
    if unknown:
        raise ValueError(f"init_params has unknown keys {sorted(unknown)}")
    return dict(init_params)


def initialize(
    X: np.ndarray,
    face_shape: tuple[int, int],
    init: str = "median",
    *,
    seed: int | np.random.SeedSequence | None = None,
    restart: int = 0,
) -> Params:
    """The starting parameters that :func:`fit` uses for ``init`` (and restart ``restart``).

    Parameters
    ----------
    X : ndarray of shape (K, H, W)
    face_shape : (h, w)
    init : {"median", "zeros", "bright", "random", "smooth"}
        ``median`` (the default of :func:`fit`): the per-pixel median of the images as the
        background, a robust noise std, and a face that favours no position (see
        ``_init_median``). The study's starts, on the 0..255 scale: ``zeros`` (F = B = 0,
        s = 1), ``bright`` (F = B = 255, s = 255), ``random`` (F, B uniform on 0..255, s
        exponential with mean 10), ``smooth`` (F and B from Gaussian-filtered random images,
        s their residual std). All start from a uniform prior.
    seed, restart
        As in :func:`fit`: restart ``r`` draws from child ``r`` of ``SeedSequence(seed)``.
    """
    data = _Data(X, face_shape, cache_fft=False)
    child = _seed_child(_seed_sequence(seed), restart)
    return _initialize(data, init, np.random.default_rng(child), restart, {})


def _seed_sequence(seed: int | np.random.SeedSequence | None) -> np.random.SeedSequence:
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


def _seed_child(ss: np.random.SeedSequence, r: int) -> np.random.SeedSequence:
    """Child ``r`` of ``ss``, as ``ss.spawn`` would make it, without mutating ``ss`` and without
    making the others: any number of restarts costs nothing up front."""
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, r), pool_size=ss.pool_size)


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


def _held_out(
    scorer: _Scorer,
    data: _Data,
    xf: np.ndarray,
    lp: np.ndarray,
    corr: np.ndarray,
    q: np.ndarray,
    prior: np.ndarray,
    fitted: tuple[bool, bool],
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
    X_k(d + u)``, and with the :func:`predictive_prior` of the other images' posteriors; the
    background and noise std stay those of all the images. It costs three FFTs per image
    (``c_k``, its spectrum, its correlation with the image), in the final pass only.
    ``fitted`` says whether the face and the prior were fitted (re-estimated by an M-step):
    those that were not are used as they are."""
    K, H, W = data.K, data.H, data.W
    face_fitted, prior_learnt = fitted
    if face_fitted and K >= 2:
        qf = sfft.fft(sfft.rfft(q, n=W, axis=-1), n=H, axis=-2, overwrite_x=True)
        crop = sfft.irfft2(xf * qf.conj(), s=(H, W))[:, : data.h, : data.w]  # c_k (shifted)
        own = _valid_correlation(data, xf, np.conj(sfft.rfft2(crop, s=(H, W))))
        lp += ((corr - own) * (scorer.inv_s2 / (K - 1))).astype(lp.dtype)
    if prior_learnt:
        others = np.maximum(K * prior[None] - q, 0.0)
        held = (others + PRIOR_PSEUDO_COUNT) / (K - 1 + PRIOR_PSEUDO_COUNT * prior.size)
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
) -> _Stats:
    """One streaming pass: the E-step at ``p`` (log-likelihood, bound, MAP positions and their
    probabilities) and, if ``accumulate``, the M-step sums. Monte-Carlo EM (``method="mc"``)
    draws ``samples`` positions per image from the posterior with ``rng``, and its ``q`` is the
    empirical distribution of the draws. With ``held_out`` (whether the face and the prior
    were fitted) the positions and probabilities are the held-out ones of :func:`_held_out`."""
    if held_out is not None:
        assert not accumulate, "held-out positions are for the final pass"
        # The final pass scores with the likelihood alone, then adds the prior, so that the
        # held-out scores reuse the likelihood and its face correlation.
        scorer = _Scorer(p, data, with_prior=False)
        with np.errstate(divide="ignore"):
            log_prior = np.log(p.prior).astype(data.dtype)
    else:
        scorer = _Scorer(p, data)

    def chunk(a: int, b: int, u: np.ndarray | None = None) -> tuple:
        x, xf = data.chunk_data(a, b)
        part = _Stats(data)
        if held_out is None:
            post = _Posterior.from_log_joint(*scorer.log_joint(x, xf, data.sq_x[a:b]))
        else:
            lp, c, corr = scorer.log_joint_and_correlation(x, xf, data.sq_x[a:b])
            post = _Posterior.from_log_joint(lp + log_prior, c)
        ll = float(post.log_likelihood.sum())
        part.log_likelihood = ll
        best = np.column_stack(np.unravel_index(post.best, (data.Dh, data.Dw)))
        if held_out is not None:
            q = post.q
            if method == "hard":  # its face is built from each image's MAP crop
                q = np.zeros_like(post.q)
                q.reshape(len(q), -1)[np.arange(len(q)), post.best] = 1.0
            flat, probability = _held_out(scorer, data, xf, lp, corr, q, p.prior, held_out)
            part.elbo = ll if method == "soft" else float(post.best_log_joint.sum())
            part.entropy = float(post.entropy.sum())
            return part, np.column_stack(np.unravel_index(flat, (data.Dh, data.Dw))), probability
        if method == "soft":
            part.elbo = ll
            part.entropy = float(post.entropy.sum())
            if accumulate:
                part.add_dense(x, xf, post.q)
        elif method == "hard":
            part.elbo = float(post.best_log_joint.sum())
            if accumulate:
                part.add_positions(x, best[:, None, :])
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


def _window_gain(log_likelihood: list[float], window: int = MC_WINDOW) -> float:
    """Mean gain per iteration of the log-likelihood between the last two windows of
    ``window`` iterations; ``inf`` until there are two windows."""
    ll = log_likelihood
    if len(ll) < 2 * window:
        return math.inf
    return (np.mean(ll[-window:]) - np.mean(ll[-2 * window : -window])) / window


def _samples_at(iteration: int, start: int, growth: float, most: int) -> int:
    """Draws per image in Monte-Carlo iteration ``iteration`` (from 1): ``start`` growing by the
    factor ``growth`` per iteration, at most ``most``."""
    if math.log(start) + (iteration - 1) * math.log(growth) >= math.log(most):
        return most  # (growth ** iteration would overflow a float after enough iterations)
    return int(min(most, math.ceil(start * growth ** (iteration - 1))))


@dataclass(frozen=True)
class RestartResult:
    """One finished restart: its parameters, history and the final E-step's positions."""

    params: Params
    history: RestartHistory
    positions: np.ndarray
    probability: np.ndarray
    unidentified: np.ndarray
    noise_floored: bool


@dataclass(frozen=True)
class Checkpoint:
    """The state of a fit after a completed iteration, which is all the loop keeps: the loop
    advances it one iteration at a time, :class:`Progress` carries it after every iteration,
    and ``fit(X, settings, resume=checkpoint)`` on the same images ends exactly as the
    uninterrupted fit (bit for bit; only the timings differ).

    ``settings`` are the fit's (their ``seed`` resolved), ``start`` a digest of the given
    ``init_params`` (None: none given) and ``data`` a fingerprint of the images (their number,
    size and a few weighted sums): resuming with other settings, start or images is refused.
    ``finished`` holds the restarts already done; restart ``restart`` has completed
    ``iteration`` iterations and stands at ``params``. The histories hold one value per
    iteration (``elbo`` also one for the start, from the first iteration on; ``seconds`` one for
    the start); ``gain`` is what the stopping rule compared with ``tol``. ``rng_state`` is the
    restart's random generator's state (``bit_generator.state``).
    """

    settings: FitSettings
    seed_entropy: int
    start: str | None
    data: dict
    finished: tuple[RestartResult, ...]
    restart: int
    iteration: int
    params: Params
    elbo: tuple[float, ...]
    log_likelihood: tuple[float, ...]
    gain: tuple[float, ...]
    seconds: tuple[float, ...]
    converged: bool
    prior_free: bool
    prior_fixed_until: int
    unidentified: np.ndarray
    noise_floored: bool
    rng_state: dict = field(default_factory=dict, repr=False)


def _start_digest(given: dict) -> str | None:
    """A digest of the given starting parameters (None if none), for checkpoints to compare."""
    if not given:
        return None
    digest = hashlib.sha256()
    for k in ("face", "background", "noise_std", "prior"):
        value = given.get(k)
        digest.update(k.encode())
        if value is not None:
            digest.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _differs(old: FitSettings, new: FitSettings) -> str | None:
    """Why a checkpoint made with settings ``old`` does not resume a fit with ``new``."""
    changed = [
        f"{f.name}={getattr(old, f.name)!r} (this fit: {getattr(new, f.name)!r})"
        for f in fields(FitSettings)
        if getattr(old, f.name) != getattr(new, f.name)
    ]
    if changed:
        return "the checkpoint belongs to another fit: it was made with " + ", ".join(changed)
    return None


def _damaged(cp: Checkpoint, data: _Data) -> str | None:
    """What is inconsistent in a checkpoint (edited, or damaged on disk), or None."""
    t = cp.iteration
    if not (isinstance(t, int) and 0 <= t <= cp.settings.max_iter and cp.restart >= 0):
        return "its iteration or restart is out of range"
    # (elbo[0] is added with the first iteration's E-step: none before it)
    if len(cp.log_likelihood) != t or len(cp.gain) != t or len(cp.elbo) != (t + 1 if t else 0):
        return "its histories do not have one value per iteration"
    if len(cp.seconds) != t + 1:
        return "its histories do not have one value per iteration"
    if np.shape(cp.unidentified) != (data.H, data.W):
        return "its record of unidentified background pixels has the wrong shape"
    if len(cp.finished) != cp.restart:
        return "its record of finished restarts does not match its restart"
    for done in cp.finished:
        h = done.history
        if np.shape(done.positions) != (data.K, 2) or np.shape(done.probability) != (data.K,):
            return "a finished restart's positions do not match the images"
        n = h.n_iter + 1
        if len(h.elbo) != n or len(h.log_likelihood) != n or len(h.gain) != n:
            return "a finished restart's histories do not match its iterations"
    return None


def _fingerprint_differs(old: dict, new: dict) -> str | None:
    """Why a checkpoint made from images with fingerprint ``old`` (see ``_Data.fingerprint``)
    does not resume a fit of images with ``new``; None when they are the same images."""
    try:
        n, (h, w) = int(old["n_images"]), old["image_size"]
        if (n, [int(h), int(w)]) != (new["n_images"], new["image_size"]):
            H, W = new["image_size"]
            return (
                f"the checkpoint was made from {n} images of {h}x{w}; these are "
                f"{new['n_images']} images of {H}x{W}"
            )
        pairs = list(zip(old["sums"], new["sums"], new["scale"]))
        if len(pairs) != len(new["sums"]):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        return "the checkpoint's record of its images is damaged"
    for a, b, scale in pairs:
        if not abs(float(a) - b) <= 1e-12 * scale:
            return (
                "the images differ from those the checkpoint was made from (as many, of the "
                "same size, but other values or in another order)"
            )
    return None


def _resume_refused(cp: Checkpoint, settings: FitSettings, start: str | None, data: _Data):
    """Why ``cp`` does not resume the fit of ``data`` with ``settings``; None if it does."""
    if not isinstance(cp.settings, FitSettings) or not isinstance(cp.data, dict):
        return "the checkpoint is damaged: its record of settings or images is not one"
    why = _differs(cp.settings, settings)
    if why is None and cp.start != start:
        why = "the checkpoint belongs to another fit: it started from other given parameters"
    if why is None and not cp.restart < settings.restarts:
        why = "the checkpoint belongs to another fit (other restarts)"
    if why is None:
        why = _fingerprint_differs(cp.data, data.fingerprint())
    if why is None:
        damage = _damaged(cp, data)
        why = None if damage is None else f"the checkpoint is damaged: {damage}"
    return why


def _gain(state: Checkpoint, n_values: int) -> float:
    """The stopping rule's measure of the last iteration, per image and pixel: the rise of
    the ELBO, or for Monte-Carlo EM the windowed rise of the exact log-likelihood (windows
    start afresh when a held prior is released: its jump is a new phase)."""
    s = state.settings
    if s.method != "mc":
        return (state.elbo[-1] - state.elbo[-2]) / n_values
    since = state.prior_fixed_until if s.prior_update == "late" and state.prior_free else 0
    return _window_gain(list(state.log_likelihood[since:])) / n_values


def _iterate(data: _Data, state: Checkpoint, rng: np.random.Generator, t0: float):
    """One EM iteration from ``state``: the next state, and the E-step's MAP positions."""
    s, t = state.settings, state.iteration + 1
    samples = _samples_at(t, s.samples, s.samples_growth, s.max_samples)
    stats = _pass(data, state.params, s.method, True, rng, samples)
    params, info = stats.m_step(state.params, update_prior=state.prior_free)
    state = replace(
        state,
        iteration=t,
        params=params,
        elbo=state.elbo + ((stats.elbo,) if t == 1 else ()) + (info["elbo"],),
        log_likelihood=state.log_likelihood + (stats.log_likelihood,),
        seconds=state.seconds + (time.perf_counter() - t0,),
        prior_fixed_until=state.prior_fixed_until + (not state.prior_free),
        unidentified=info["unidentified"],
        noise_floored=info["floored"],
    )
    gain = float(_gain(state, data.K * data.H * data.W))
    if s.prior_update == "late" and not state.prior_free:
        # the rest has settled: from now on the prior is learnt too
        released = gain < (s.tol if s.tol > 0 else DEFAULT_TOL)
        state = replace(state, gain=state.gain + (gain,), prior_free=released)
    else:
        state = replace(state, gain=state.gain + (gain,), converged=gain < s.tol)
    return state, stats.positions


def _run(
    data: _Data,
    state: Checkpoint,
    rng: np.random.Generator,
    t0: float,
    callback: Callable[[Progress], None] | None,
) -> RestartResult:
    """Restart ``state.restart`` from ``state`` (its start, or a checkpoint) to its end."""
    s = state.settings

    def report(positions: np.ndarray | None) -> None:
        if callback is None:
            return
        done = replace(state, rng_state=rng.bit_generator.state)
        last = (math.nan, math.nan, math.nan)
        if state.iteration:
            last = (state.elbo[-1], state.log_likelihood[-1], state.gain[-1])
        callback(
            Progress(
                state.restart,
                s.restarts,
                state.iteration,
                s.max_iter,
                *last,
                state.params,
                positions,
                done,
            )  # fmt: skip
        )

    if state.iteration == 0:
        report(None)
    while not state.converged and state.iteration < s.max_iter:
        state, positions = _iterate(data, state, rng, t0)
        report(positions)
    # Positions and probabilities held out: scored with what the other images fitted (the face
    # after any M-step, the prior if an M-step re-estimated it).
    fitted = (state.iteration > 0, state.iteration > state.prior_fixed_until)
    method = "soft" if s.method == "mc" else s.method
    final = _pass(data, state.params, method, False, held_out=fitted)
    elbo = state.elbo if state.iteration else (final.elbo,)
    history = RestartHistory(
        init=s.init,
        elbo=np.array(elbo),
        log_likelihood=np.array(state.log_likelihood + (final.log_likelihood,)),
        gain=np.array((math.nan,) + state.gain),
        seconds=np.array(state.seconds),
        n_iter=state.iteration,
        converged=state.converged,
        final_elbo=final.elbo,
        prior_fixed_until=state.prior_fixed_until,
    )
    return RestartResult(
        state.params,
        history,
        final.positions,
        final.probability,
        state.unidentified,
        state.noise_floored,
    )


def fit(
    X: np.ndarray,
    settings: FitSettings | Sequence[int] | None = None,
    *,
    init_params: Params | dict | None = None,
    memory_limit: int | None = None,
    workers: int | None = None,
    cache_fft: bool | None = None,
    callback: Callable[[Progress], None] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    resume: Checkpoint | None = None,
    **options: object,
) -> FitResult:
    """Fit face, background, noise std and prior to a stack of images by EM.

    ``fit(X, (40, 30), method="hard")`` and ``fit(X, FitSettings((40, 30), method="hard"))``
    are the same fit: the settings are one :class:`FitSettings` value, built from the face
    shape and ``options`` (any of its fields) or given whole (``options`` then change it).

    Parameters
    ----------
    X : array_like of shape (K, H, W)
        The images; any real dtype. Anything that slices like an array is read chunk by chunk
        in every pass and never loaded whole: a memory map, or an
        :class:`~facefinder_cli.images.NpyReader` of a ``.npy`` file (plain reads, so resident
        memory stays flat however large the file).
    settings : FitSettings or (h, w)
        What decides the result (see :class:`FitSettings`), or the face's shape (which may
        also be given as ``face_shape=``).
    init_params : Params or dict, optional
        Starting values for any of ``face``, ``background``, ``noise_std``, ``prior``
        (default prior: uniform); they override ``settings.init``'s.
    memory_limit : int, optional
        Bytes the fit may use beyond the images themselves, for its working memory and the
        cache of ``rfft2(X)`` (default: :func:`default_memory_limit`, 1 GiB or an eighth of
        the machine's memory). The spectra of as many images as the rest of the limit holds
        are kept between iterations; the others are recomputed in every pass (one more FFT
        per image, the same numbers). Memory does not grow with K beyond that and the
        per-image tables (about 40 bytes per image).
    workers : int, optional
        Threads that process chunks in parallel (default: every core this process may use).
        Results are bit-identical for any number of threads: chunks are reduced in order and
        Monte-Carlo draws are made in chunk order.
    cache_fft : bool, optional
        Force the cache of ``rfft2(X)`` on (all images, whatever ``memory_limit``) or off.
    callback : callable, optional
        Called with a :class:`Progress` after every iteration; its ``checkpoint`` resumes the
        fit from there.
    on_chunk : callable, optional
        ``on_chunk(done, K)`` after every chunk of every pass over the images (the first pass
        that reads them, each iteration's, the final E-step's): ``done`` of the ``K`` images
        are through. For progress within long passes; called from this thread.
    resume : Checkpoint, optional
        Carry on an interrupted fit: the same images, settings and ``init_params``, and the
        last checkpoint it reported (with ``settings.seed`` None, the checkpoint's seed). The
        result is the uninterrupted fit's, bit for bit (timings aside). Anything else is
        refused with a :class:`CheckpointError` that says what differs, after the pass that
        reads the images and before any EM work. ``memory_limit``, ``workers``,
        ``cache_fft`` and the callbacks may differ.
    **options
        Fields of :class:`FitSettings`.

    Returns
    -------
    FitResult

    Warns
    -----
    ConvergenceWarning
        If the best restart stopped at ``max_iter`` (``max_iter > 0``) without meeting ``tol``.
    NoiseFloorWarning
        If the noise std of the result is clipped at its floor.
    """
    settings = FitSettings.of(settings, **options)
    if resume is not None and settings.seed is None and isinstance(resume.settings, FitSettings):
        settings = replace(settings, seed=resume.settings.seed)
    _retain_freed_memory()
    data = _Data(
        X,
        settings.face_shape,
        chunk_size=settings.chunk_size,
        cache_fft=cache_fft,
        workers=workers,
        memory_limit=memory_limit,
        dtype=settings.dtype,
        on_chunk=on_chunk,
    )
    given = _given(init_params)
    fixed_start = settings.init in ("zeros", "bright") or all(
        given.get(k) is not None for k in ("face", "background", "noise_std")
    )
    if settings.restarts > 1 and fixed_start and settings.method != "mc":
        warnings.warn(
            f"all {settings.restarts} restarts start from the same parameters (given, or the "
            f"fixed '{settings.init}' start) and end the same; start from 'median', 'random' or "
            "'smooth' for different starts",
            UserWarning,
            stacklevel=2,
        )
    ss = _seed_sequence(settings.seed)
    settings = replace(settings, seed=int(ss.entropy))
    start = _start_digest(given)
    runs: list[RestartResult] = []
    if resume is not None:
        why = _resume_refused(resume, settings, start, data)
        if why is not None:
            raise CheckpointError(why)
        runs = list(resume.finished)
    for r in range(len(runs), settings.restarts):
        t0 = time.perf_counter()
        rng = np.random.default_rng(_seed_child(ss, r))
        if resume is not None and r == resume.restart:
            try:
                _check_params(resume.params, data)  # (not its normalised copy: bit for bit)
            except ValueError as err:
                raise CheckpointError(f"the checkpoint's parameters are damaged: {err}") from None
            try:
                rng.bit_generator.state = resume.rng_state
            except (TypeError, ValueError, KeyError):
                raise CheckpointError(
                    "the checkpoint's random generator state is damaged"
                ) from None
            t0 -= resume.seconds[-1]
            state = replace(resume, rng_state={})
        else:
            state = Checkpoint(
                settings=settings,
                seed_entropy=int(ss.entropy),
                start=start,
                data=data.fingerprint(),
                finished=tuple(runs),
                restart=r,
                iteration=0,
                params=_initialize(data, settings.init, rng, r, given),
                elbo=(),
                log_likelihood=(),
                gain=(),
                seconds=(time.perf_counter() - t0,),
                converged=False,
                prior_free=settings.prior_update == "always",
                prior_fixed_until=0,
                unidentified=np.zeros((data.H, data.W), dtype=bool),
                noise_floored=False,
            )
        runs.append(_run(data, state, rng, t0, callback))
    best = max(range(len(runs)), key=lambda r: (runs[r].history.log_likelihood[-1], -r))
    run = runs[best]
    h = run.history
    if settings.max_iter > 0 and not h.converged and settings.tol > 0:  # (tol <= 0: as asked)
        warnings.warn(
            f"EM did not converge in {settings.max_iter} iterations (last gain {h.gain[-1]:.3g} "
            f"nats per image and pixel, tol {settings.tol:g}); raise max_iter or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    if run.noise_floored:
        warnings.warn(
            f"the noise std reached its floor {data.noise_floor:.3g} ({NOISE_FLOOR:g} x the data's "
            "std): the images may be noise-free copies of one scene",
            NoiseFloorWarning,
            stacklevel=2,
        )
    return FitResult(
        face=run.params.face,
        background=run.params.background,
        noise_std=run.params.noise_std,
        prior=run.params.prior,
        elbo=h.elbo,
        log_likelihood=h.log_likelihood,
        gain=h.gain,
        seconds=h.seconds,
        final_elbo=h.final_elbo,
        n_iter=h.n_iter,
        converged=h.converged,
        positions=run.positions,
        position_probability=run.probability,
        unidentified=run.unidentified,
        noise_floored=run.noise_floored,
        settings=settings,
        seed_entropy=int(ss.entropy),
        best_restart=best,
        restarts=tuple(r.history for r in runs),
        fft_cached=data.n_cached,
    )
