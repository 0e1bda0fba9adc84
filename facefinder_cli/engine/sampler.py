"""A start found by sampling the faces' positions: a Gibbs sampler over the positions of all
images, annealed, whose best face and background then start EM (``loop._start``).

EM moves the face and the background together, in small steps, and both drift to the nearest
optimum. Where the images are few for the noise, the background is poorly determined (the face
covers much of every image) and a wrong background is what holds EM: measured on the data sets
of ``benchmarks/bench_convergence.py`` that no restart of EM's kinds reached, a sampler with the
background of EM from the truth came from random positions to within a few 1e-5 nats per
image and pixel of the truth's optimum (or above it), and with the default fit's background it
left even the true positions (docs/INITIALISATION.md). The sampler
therefore redraws each image's position given the face *and* the background that the other
images' current positions make (the motif sampler of Lawrence et al., Science 1993, which
draws each sequence's site given the other sequences' counts; here the other images' face
and background are plugged in as estimates, not integrated out): a jump of any size for one
image at a time, where EM moves all of them a little.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from facefinder_cli.engine.blas import one_blas_thread
from facefinder_cli.engine.data import _Data
from facefinder_cli.engine.estep import _Posterior, _Scorer
from facefinder_cli.engine.model import Params, _box_full
from facefinder_cli.engine.mstep import _known_mean, _position_counts, _position_sums
from facefinder_cli.engine.passes import _draw

#: Sweeps of the sampler (each redraws every image's position once: one pass over the images).
SAMPLER_SWEEPS = 300
#: Its first temperature: the log-likelihoods are divided by a temperature falling from this
#: to 1 in geometric steps (broad draws first, then the posterior's own).
SAMPLER_TEMPERATURE = 3.0
#: Blocks of images a sweep redraws one after another (at most; fewer when there are fewer
#: images): each block is drawn given the others' face and background (leaving the block
#: out), so a block must be a small part of the images, and each costs a scorer of its own.
SAMPLER_BLOCKS = 25


class _Sums:
    """The sums behind a face and a background at hard positions, for all images or a block:
    ``n`` images, the sum of their crops, ``uncovered = Σ_k (1 - cover_k) X_k`` (each image's
    pixels outside its window) and the count of each position (as hard EM's M-step has them)."""

    def __init__(self, data: _Data, x: np.ndarray, positions: np.ndarray) -> None:
        self.n = len(x)
        self.face, cover_x, self.counts = _position_sums(data, x, positions[:, None, :])
        self.uncovered = x.sum(axis=0, dtype=np.float64) - cover_x

    def __iadd__(self, other: _Sums) -> _Sums:
        return self._add(other, 1.0)

    def __isub__(self, other: _Sums) -> _Sums:
        return self._add(other, -1.0)

    def _add(self, other: _Sums, sign: float) -> _Sums:
        self.n += int(sign) * other.n
        self.face += sign * other.face
        self.uncovered += sign * other.uncovered
        self.counts += sign * other.counts
        return self


def _without(data: _Data, total: _Sums, fallback: np.ndarray, block: _Sums | None = None):
    """The face and background (shifted) that the images outside ``block`` (None: no image)
    make at their positions: the crops' mean, and each pixel's mean over the images that do
    not cover it (``fallback`` where too few leave it uncovered), as the M-step makes them
    (``mstep._background_update``)."""
    n, face, uncovered, counts = total.n, total.face, total.uncovered, total.counts
    if block is not None:
        n, face = n - block.n, face - block.face
        uncovered, counts = uncovered - block.uncovered, counts - block.counts
    mean, known = _known_mean(uncovered, n - _box_full(counts, data.h, data.w), n)
    return face / n, np.where(known, mean, fallback)


def _sampled(
    data: _Data,
    p: Params,
    rng: np.random.Generator,
    sweeps: int | None = None,
    temperature: float = SAMPLER_TEMPERATURE,
    report: Callable[[int, int], None] | None = None,
) -> tuple[Params, int]:
    """A start from ``sweeps`` (default ``SAMPLER_SWEEPS``) sweeps of the annealed Gibbs
    sampler (see the module's docstring and :func:`_sample_positions`): the face and
    background at the best positions it met, with ``p``'s noise std and prior (``p``'s
    background where the images leave a pixel covered); and the passes over the images it
    made, one a sweep. ``report(done, sweeps)`` before the first sweep and after each."""
    sweeps = SAMPLER_SWEEPS if sweeps is None else sweeps
    _, total = _sample_positions(data, p, rng, sweeps, temperature, report)
    face, background = _without(data, total, p.background - data.offset)
    start = Params(face + data.offset, background + data.offset, p.noise_std, p.prior)
    return start, sweeps


def _sample_positions(
    data: _Data,
    p: Params,
    rng: np.random.Generator,
    sweeps: int,
    temperature: float,
    report: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, _Sums]:
    """The best positions of ``sweeps`` sweeps of the sampler, shape (K, 2), and the sums at
    them: those of the sweep whose face and background leave the smallest sum of squared
    residuals (:func:`_sse`; as motif samplers keep the best alignment they met, for the last
    one is only a draw: measured, EM from the best reached EM-from-the-truth's optimum in 5
    of 28 runs on seven hard data sets, from the last in 1).

    It starts from positions drawn from ``p.prior``. Each sweep redraws blocks of
    ``ceil(K / SAMPLER_BLOCKS)`` images in a random order, each block
    from its posterior given the face and background that the other images make at their
    current positions (:func:`_without`; ``p``'s background where they leave a pixel
    covered), ``p``'s noise std and prior, tempered by the sweep's temperature (falling from
    ``temperature`` to 1 in geometric steps): ``q ∝ p(X_k, d | θ_others)^(1/T)``. A block is
    read in chunks of the data's size, so memory stays bounded whatever K. Sequential, and
    deterministic for ``rng``: the same on any number of threads. ``report(done, sweeps)``
    before the first sweep and after each."""
    with one_blas_thread():  # as in a pass: box sums by products, the same bits on any machine
        return _sample(data, p, rng, sweeps, temperature, report)


def _sample(data: _Data, p: Params, rng, sweeps: int, temperature: float, report=None):
    K, D = data.K, data.Dh * data.Dw
    size = -(-K // SAMPLER_BLOCKS)  # (ceil: at most SAMPLER_BLOCKS scorers a sweep)
    blocks = [(a, min(a + size, K)) for a in range(0, K, size)]
    prior = p.prior.ravel()
    flat = rng.choice(D, size=K, p=prior / prior.sum())
    positions = np.column_stack(np.unravel_index(flat, (data.Dh, data.Dw)))
    fallback = p.background - data.offset

    def chunks(a: int, b: int) -> list[tuple[int, int]]:
        return [(c, min(c + data.chunk, b)) for c in range(a, b, data.chunk)]

    def block_sums(a: int, b: int) -> _Sums:
        read = data.local_chunk_images
        parts = [_Sums(data, read(c, e), positions[c:e]) for c, e in chunks(a, b)]
        for part in parts[1:]:
            parts[0] += part
        return parts[0]

    # Each block's sums, but its position counts (made again from its positions when needed):
    # two arrays of the images' size per block, whatever K.
    sums = [block_sums(a, b) for a, b in blocks]
    for part in sums:
        part.counts = None
    total = block_sums(0, K)
    best = (np.inf, positions.copy(), copy.deepcopy(total))
    for sweep, t in enumerate(np.geomspace(temperature, 1.0, sweeps)):
        if report is not None:
            report(sweep, sweeps)
        done = 0
        for i in rng.permutation(len(blocks)):
            a, b = blocks[i]
            sums[i].counts = _position_counts(data, positions[a:b])
            face, background = _without(data, total, fallback, sums[i])
            others = Params(face + data.offset, background + data.offset, p.noise_std, p.prior)
            scorer = _Scorer(others, data)
            parts = []
            for c, e in chunks(a, b):
                x, xf = data.local_chunk_data(c, e)
                lp, _ = scorer.log_joint(x, xf, data.sq_x[c:e])
                lp *= lp.dtype.type(1.0 / t)
                q = _Posterior.from_log_joint(lp, learn_prior=False).q
                drawn = _draw(q, rng.random((e - c, 1)))[:, 0]
                positions[c:e] = np.column_stack(np.unravel_index(drawn, (data.Dh, data.Dw)))
                parts.append(_Sums(data, x, positions[c:e]))
            for part in parts[1:]:
                parts[0] += part
            total -= sums[i]
            total += parts[0]
            sums[i] = parts[0]
            sums[i].counts = None
            done += b - a
            data.report(done)
        sse = _sse(data, total)
        if sse < best[0]:
            best = (sse, positions.copy(), copy.deepcopy(total))
    if report is not None:
        report(sweeps, sweeps)
    return best[1], best[2]


def _sse(data: _Data, total: _Sums) -> float:
    """The images' sum of squared residuals at the positions behind ``total``, with the face and
    background those positions make (hard EM's, as ``mstep._Stats.m_step`` computes it)."""
    den = total.n - _box_full(total.counts, data.h, data.w)
    mean, _ = _known_mean(total.uncovered, den, total.n)
    # Σ (X - B)² over the uncovered pixels is Σ X² there less mean · uncovered at each pixel,
    # and Σ_k ||crop_k - F||² is Σ ||crop_k||² less n ||F||² (as ``_Stats.m_step`` has them)
    background = float(np.sum(mean * total.uncovered))
    return data.total_sq - float(np.sum(total.face**2)) / total.n - background
