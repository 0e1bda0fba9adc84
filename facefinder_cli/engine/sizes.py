"""Choosing the face's size from the images: :func:`choose_face_size`.

The criterion is a penalised log-likelihood, BIC's::

    criterion(h, w) = log p(X | θ̂_hw) - n_hw / 2 · log K,
    n_hw = h·w + H·W - max(0, 2h - H)·max(0, 2w - W) + 1

``log p(X | θ̂)`` is the fit's final log-likelihood, a density of the same images whatever the
size, so sizes compare. ``n`` counts the face's pixels, the background's that some position
leaves uncovered (a face more than half the image each way covers the middle in every image,
which no image then shows) and the noise. The prior
over positions is not counted: it has one value per position, (H-h+1)(W-w+1) of them, mostly
more than there are images, and counting them (as BIC would) weighs several times more than
the face and pushes every choice to the largest window (docs/METHODS.md has the measurements
behind this choice, and against a held-out log-likelihood).

Why the likelihood peaks at the face's size: a window smaller than the face leaves face
pixels to the background, which differs in every image where the face moved; a larger one
takes background pixels into the face, which then has to stand for a background that moves
with it (and for faces near the border, where the larger window cannot be placed the same way).
Only where the surroundings look the same in every image (a flat background, faces away from
the border) does a larger window fit as well: then the penalty chooses the smaller, and
:class:`SizeChoice` says the choice was not the data's (``larger_fits_as_well``).

The search costs about 23 short fits (70 passes over the images) and the chosen size's fit.
Short fits (``SHORT_ITER`` passes of plain soft EM from the fit's start, the prior held
uniform) rank the sizes: a golden-section search over the height at a middle width, then over
the width, then a climb (see ``_climb``). All share one read of
the images and their cached spectra (``_Data.resized``). Then the chosen size is fitted in
full.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from facefinder_cli.engine.data import _check_face_shape, _Data
from facefinder_cli.engine.loop import FitResult, _cluster, _fit, _start
from facefinder_cli.engine.passes import _pass
from facefinder_cli.engine.settings import FitSettings
from facefinder_cli.engine.starts import _seed_child, _seed_sequence

__all__ = ["SizeChoice", "SizeTrial", "choose_face_size", "n_params", "size_range"]

#: Passes over the images of the short fits that rank sizes.
SHORT_ITER = 3
#: Nats of criterion (a log Bayes factor of about 20: strong evidence) under which two sizes
#: are too close to call.
CLEAR = math.log(20.0)
#: Smallest side of a face that the default range searches.
SMALLEST_SIDE = 4


@dataclass(frozen=True)
class SizeTrial:
    """One fit of the search: its size, log-likelihood, criterion, parameter count,
    iterations, passes over the images, seconds, and whether it was a full fit."""

    size: tuple[int, int]
    log_likelihood: float
    criterion: float
    n_params: int
    n_iter: int
    passes: int
    seconds: float
    full: bool


@dataclass
class SizeChoice:
    """The outcome of :func:`choose_face_size`.

    Attributes
    ----------
    size : (h, w)
        The chosen size.
    result : FitResult or None
        Its fit with the given settings (on the search's chunks of images: the same as
        ``fit`` with this size and ``chunk_size``); None with ``fit_chosen=False``.
    trials : list of SizeTrial
        Every fit of the search, in order.
    margin : float
        Criterion of the chosen size minus that of the best size more than one pixel away in
        a dimension, by the short fits (inf if none): under ``CLEAR`` the choice is unclear.
    rival : (h, w) or None
        That size.
    at_edge : bool
        Whether the chosen size is on the edge of the range searched, where a larger range
        would have gone on (the best size may lie outside it).
    larger_fits_as_well : (h, w) or None
        A larger size whose short fit's log-likelihood was within ``CLEAR`` of the chosen
        size's or above it: the images do not tell where the face ends (the surroundings
        look the same in every image), and the penalty chose the smaller.
    lo, hi : (h, w)
        The range searched.
    chunk_size : int
        Images per chunk of every fit of the search: ``fit(X, result.settings,
        chunk_size=chunk_size)`` repeats the chosen fit bit for bit.
    seconds : float
    passes : int
        Passes over the images of all the search's fits.
    """

    size: tuple[int, int]
    result: FitResult | None
    trials: list[SizeTrial]
    margin: float
    rival: tuple[int, int] | None
    at_edge: bool
    larger_fits_as_well: tuple[int, int] | None
    lo: tuple[int, int]
    hi: tuple[int, int]
    chunk_size: int
    seconds: float
    passes: int

    @property
    def clear(self) -> bool:
        """Whether the images chose the size: no rival within ``CLEAR``, no larger size that
        fits as well, and not on the edge of the range."""
        return self.margin >= CLEAR and self.larger_fits_as_well is None and not self.at_edge


def size_range(image_shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The default range of sizes for images of ``image_shape``: from ``SMALLEST_SIDE`` (or
    the image's side, if smaller) to one pixel less than the image, so that a face has at
    least two positions in each dimension."""
    H, W = image_shape
    lo = (min(SMALLEST_SIDE, max(1, H - 1)), min(SMALLEST_SIDE, max(1, W - 1)))
    return lo, (max(lo[0], H - 1), max(lo[1], W - 1))


def choose_face_size(
    X,
    lo: tuple[int, int] | None = None,
    hi: tuple[int, int] | None = None,
    settings: FitSettings | None = None,
    *,
    fit_chosen: bool = True,
    memory_limit: int | None = None,
    workers: int | None = None,
    on_trial: Callable[[SizeTrial], None] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    client: Any = None,
    **options: object,
) -> SizeChoice:
    """Fit the face's size: the size between ``lo`` and ``hi`` (inclusive, each ``(h, w)``;
    default :func:`size_range`) with the best criterion (see the module's docstring).

    Parameters
    ----------
    X : array_like of shape (K, H, W)
        As for :func:`fit`.
    lo, hi : (h, w), optional
    settings : FitSettings, optional
        The settings of the chosen size's fit (``face_shape`` is replaced); the short fits
        that rank the sizes take its ``init``, ``seed``, ``dtype`` and ``chunk_size``.
        ``options`` are fields of it.
    fit_chosen : bool
        Fit the chosen size with ``settings`` (``SizeChoice.result``); else the caller does.
    memory_limit, workers, on_chunk
        As for :func:`fit`.
    on_trial : callable, optional
        Called with every :class:`SizeTrial` as it is done.
    client : distributed.Client, optional
        Run every pass on the workers of this Dask cluster, as :func:`fit` does (the images
        read once by the workers for all the sizes; the same result, bit for bit).

    Returns
    -------
    SizeChoice
    """
    t0 = time.perf_counter()
    X = X if hasattr(X, "ndim") and hasattr(X, "dtype") else np.asarray(X)
    if np.ndim(X) != 3:
        raise ValueError(f"X must have shape (n_images, height, width), got {np.shape(X)}")
    K, H, W = X.shape
    d_lo, d_hi = size_range((H, W))
    lo = _check_face_shape(lo if lo is not None else d_lo, (H, W))
    hi = _check_face_shape(hi if hi is not None else d_hi, (H, W))
    if lo[0] > hi[0] or lo[1] > hi[1]:
        raise ValueError(f"the smallest size {lo} is larger than the largest {hi}")
    settings = FitSettings.of(settings if settings is not None else lo, **options)
    kind, where = (_Data, ()) if client is None else (_cluster()._ClusterData, (client,))
    base = kind(
        X,
        lo,  # the smallest face has the most positions: chunks sized for it suit every size
        *where,
        chunk_size=settings.chunk_size,
        workers=workers,
        memory_limit=memory_limit,
        dtype=settings.dtype,
        on_chunk=on_chunk,
    )
    try:
        return _search(base, settings, lo, hi, fit_chosen, on_trial, t0)
    finally:
        if client is not None:
            base.close()


def _search(base, settings, lo, hi, fit_chosen, on_trial, t0) -> SizeChoice:
    """:func:`choose_face_size` once the images are read."""
    K, H, W = base.K, base.H, base.W
    if settings.init == "median":  # computed once here, not by every size's copy of the data
        _ = base.median_background
    seeds = _seed_sequence(settings.seed)
    trials: list[SizeTrial] = []
    short: dict[tuple[int, int], SizeTrial] = {}

    def said(trial: SizeTrial) -> SizeTrial:
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        return trial

    def score(h: int, w: int) -> float:
        if (h, w) not in short:
            short[h, w] = said(_short_fit(base, (h, w), settings.init, seeds))
        return short[h, w].criterion

    # The height at a middle width, the width at that height, then a climb from the best.
    w = _middle(lo[1], hi[1])
    h = _golden(lambda v: score(v, w), lo[0], hi[0])
    w = _golden(lambda v: score(h, v), lo[1], hi[1])
    chosen = _climb(score, max(short, key=lambda s: _rank(short[s])), lo, hi)
    # How clear: the best size more than a pixel away, and larger windows that fit as well.
    far = [s for s in short if max(abs(s[0] - chosen[0]), abs(s[1] - chosen[1])) > 1]
    rival = max(far, key=lambda s: short[s].criterion) if far else None
    margin = short[chosen].criterion - short[rival].criterion if rival else math.inf
    larger_fits = None
    for size in ((chosen[0] + 2, chosen[1]), (chosen[0], chosen[1] + 2)):
        if size[0] <= hi[0] and size[1] <= hi[1]:
            score(*size)
            if short[size].log_likelihood >= short[chosen].log_likelihood - CLEAR:
                larger_fits = larger_fits or size
    result = None
    if fit_chosen:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = _fit(base.resized(chosen), replace(settings, face_shape=chosen), None, None,
                          None)  # fmt: skip
        ll = float(result.log_likelihood[-1])
        n = n_params(chosen, (H, W))
        passes = int(sum(int(r.passes[-1]) + 1 for r in result.restarts))  # (+ the final pass)
        said(SizeTrial(chosen, ll, ll - 0.5 * n * math.log(K), n, result.n_iter, passes,
                       time.perf_counter() - t, True))  # fmt: skip
    edges = [(chosen[i] == lo[i] and lo[i] > 1) or (chosen[i] == hi[i] and hi[i] < (H, W)[i])
             for i in (0, 1)]  # fmt: skip
    return SizeChoice(
        size=chosen,
        result=result,
        trials=trials,
        margin=margin,
        rival=rival,
        at_edge=any(edges),
        larger_fits_as_well=larger_fits,
        lo=lo,
        hi=hi,
        chunk_size=base.chunk,
        seconds=time.perf_counter() - t0,
        passes=sum(t.passes for t in trials),
    )


def n_params(size: tuple[int, int], image: tuple[int, int]) -> int:
    """The criterion's count: face pixels, the background pixels that some position leaves
    uncovered (those every window covers, ``(2h - H)(2w - W)`` when the face is more than half
    the image each way, are not parameters: no image shows them), the noise."""
    (h, w), (H, W) = size, image
    return h * w + H * W - max(0, 2 * h - H) * max(0, 2 * w - W) + 1


def _short_fit(
    base: _Data, size: tuple[int, int], init: str, seeds: np.random.SeedSequence
) -> SizeTrial:
    """A short fit that ranks ``size``: ``SHORT_ITER`` passes of plain soft EM from the fit's
    start (restart 0's, the same draws for every size), the prior held uniform (learning it
    from a few passes would favour sizes by how fast it sharpens). Its log-likelihood is that
    of the last pass's E-step: ``SHORT_ITER - 1`` M-steps from the start."""
    t = time.perf_counter()
    data = base.resized(size)
    params, _ = _start(data, init, np.random.default_rng(_seed_child(seeds, 0)), 0, {})
    ll = math.nan
    for _ in range(SHORT_ITER):
        stats = _pass(data, params, "soft", True, learn_prior=False)
        ll = float(stats.log_likelihood)
        params, _ = stats.m_step(params, update_prior=False)
    n = n_params(size, (data.H, data.W))
    return SizeTrial(size, ll, ll - 0.5 * n * math.log(data.K), n, SHORT_ITER - 1, SHORT_ITER,
                     time.perf_counter() - t, False)  # fmt: skip


def _rank(trial: SizeTrial) -> tuple[float, int]:
    """Sizes by criterion; ties to the smaller face."""
    return trial.criterion, -trial.size[0] * trial.size[1]


def _climb(
    score: Callable[[int, int], float],
    start: tuple[int, int],
    lo: tuple[int, int],
    hi: tuple[int, int],
) -> tuple[int, int]:
    """From ``start``, the best size by ``score`` (cached by the caller) that a climb reaches:
    the sizes one and two pixels taller, shorter, wider and narrower than the best so far,
    until none is better (two: a short fit can land in a worse optimum at one size, a dip a
    climb by single pixels would stop at), then the four diagonal ones too (a ridge along
    which height and width trade off has its peak there)."""
    seen: dict[tuple[int, int], float] = {start: score(*start)}

    def best() -> tuple[int, int]:
        return max(seen, key=lambda s: (seen[s], -s[0] * s[1]))

    def around(at: tuple[int, int], steps) -> None:
        for a, b in steps:
            size = (at[0] + a, at[1] + b)
            if lo[0] <= size[0] <= hi[0] and lo[1] <= size[1] <= hi[1] and size not in seen:
                seen[size] = score(*size)

    chosen = start
    while True:
        around(chosen, [(a, 0) for a in (-2, -1, 1, 2)] + [(0, b) for b in (-2, -1, 1, 2)])
        if best() == chosen:
            around(chosen, ((-1, -1), (-1, 1), (1, -1), (1, 1)))
            if best() == chosen:
                return chosen
        chosen = best()


def _middle(a: int, b: int) -> int:
    """The geometric middle of ``a`` and ``b``: sizes are searched on a log scale."""
    return int(round(math.sqrt(a * b)))


_INVPHI = (math.sqrt(5.0) - 1.0) / 2.0


def _golden(f: Callable[[int], float], a: int, b: int) -> int:
    """The integer in ``[a, b]`` where ``f`` is largest, for ``f`` unimodal: a golden-section
    search (``f`` is cached by the caller, so points met again cost nothing)."""
    while b - a > 3:
        m1 = a + int(round((1.0 - _INVPHI) * (b - a)))
        m2 = a + int(round(_INVPHI * (b - a)))
        m2 = max(m2, m1 + 1)
        if f(m1) < f(m2):
            a = m1 + 1
        else:
            b = m2 - 1
    return max(range(a, b + 1), key=lambda v: (f(v), -v))
