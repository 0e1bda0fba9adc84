"""Where each restart starts: the data-driven ``median`` start and the study's ``zeros``,
``bright``, ``random`` and ``smooth`` starts, given parameters overriding them, and the seed
children that make restart ``r`` reproducible on its own."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from facefinder_cli.engine import _fft as sfft
from facefinder_cli.engine.data import _check_params, _Data
from facefinder_cli.engine.model import INIT_METHODS, WHITE, Params, StartError, uniform_prior

# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


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


def _init_median(data: _Data, prior: np.ndarray) -> Params:
    """The default start, from the data.

    The face moves and the background does not, so the background is the per-pixel median of
    the images and the noise std a robust spread (MAD) of the residuals. The face starts as what
    the first M-step would give if every image's posterior were the prior: the prior-weighted
    average of the mean image's windows, a blur that favours no position. (Later restarts move
    its fit's window or anneal it: see ``loop._start``.)
    """
    background, noise = data.median_background
    mean = data.sum_x / data.K + data.offset
    # Σ_d A(d) mean(d + ·): a valid correlation, computed like the M-step's face sum.
    spectrum = sfft.rfft2(mean) * np.conj(sfft.rfft2(prior, s=mean.shape))
    face = sfft.irfft2(spectrum, s=mean.shape)[: data.h, : data.w]
    return Params(face, background, noise, prior)


def _initialize(data: _Data, method: str, rng: np.random.Generator, given: dict) -> Params:
    """Starting parameters; ``given`` entries override the method's (a :class:`StartError`
    if the start they make cannot be used)."""
    try:
        return _start(data, method, rng, given)
    except ValueError as err:
        if isinstance(err, StartError) or all(v is None for v in given.values()):
            raise
        raise StartError(str(err)) from None


def _start(data: _Data, method: str, rng: np.random.Generator, given: dict) -> Params:
    """:func:`_initialize`'s start, its errors ValueErrors."""
    prior = given.get("prior")
    prior = (
        uniform_prior((data.Dh, data.Dw)) if prior is None else np.asarray(prior, dtype=np.float64)
    )
    if prior.shape != (data.Dh, data.Dw) or (prior < 0).any() or not prior.sum() > 0:
        raise ValueError(
            f"prior must be non-negative of shape {(data.Dh, data.Dw)} with a positive sum"
        )
    prior = prior / prior.sum()
    if _given_whole(given):
        p = Params(given["face"], given["background"], given["noise_std"], prior)
    elif method == "median":
        p = _init_median(data, prior)
    else:
        p = _init_study(data, method, rng, prior)
    p = replace(p, noise_std=max(float(p.noise_std), data.noise_floor))
    p = replace(p, **{k: v for k, v in given.items() if v is not None and k != "prior"})
    return _check_params(p, data)


#: What a start needs besides the prior (which defaults to uniform).
_START_PARTS = ("face", "background", "noise_std")


def _given_whole(given: dict) -> bool:
    """Whether ``given`` (see ``_given``) holds a whole start: face, background and noise."""
    return all(given.get(k) is not None for k in _START_PARTS)


def _given(init_params: Params | dict | None) -> dict:
    if init_params is None:
        return {}
    if isinstance(init_params, Params):
        return {k: getattr(init_params, k) for k in ("face", "background", "noise_std", "prior")}
    unknown = set(init_params) - {"face", "background", "noise_std", "prior"}
    if unknown:
        raise ValueError(f"init_params has unknown keys {sorted(unknown)}")
    return {k: v for k, v in init_params.items() if v is not None}  # (None: not given)


def _seed_sequence(seed: int | np.random.SeedSequence | None) -> np.random.SeedSequence:
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


def _seed_child(ss: np.random.SeedSequence, r: int) -> np.random.SeedSequence:
    """Child ``r`` of ``ss``, as ``ss.spawn`` would make it, without mutating ``ss`` and without
    making the others: any number of restarts costs nothing up front."""
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, r), pool_size=ss.pool_size)
