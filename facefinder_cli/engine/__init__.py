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

Modules, from the bottom up (each imports only those above it):

* :mod:`.model`: parameters, constants, errors, box sums;
* :mod:`.settings`: :class:`FitSettings`;
* :mod:`.machine`: cores, memory, chunk sizes, the allocator setting;
* :mod:`.data`: the images as streamed, the FFT cache, the threads;
* :mod:`.estep` and :mod:`.mstep`: the two steps, as pure functions tested against brute force;
* :mod:`.starts`: initialisations and seeds;
* :mod:`.passes`: one streaming pass doing both steps; annealing;
* :mod:`.sampler`: the sampled start of restart 6 (a Gibbs sampler of the positions);
* :mod:`.accelerate`: accelerated soft EM (SQUAREM cycles) and its distance estimate;
* :mod:`.loop`: :func:`fit`, its checkpoints and results;
* :mod:`.sizes`: :func:`choose_face_size`, fits of several sizes and a criterion;
* :mod:`.mixture`: :func:`fit_mixture`, several faces on one background.

This module re-exports the public API; ``engine.fit`` and ``engine.Params`` are the names to use.
"""

from __future__ import annotations

from facefinder_cli.engine.cluster import ClusterError
from facefinder_cli.engine.data import LARGEST_VALUE, SMALLEST_SCALE
from facefinder_cli.engine.estep import (
    PRIOR_PSEUDO_COUNT,
    Detection,
    detect,
    locate,
    map_positions,
    position_log_likelihood,
    posterior,
    predictive_prior,
    shrinkage_gains,
    shrunk_face,
)
from facefinder_cli.engine.loop import (
    Checkpoint,
    FitResult,
    Progress,
    RestartHistory,
    RestartResult,
    fit,
    initialize,
)
from facefinder_cli.engine.machine import (
    CHUNK_BYTES,
    DEFAULT_MEMORY_LIMIT,
    available_cores,
    default_memory_limit,
)
from facefinder_cli.engine.mixture import (
    FacesChoice,
    MixtureCheckpoint,
    MixtureDetection,
    MixtureParams,
    MixtureRestart,
    MixtureResult,
    MixtureStart,
    choose_faces,
    detect_mixture,
    fit_mixture,
)
from facefinder_cli.engine.model import (
    ACCELERATIONS,
    CHUNK_VALUES,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_TOL,
    DTYPES,
    INIT_METHODS,
    MC_GROWTH,
    MC_MAX_SAMPLES,
    MC_SAMPLES,
    MC_WINDOW,
    METHODS,
    NOISE_FLOOR,
    PRIOR_UPDATES,
    SLICE_THREADS,
    WHITE,
    CheckpointError,
    ConvergenceWarning,
    NoiseFloorWarning,
    NonFiniteError,
    Params,
    StartError,
    ValueRangeError,
    uniform_prior,
)
from facefinder_cli.engine.mstep import elbo, m_step
from facefinder_cli.engine.passes import ANNEAL_BETA, ANNEAL_PASSES
from facefinder_cli.engine.sampler import SAMPLER_SWEEPS
from facefinder_cli.engine.settings import FitSettings
from facefinder_cli.engine.sizes import SizeChoice, SizeTrial, choose_face_size, size_range

__all__ = [
    "ACCELERATIONS",
    "ANNEAL_BETA",
    "ANNEAL_PASSES",
    "CHUNK_BYTES",
    "CHUNK_VALUES",
    "Checkpoint",
    "ClusterError",
    "CheckpointError",
    "ConvergenceWarning",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_TOL",
    "DTYPES",
    "FacesChoice",
    "Detection",
    "FitResult",
    "FitSettings",
    "INIT_METHODS",
    "LARGEST_VALUE",
    "MC_GROWTH",
    "MC_MAX_SAMPLES",
    "MC_SAMPLES",
    "MC_WINDOW",
    "METHODS",
    "MixtureCheckpoint",
    "MixtureDetection",
    "MixtureParams",
    "MixtureRestart",
    "MixtureResult",
    "MixtureStart",
    "NOISE_FLOOR",
    "NoiseFloorWarning",
    "NonFiniteError",
    "PRIOR_PSEUDO_COUNT",
    "PRIOR_UPDATES",
    "Params",
    "Progress",
    "RestartHistory",
    "RestartResult",
    "SAMPLER_SWEEPS",
    "SLICE_THREADS",
    "SizeChoice",
    "SizeTrial",
    "SMALLEST_SCALE",
    "StartError",
    "ValueRangeError",
    "WHITE",
    "available_cores",
    "choose_face_size",
    "choose_faces",
    "default_memory_limit",
    "detect",
    "detect_mixture",
    "elbo",
    "fit",
    "fit_mixture",
    "initialize",
    "locate",
    "m_step",
    "map_positions",
    "position_log_likelihood",
    "posterior",
    "predictive_prior",
    "shrinkage_gains",
    "shrunk_face",
    "size_range",
    "uniform_prior",
]
