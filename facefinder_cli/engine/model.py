"""The model's vocabulary: its parameters (:class:`Params`), the constants and choices of a
fit, the errors and warnings the engine raises, and the box sums (banded-matrix products or
summed-area tables) that the E- and M-steps share."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from facefinder_cli.engine import blas

Method = Literal["soft", "hard", "mc"]
METHODS: tuple[str, ...] = ("soft", "hard", "mc")
PriorUpdate = Literal["late", "always", "never"]
PRIOR_UPDATES: tuple[str, ...] = ("late", "always", "never")
INIT_METHODS: tuple[str, ...] = ("median", "zeros", "bright", "random", "smooth")
Accelerate = Literal["auto", "squarem", "none"]
ACCELERATIONS: tuple[str, ...] = ("auto", "squarem", "none")

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
#: Images per chunk of the streaming pass for images of 64x64 (64 was faster than 32 and 128:
#: ``benchmarks/bench_scale.py --sections chunks``, docs/PERFORMANCE.md). By default a chunk
#: holds as many pixels for any size (``CHUNK_VALUES``): smaller images come in more per
#: chunk, since a chunk's fixed costs (dozens of NumPy calls) would otherwise dominate them
#: (20x30 images: 9.4 ms per pass with 256 per chunk against 12.7 ms with 64, K = 1500).
DEFAULT_CHUNK_SIZE = 64
CHUNK_VALUES = DEFAULT_CHUNK_SIZE * 64 * 64
#: Posterior ratios to the most probable position below ``exp(cut)`` are set to exactly zero, and
#: their exponentials, the E-step's costliest values, are not taken (``estep._exp_kept``).
#: Where the posteriors' average becomes the prior, the cut only keeps subnormal numbers out:
#: a prior of 1e-157 is a penalty that the data can still overcome, one of zero is not (EM
#: with the study's prior learnt from the start ended 407 nats lower with a cut at exp(-60)).
_LOG_TINY = -680.0
_LOG_TINY_32 = -80.0  # the same for float32 (smallest normal: exp(-87.3))
#: Elsewhere (the prior held, hard and Monte-Carlo EM, the log-likelihood, positions) the cut
#: is 8.8e-27: a posterior's sum holds 1 (its most probable position), so even 10^10 such
#: ratios change no sum in float64 (resolution 1.1e-16), and none of them would be drawn.
_LOG_CUT = -60.0


def _log_cut(dtype: np.dtype, learn_prior: bool) -> float:
    """The cut (above) for posteriors in ``dtype`` whose average is or is not the new prior."""
    if not learn_prior:
        return _LOG_CUT
    return _LOG_TINY if np.dtype(dtype) == np.float64 else _LOG_TINY_32


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


class StartError(ValueError):
    """Starting parameters given to a fit (``init_params``) that it cannot start from."""


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


def uniform_prior(shape: tuple[int, int]) -> np.ndarray:
    """The uniform prior over ``shape = (H-h+1, W-w+1)`` positions."""
    return np.full(shape, 1.0 / (shape[0] * shape[1]))


# --------------------------------------------------------------------------------------------
# Box sums (banded matrix products, or summed-area tables)
# --------------------------------------------------------------------------------------------

#: Box sums are products with banded matrices (:func:`_band`) when these take at most this many
#: multiply-adds per pixel, else summed-area tables. Measured per image on
#: one thread (products / tables): 20x30 images with a 16x16 face (18 per pixel) 1.1 / 3.6 us
#: for the valid sums and 1.6 / 9.6 for the full ones; 72x96 with 40x30 (90) 35 / 52 and
#: 45 / 108; 80x80 with 32x32 (79) 45 / 48 and 42 / 65; 100x100 with 32x32 (117) 79 / 78;
#: 160x160 with 40x40 (213) 310 / 212; 256x256 with 64x64 (339) 1340 / 898.
PRODUCT_MACS_PER_PIXEL = 100


@functools.lru_cache(maxsize=32)
def _band(n: int, width: int) -> np.ndarray:
    """The ``(n - width + 1, n)`` matrix whose row ``d`` is 1 at columns ``d .. d + width - 1``
    and 0 elsewhere (read-only; cached, as every pass asks for the same few)."""
    offset = np.arange(n)[None, :] - np.arange(n - width + 1)[:, None]
    band = ((offset >= 0) & (offset < width)).astype(np.float64)
    band.flags.writeable = False
    return band


def _by_products(H: int, W: int, Dh: int, Dw: int) -> bool:
    """Whether box sums between ``H x W`` pixels and ``Dh x Dw`` positions are cheaper as
    products with banded matrices (see ``PRODUCT_MACS_PER_PIXEL``): ``Dh·H·W + Dh·W·Dw``
    multiply-adds for the valid sums, ``H·Dh·Dw + H·Dw·W`` for the full ones; and only while
    BLAS runs on one thread (:mod:`~facefinder_cli.engine.blas`: on more, the products' last
    bits could depend on the machine's cores)."""
    macs = max(Dh * W * (H + Dw), H * Dw * (Dh + W))
    return macs <= PRODUCT_MACS_PER_PIXEL * H * W and blas.on_one_thread()


#: Slices of at least this many numbers are summed whole by :func:`_cumsum`.
_WHOLE_SLICES = 512
#: Up to this many threads, summed-area tables are summed by whole slices (see ``_cumsum``).
SLICE_THREADS = 3


def _cumsum(
    y: np.ndarray,
    axis: int,
    dtype: type = np.float64,
    out: np.ndarray | None = None,
    by_slices: bool = True,
) -> np.ndarray:
    """``np.cumsum(y, axis, dtype=dtype, out=out)``, bit for bit, faster on stacks of images.

    NumPy's cumsum adds one number at a time; here (``by_slices``) each slice across ``axis``
    is added to the previous sums in one vectorised call, when slices are large enough to pay
    for the Python loop: 3.8x faster along rows, 1.6x along columns, for 64 images of 80x80.
    The additions are the same, in the same order. The loop holds the GIL between its calls,
    so it does not gain from more threads, where NumPy's cumsum does: measured on 16 chunks
    of 40 images of 80x80, 12.0 against 41.3 ms on one thread, 11.3 against 19.7 on two. Fits
    on more than ``SLICE_THREADS`` threads use NumPy's."""
    n = y.shape[axis]
    if not by_slices or n < 2 or y.size < _WHOLE_SLICES * n:
        return np.cumsum(y, axis=axis, dtype=dtype, out=out)
    if out is None:
        out = np.empty(y.shape, dtype)
    src, dst = np.moveaxis(y, axis, 0), np.moveaxis(out, axis, 0)
    dst[0] = src[0]
    for i in range(1, n):
        np.add(dst[i - 1], src[i], out=dst[i])
    return out


def _box_valid(
    y: np.ndarray, h: int, w: int, dtype: np.dtype = np.float64, by_slices: bool = True
) -> np.ndarray:
    """Sums of ``y`` over every ``h x w`` window: ``(..., H, W) -> (..., H-h+1, W-w+1)``.
    The summed-area tables are float64 whatever ``y``'s dtype; the result is ``dtype``.
    ``by_slices``: see :func:`_cumsum`.

    Small windows are summed as two products with banded 0/1 matrices, ``R y Cᵀ``
    (``R = _band(H, h)``), when that is cheaper (:func:`_by_products`): BLAS multiplies
    faster than the tables' Python loop adds (which holds the GIL), and each window is summed
    directly rather than as a difference of running sums. Either way each image's sums are its
    own, the same whatever the chunks or threads. Products are for stacks (``y.ndim > 2``,
    the chunks of a pass); the single arrays (``B²``, the summed posteriors, once per
    iteration, outside the passes) are summed by tables."""
    H, W = y.shape[-2:]
    if y.ndim > 2 and _by_products(H, W, H - h + 1, W - w + 1):
        rows = np.matmul(_band(H, h), y)  # (..., Dh, W)
        return np.matmul(rows, _band(W, w).T).astype(dtype, copy=False)
    c = _cumsum(y, axis=-2, by_slices=by_slices)
    rows = np.empty(c.shape[:-2] + (c.shape[-2] - h + 1, c.shape[-1]))
    rows[..., 0, :] = c[..., h - 1, :]
    np.subtract(c[..., h:, :], c[..., :-h, :], out=rows[..., 1:, :])
    c = _cumsum(rows, axis=-1, by_slices=by_slices)
    out = np.empty(c.shape[:-1] + (c.shape[-1] - w + 1,), dtype=dtype)
    out[..., 0] = c[..., w - 1]
    np.subtract(c[..., w:], c[..., :-w], out=out[..., 1:])
    return out


def _box_full(q: np.ndarray, h: int, w: int, by_slices: bool = True) -> np.ndarray:
    """Full box filter: ``out[i, j] = Σ q[d]`` over the positions ``d`` whose window covers
    ``(i, j)``: ``(..., Dh, Dw) -> (..., Dh+h-1, Dw+w-1)``. ``by_slices``: see
    :func:`_cumsum`. Small windows: ``Rᵀ q C``, as in :func:`_box_valid`."""
    Dh, Dw = q.shape[-2:]
    if q.ndim > 2 and _by_products(Dh + h - 1, Dw + w - 1, Dh, Dw):
        rows = np.matmul(_band(Dh + h - 1, h).T, q)  # (..., H, Dw)
        return np.matmul(rows, _band(Dw + w - 1, w))
    return _full_sum(_full_sum(q, h, -2, by_slices), w, -1, by_slices)


def _full_sum(q: np.ndarray, n: int, axis: int, by_slices: bool = True) -> np.ndarray:
    """Along ``axis`` (length ``D``): ``out[i] = Σ q[max(0, i-n+1) : i+1]``, ``i < D + n - 1``.
    (Computed in place along ``axis``, which keeps the arrays' layout: summing along rows in
    a stack of images is the fast direction of :func:`_cumsum`.)"""
    axis %= q.ndim
    D = q.shape[axis]

    def along(s: slice) -> tuple:
        return (slice(None),) * axis + (s,)

    shape = q.shape[:axis] + (D + 2 * n - 1,) + q.shape[axis + 1 :]
    c = np.zeros(shape)  # c[n - 1 + m] = Σ q[:m] along axis, m = 0 .. D + n - 1
    _cumsum(q, axis=axis, out=c[along(slice(n, n + D))], by_slices=by_slices)
    c[along(slice(n + D, None))] = c[along(slice(n + D - 1, n + D))]
    return c[along(slice(n, None))] - c[along(slice(None, D + n - 1))]


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x * log(y)`` with ``0 * log(0) = 0``."""
    out = np.zeros(np.broadcast(x, y).shape)
    np.multiply(x, np.log(y, out=np.full(y.shape, -np.inf), where=y > 0), out=out, where=x != 0)
    return out


DTYPES: tuple[str, ...] = ("float64", "float32")


def _check_dtype(dtype: np.dtype | type | str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt
