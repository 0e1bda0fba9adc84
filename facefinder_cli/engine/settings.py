"""A fit's settings: :class:`FitSettings`, one frozen value holding everything that decides
what :func:`~facefinder_cli.engine.fit` returns, validated once, stored in results and
checkpoints (``to_dict``/``from_dict``) and compared on resume."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from facefinder_cli.engine.model import (
    ACCELERATIONS,
    DEFAULT_TOL,
    INIT_METHODS,
    MC_GROWTH,
    MC_MAX_SAMPLES,
    MC_SAMPLES,
    METHODS,
    PRIOR_UPDATES,
    Accelerate,
    Method,
    PriorUpdate,
    _check_dtype,
)

#: The most restarts a fit takes: each is a whole fit, and a thousand are days of work for
#: a large one; a mistyped count would otherwise run on without a word.
MAX_RESTARTS = 1000
#: ``restarts="auto"`` runs one restart where the first one's positions are sure, their mean
#: probability (held out, as ``positions.csv`` reports them) at least this, and
#: ``AUTO_RESTARTS`` otherwise (docs/INITIALISATION.md).
SURE_PROBABILITY = 0.99
#: Restarts in all that ``restarts="auto"`` runs where the first one's positions are not sure.
AUTO_RESTARTS = 3


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
    restarts : int or "auto"
        Number of restarts; the one with the highest final ``log p(X | θ)`` is returned.
        ``"auto"`` (default): one where its positions are sure; where their mean probability
        (held out, as ``positions.csv`` reports them) is below ``SURE_PROBABILITY`` (0.99),
        ``AUTO_RESTARTS`` (3) in all, as the images are then few for the noise and EM's
        optima many; one for a start that every restart would repeat (``zeros``,
        ``bright`` or one given whole), and with ``max_iter`` 0 (the start is the result).
        :meth:`planned` says how many.
        Restart ``r`` draws its randomness from child ``r`` of ``SeedSequence(seed)``. With
        the ``median`` start, restart 0 is that start; restarts 1, 3, 4 and 5 start from
        restart 0's fit with the face window moved two pixels diagonally (one pass over the
        images builds the face); restart 2 is the median start annealed (``ANNEAL_PASSES``
        passes at rising inverse temperatures); restart 6 starts from a sampler of the
        positions (``SAMPLER_SWEEPS`` passes, one image block at a time: on one thread);
        later restarts anneal the median start under a random prior over positions, each its
        own. Measured in ``docs/INITIALISATION.md``.
    max_iter : int
        Maximum EM iterations per restart; 0 returns the initialisation.
    tol : float
        Accelerated EM stops when the log-likelihood is estimated to be within ``tol`` nats
        per image and pixel of the optimum its steps converge to (from the rate at which the
        cycle's two EM steps gained: :func:`~facefinder_cli.engine.accelerate._remaining`), in
        ``STOP_CYCLES`` (2) iterations in a row.
        Plain EM stops when an iteration's gain is below ``tol``: the rise of the lower
        bound, ``(elbo[t] - elbo[t-1]) / (K H W)``, the study's rule, which can stop far
        from the optimum where EM crawls. Monte-Carlo EM, whose bound is noisy, uses the
        exact log-likelihood instead, averaged over windows of ``MC_WINDOW`` iterations: its
        gain is the mean rise per iteration of the last window over the one before. Every
        rule's measure is kept in the history (``gain``). ``tol <= 0`` runs ``max_iter``
        iterations, whatever the gains (at the optimum the soft-EM bound may fall by a
        rounding error, a Monte-Carlo gain by its noise), without a ConvergenceWarning.
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
    accelerate : {"auto", "squarem", "none"}
        ``"squarem"``: every iteration is one SQUAREM cycle of two or three passes over the
        images: two EM steps, then (unless they leave less than ``tol`` to gain) a jump along
        them and the EM step from there, kept only if the log-likelihood at the jump is at
        least the bound the two steps reached (see :mod:`~facefinder_cli.engine.accelerate`),
        and the stopping rule estimates the distance to the optimum; once converged, it tries
        the face window one pixel over in each direction and carries on from a window whose
        log-likelihood beats the fit's (``loop._moved_window``). ``"none"``: plain EM, one
        pass per iteration, the study's algorithm and stopping rule. ``"auto"`` (default):
        ``"squarem"`` for soft EM, ``"none"`` for hard and Monte-Carlo EM (whose steps are
        discrete or random: ``docs/PERFORMANCE.md`` says why it is not built for them). Both
        reach the same fixed points.
    samples, samples_growth, max_samples : int, float, int
        Monte-Carlo EM only: ``samples`` draws per image in the first iteration, multiplied by
        ``samples_growth`` every iteration up to ``max_samples`` (raised to ``samples`` if
        lower). Few draws move fast while far from the optimum; more let the parameters settle.
    chunk_size : int or None
        Most images per chunk of the streaming pass (fewer when large images would need more
        than ``CHUNK_BYTES`` of working memory); results do not depend on it beyond rounding.
        None (default): ``CHUNK_VALUES`` pixels' worth, 64 images of 64x64 or 436 of 20x30.
        Each thread works on one chunk at a time: the working memory is about
        ``workers * chunk_size`` images' worth of temporaries.
    dtype : {"float64", "float32"}
        Precision of the per-image work: reads, FFTs, posteriors. float32 halves the memory
        traffic and the cache; sums over images stay float64. See ``docs/PERFORMANCE.md``.
    """

    face_shape: tuple[int, int]
    method: Method = "soft"
    init: str = "median"
    restarts: int | str = "auto"
    max_iter: int = 500
    tol: float = DEFAULT_TOL
    seed: int | None = None
    prior_update: PriorUpdate = "late"
    samples: int = MC_SAMPLES
    samples_growth: float = MC_GROWTH
    max_samples: int = MC_MAX_SAMPLES
    chunk_size: int | None = None
    dtype: str = "float64"
    accelerate: Accelerate = "auto"  # (last: the fields before it keep their positions)

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
        choice("accelerate", ACCELERATIONS)
        if self.accelerate == "squarem" and self.method != "soft":
            raise ValueError(
                f"accelerate 'squarem' is for soft EM only, not {self.method} EM (see "
                "docs/PERFORMANCE.md); use 'auto' or 'none'"
            )
        if isinstance(self.restarts, str) and self.restarts != "auto":
            raise ValueError(f"restarts must be a whole number or 'auto', got {self.restarts!r}")
        if self.restarts != "auto" and whole("restarts", 1) > MAX_RESTARTS:
            raise ValueError(f"restarts must be at most {MAX_RESTARTS}, got {self.restarts}")
        whole("max_iter", 0)
        real("tol")
        if self.seed is not None:
            whole("seed", 0)
        samples = whole("samples", 1)
        growth = real("samples_growth")
        if not (growth >= 1 and math.isfinite(growth)):
            raise ValueError(f"samples_growth must be at least 1 and finite, got {growth}")
        put("max_samples", max(whole("max_samples", 1), samples))
        if self.chunk_size is not None:
            whole("chunk_size", 1)
        put("dtype", _check_dtype(self.dtype).name)

    def repeats_start(self, given_whole: bool) -> bool:
        """Whether every restart starts from the same parameters: the fixed ``zeros`` and
        ``bright`` starts, or a start given whole (``given_whole``)."""
        return self.init in ("zeros", "bright") or given_whole

    def planned(self, first_probability: np.ndarray | None, fixed_start: bool = False) -> int:
        """How many restarts the fit runs: ``restarts``, or for ``"auto"`` as many as the
        first restart's positions ask for (their probabilities ``first_probability``; None:
        not yet known, one so far). ``fixed_start``: every restart would start alike
        (:meth:`repeats_start`)."""
        if self.restarts != "auto":
            return int(self.restarts)
        if first_probability is None or fixed_start or self.max_iter == 0:
            return 1
        sure = float(np.mean(first_probability)) >= SURE_PROBABILITY
        return 1 if sure else AUTO_RESTARTS

    @property
    def accelerated(self) -> bool:
        """Whether each iteration is a SQUAREM cycle (``accelerate`` "squarem", or "auto" with
        soft EM)."""
        return self.accelerate == "squarem" or (self.accelerate == "auto" and self.method == "soft")

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
