"""The EM loop and its values: :func:`fit` runs the restarts; each restart is a
:class:`Checkpoint` (the loop's whole state) advanced one iteration at a time by
``_iterate``, reported through :class:`Progress`, and ended in a :class:`RestartHistory`;
the best restart becomes the :class:`FitResult`. Resuming compares a checkpoint's settings,
start and images with the fit's before any work."""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from facefinder_cli.engine import accelerate
from facefinder_cli.engine.accelerate import cycle
from facefinder_cli.engine.data import _check_params, _Data
from facefinder_cli.engine.estep import _Posterior, _Scorer
from facefinder_cli.engine.machine import _retain_freed_memory
from facefinder_cli.engine.model import (
    DEFAULT_TOL,
    MC_WINDOW,
    NOISE_FLOOR,
    CheckpointError,
    ConvergenceWarning,
    NoiseFloorWarning,
    Params,
)
from facefinder_cli.engine.mstep import _Stats
from facefinder_cli.engine.passes import ANNEAL_PASSES, _anneal, _pass
from facefinder_cli.engine.sampler import _sampled
from facefinder_cli.engine.settings import FitSettings
from facefinder_cli.engine.starts import (
    _START_PARTS,
    _given,
    _given_whole,
    _initialize,
    _seed_child,
    _seed_sequence,
)


@dataclass(frozen=True)
class Progress:
    """What the fit reports to its callback: once per restart with the starting parameters
    (``iteration`` 0; the numbers are NaN, ``positions`` None), then after every iteration.

    ``elbo`` is the lower bound after the M-step, ``gain`` what the stopping rule compared with
    ``tol`` (per image and pixel: the bound's rise, or accelerated EM's estimated distance to
    the optimum), ``params`` the new θ. ``log_likelihood`` and ``positions`` (the MAP
    positions, shape (K, 2)) belong to the parameters the iteration started from, whose E-step
    computed them. ``restarts`` is how many the fit runs, as far as it knows (with
    ``restarts="auto"``, one until the first has ended: :meth:`FitSettings.planned`).
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
    (``seconds[0]``: the initialisation) and ``passes[t]`` the passes over the images made
    by then (``passes[0]``: those of the start: 0, 1 for a moved window, ``ANNEAL_PASSES``
    when annealed, ``SAMPLER_SWEEPS`` when sampled; plain EM makes one
    per iteration, accelerated EM two or three).
    The prior was held fixed in the first ``prior_fixed_until`` iterations.
    ``mean_probability`` is the mean of its positions' held-out probabilities (those of
    ``positions.csv``; what ``restarts="auto"`` asks of the first restart; NaN if unknown).
    """

    init: str
    elbo: np.ndarray
    log_likelihood: np.ndarray
    gain: np.ndarray
    seconds: np.ndarray
    passes: np.ndarray
    n_iter: int
    converged: bool
    final_elbo: float
    prior_fixed_until: int
    mean_probability: float = math.nan


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`fit`: the best restart's parameters, histories and positions.

    Attributes
    ----------
    face : ndarray of shape (h, w)
    background : ndarray of shape (H, W)
    noise_std : float
    prior : ndarray of shape (H-h+1, W-w+1)
    elbo, log_likelihood, gain, seconds, passes : ndarray of shape (n_iter + 1,)
        Histories of the best restart (see :class:`RestartHistory`).
    final_elbo : float
        ``L(q, θ)`` at the final parameters with their own posterior (soft and Monte-Carlo EM:
        the exact posterior, so it equals ``log_likelihood[-1]``; hard EM: the MAP objective).
    n_iter : int
    converged : bool
    positions : ndarray of shape (K, 2), int
        Every image's most probable face position ``(row, column)``, held out: under the final
        parameters with the face and a learnt prior as the *other* images fitted them (see
        ``_held_out``: an image scored with its own crop in the face matches itself), the face
        shrunk (:func:`shrunk_face`: its estimation noise would make positions look surer than
        they are). It can differ from ``locate(X, result.params)`` where an image's position is
        ambiguous.
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
    passes: np.ndarray
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
    the start, as ``passes``); ``gain`` is what the stopping rule compared with ``tol``;
    ``jumped`` whether accelerated EM's last cycle ended at an accepted jump. ``rng_state`` is
    the restart's random generator's state (``bit_generator.state``).
    """

    settings: FitSettings
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
    passes: tuple[int, ...]
    converged: bool
    prior_free: bool
    prior_fixed_until: int
    unidentified: np.ndarray
    noise_floored: bool
    jumped: bool = False
    rng_state: dict = field(default_factory=dict, repr=False)

    @property
    def restarts(self) -> int:
        """How many restarts its fit runs, as far as it knows (:meth:`FitSettings.planned`;
        a start that every restart would repeat never gets past restart 0)."""
        return _planned(self.settings, self.finished, False)


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
    if len(cp.seconds) != t + 1 or len(cp.passes) != t + 1:
        return "its histories do not have one value per iteration"
    if np.shape(cp.unidentified) != (data.H, data.W):
        return "its record of unidentified background pixels has the wrong shape"
    if not 0 <= cp.prior_fixed_until <= t:
        return "its record of when the prior was held is out of range"
    if len(cp.finished) != cp.restart:
        return "its record of finished restarts does not match its restart"
    for done in cp.finished:
        h = done.history
        if np.shape(done.positions) != (data.K, 2) or np.shape(done.probability) != (data.K,):
            return "a finished restart's positions do not match the images"
        positions = np.asarray(done.positions)
        if not (
            positions.dtype.kind in "iu"
            and (positions >= 0).all()
            and (positions < (data.Dh, data.Dw)).all()
        ):
            return "a finished restart's positions are out of range"
        probability = np.asarray(done.probability)
        if not (probability.dtype.kind == "f" and ((probability >= 0) & (probability <= 1)).all()):
            return "a finished restart's position probabilities are not in 0..1"
        if np.shape(done.unidentified) != (data.H, data.W):
            return "a finished restart's unidentified background pixels have the wrong shape"
        n = h.n_iter + 1
        if not 0 <= h.n_iter <= cp.settings.max_iter or not 0 <= h.prior_fixed_until <= h.n_iter:
            return "a finished restart's iterations are out of range"
        if any(len(a) != n for a in (h.elbo, h.log_likelihood, h.gain, h.seconds, h.passes)):
            return "a finished restart's histories do not match its iterations"
        if not np.isfinite(h.log_likelihood).all() or not np.isfinite(h.elbo).all():
            return "a finished restart's histories hold values that are not numbers"
        try:
            _check_params(done.params, data)
        except ValueError as err:
            return f"a finished restart's parameters are damaged: {err}"
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
        if len(old["sums"]) != len(new["sums"]):
            raise ValueError
        pairs = list(zip(old["sums"], new["sums"], new["scale"]))
    except (KeyError, TypeError, ValueError):
        return "the checkpoint's record of its images is damaged"
    for a, b, scale in pairs:
        if not abs(float(a) - b) <= 1e-12 * scale:
            return (
                "the images differ from those the checkpoint was made from (as many, of the "
                "same size, but other values or in another order)"
            )
    return None


def _resume_refused(
    cp: Checkpoint,
    settings: FitSettings,
    start: str | None,
    data: _Data,
    fingerprint: dict,
    fixed_start: bool,
):
    """Why ``cp`` does not resume the fit of ``data`` with ``settings``; None if it does."""
    if not isinstance(cp.settings, FitSettings) or not isinstance(cp.data, dict):
        return "the checkpoint is damaged: its record of settings or images is not one"
    why = _differs(cp.settings, settings)
    if why is None and cp.start != start:
        why = "the checkpoint belongs to another fit: it started from other given parameters"
    if why is None:
        why = _fingerprint_differs(cp.data, fingerprint)
    if why is None:
        damage = _damaged(cp, data)
        why = None if damage is None else f"the checkpoint is damaged: {damage}"
    if why is None and not cp.restart < _planned(settings, cp.finished, fixed_start):
        why = "the checkpoint belongs to another fit (other restarts)"
    return why


def _planned(settings: FitSettings, runs: Sequence[RestartResult], fixed_start: bool) -> int:
    """How many restarts the fit runs, as far as ``runs`` (the finished ones) tell."""
    return settings.planned(runs[0].probability if runs else None, fixed_start)


def _gain(state: Checkpoint, n_values: int) -> float:
    """The stopping rule's measure of the last plain iteration, per image and pixel: the rise
    of the ELBO, or for Monte-Carlo EM the windowed rise of the exact log-likelihood (windows
    start afresh when a held prior is released: its jump is a new phase). Accelerated EM
    measures its cycles itself (:attr:`~facefinder_cli.engine.accelerate.Cycle.distance`)."""
    s = state.settings
    if s.method != "mc":
        return (state.elbo[-1] - state.elbo[-2]) / n_values
    since = state.prior_fixed_until if s.prior_update == "late" and state.prior_free else 0
    return _window_gain(list(state.log_likelihood[since:])) / n_values


def _iterate(data: _Data, state: Checkpoint, rng: np.random.Generator, t0: float):
    """One EM iteration from ``state``: the next state, and the E-step's MAP positions."""
    s, t = state.settings, state.iteration + 1
    n_values = data.K * data.H * data.W
    holding = s.prior_update == "late" and not state.prior_free
    threshold = s.tol if s.tol > 0 or not holding else DEFAULT_TOL  # to stop, or to release
    distance, jumped = math.nan, False
    # (the first cycle of a restart, and one from an accepted jump: see below)
    untrusted = state.jumped or state.iteration == 0
    if s.accelerated:
        c = cycle(data, state.params, state.prior_free, max(threshold, 0) * n_values)
        stats, params, info, passes, distance = c.first, c.params, c.info, c.passes, c.distance
        jumped = c.jumped
    else:
        samples = _samples_at(t, s.samples, s.samples_growth, s.max_samples)
        stats = _pass(
            data, state.params, s.method, True, rng, samples, learn_prior=state.prior_free
        )
        params, info = stats.m_step(state.params, update_prior=state.prior_free)
        passes = 1
    state = replace(
        state,
        iteration=t,
        params=params,
        elbo=state.elbo + ((stats.elbo,) if t == 1 else ()) + (info["elbo"],),
        log_likelihood=state.log_likelihood + (stats.log_likelihood,),
        seconds=state.seconds + (time.perf_counter() - t0,),
        passes=state.passes + (state.passes[-1] + passes,),
        prior_fixed_until=state.prior_fixed_until + (not state.prior_free),
        unidentified=info["unidentified"],
        noise_floored=info["floored"],
        jumped=jumped,
    )
    if s.accelerated:
        # Two cycles are not trusted on their estimate alone, as their first EM step gains
        # much more than the second and the estimated ratio of gains comes out far too small:
        # one that starts where a jump was accepted (its first step corrects what the jump
        # overshot; found in review: stops 1e-5 to 2e-4 nats per image and pixel short of
        # where plain EM then went), and a restart's first (its first step repairs the start:
        # on scenes from real photos, a start whose noise std was far off estimated 0.01 nats
        # to go after a rise of 150,000, and the prior held back until then was learnt from
        # the first guesses on: 70 iterations instead of 18, or a worse optimum).
        # Their own rise must be small too.
        rise = state.elbo[-1] - state.elbo[-2]
        gain = (max(distance, rise) if untrusted else distance) / n_values
    else:
        gain = float(_gain(state, n_values))
    # tol <= 0 runs max_iter iterations: a gain below 0 (the bound falling by a rounding
    # error, the noise of Monte-Carlo EM's windows) must not stop it
    stops = s.tol > 0
    if holding:  # once the rest has settled, the prior is learnt too
        state = replace(state, gain=state.gain + (gain,), prior_free=gain < threshold)
    elif s.accelerated:  # STOP_CYCLES estimates in a row, since the prior was released
        gains, k = state.gain + (gain,), accelerate.STOP_CYCLES
        since = state.prior_fixed_until if s.prior_update == "late" else 0
        recent = gains[since:][-k:]
        converged = stops and len(recent) == k and all(g < s.tol for g in recent)
        state = replace(state, gain=gains, converged=converged)
    else:
        state = replace(state, gain=state.gain + (gain,), converged=stops and gain < s.tol)
    return state, stats.positions


def _run(
    data: _Data,
    state: Checkpoint,
    rng: np.random.Generator,
    t0: float,
    callback: Callable[[Progress], None] | None,
    restarts: int,
    support: np.ndarray | None = None,
) -> RestartResult:
    """Restart ``state.restart`` from ``state`` (its start, or a checkpoint) to its end;
    ``support``: where a given start prior is positive (None: not given)."""
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
                restarts,
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
    while True:
        while not state.converged and state.iteration < s.max_iter:
            state, positions = _iterate(data, state, rng, t0)
            report(positions)
        # Positions and probabilities held out: scored with what the other images fitted
        # (the face after any M-step, the prior if an M-step re-estimated it).
        fitted = (state.iteration > 0, state.iteration > state.prior_fixed_until)
        method = "soft" if s.method == "mc" else s.method
        final = _pass(data, state.params, method, False, held_out=fitted, support=support)
        if not _checks_window(state):
            break
        state, positions = _moved_window(data, state, t0, support, final)
        if state.converged:  # no move beat it (its passes counted in the last iteration's)
            break
        report(positions)
    elbo = state.elbo if state.iteration else (final.elbo,)
    history = RestartHistory(
        init=s.init,
        elbo=np.array(elbo),
        log_likelihood=np.array(state.log_likelihood + (final.log_likelihood,)),
        gain=np.array((math.nan,) + state.gain),
        seconds=np.array(state.seconds),
        passes=np.array(state.passes),
        n_iter=state.iteration,
        converged=state.converged,
        final_elbo=final.elbo,
        prior_fixed_until=state.prior_fixed_until,
        mean_probability=float(np.mean(final.probability)),
    )
    return RestartResult(
        state.params,
        history,
        final.positions,
        final.probability,
        state.unidentified,
        state.noise_floored,
    )


#: One-pixel moves of the face window tried where soft, accelerated EM has converged
#: (:func:`_moved_window`), along the axes with more than one position.
WINDOW_MOVES = ((0, 1), (0, -1), (1, 0), (-1, 0))


def _checks_window(state: Checkpoint) -> bool:
    """Whether ``state`` is where :func:`_moved_window` tries moves: converged, by soft
    accelerated EM (the default; plain EM stays the study's), with an iteration to spare."""
    s = state.settings
    return state.converged and s.method == "soft" and s.accelerated and state.iteration < s.max_iter


def _moved_window(data: _Data, state: Checkpoint, t0: float, support, final: _Stats):
    """A converged fit whose face window is one pixel off the faces (on a column of
    background, with the face's own edge column left to the background) is an optimum EM
    cannot leave: every image would have to move at once. Measured on a scene made from
    real photographs (a head on the moon's surface, 70 images): the default fit placed 4% of
    the faces right, each one column over, with probability 1.000, 968 nats below the window
    one column to the left, from which EM placed them all right (docs/INITIALISATION.md).

    So where EM has converged, the window is tried one pixel over in each direction
    (``WINDOW_MOVES``; a move that would leave every image's position where it is, at an
    edge, is not one): the face the mean of the images' windows at the fit's positions
    (``final``'s, the fit's last pass) moved, the fit's background and noise std, and its
    prior moved with the window (held as it is where the prior is never learnt). The fit
    itself is scored in the same pass, the same way (its own log-likelihood computed
    otherwise differs by rounding: in float32 by more than ``tol``, and a move that changed
    nothing was taken again and again). A move whose log-likelihood beats the fit's by more
    than ``tol`` is taken as one more iteration (the EM step from it: the bound rises, as
    the log-likelihood at the move already beats the fit's), and EM carries on. Returns the
    next state, still converged when no move beats the fit (the passes and time it took
    added to the last iteration's), and the MAP positions of the move taken. Two passes over
    the images (one builds the moved faces, one scores them all), and one more for the move
    taken."""
    s = state.settings
    n_values = data.K * data.H * data.W
    margin = (s.tol if s.tol > 0 else DEFAULT_TOL) * n_values
    learn = state.prior_free  # (converged: released, unless prior_update is "never")
    at = np.asarray(final.positions, dtype=np.intp)
    moves = []
    for move in WINDOW_MOVES:
        move = (move[0] if data.Dh > 1 else 0, move[1] if data.Dw > 1 else 0)
        if move != (0, 0) and move not in moves and (_moved(data, at, move) != at).any():
            moves.append(move)
    if not moves:  # (a face the size of the images, or every face at the edges it moves to)
        return state, None
    p = state.params
    candidates = []
    for move, face in zip(moves, _moved_faces(data, at, moves)):
        prior = _moved_prior(p.prior, move, support) if learn else p.prior
        candidates.append(Params(face, p.background, p.noise_std, prior))
    here, *scores = _scores(data, [p, *candidates])
    passes = 2
    best = int(np.argmax(scores))
    if not scores[best] > here + margin:
        seconds = state.seconds[:-1] + (time.perf_counter() - t0,)
        passes = state.passes[:-1] + (state.passes[-1] + passes,)
        return replace(state, passes=passes, seconds=seconds), None
    stats = _pass(data, candidates[best], "soft", True, learn_prior=learn)
    params, info = stats.m_step(candidates[best], update_prior=learn)
    elbo = info["elbo"]
    state = replace(
        state,
        iteration=state.iteration + 1,
        params=params,
        elbo=state.elbo + (elbo,),
        log_likelihood=state.log_likelihood + (final.log_likelihood,),
        gain=state.gain + ((elbo - state.elbo[-1]) / n_values,),
        seconds=state.seconds + (time.perf_counter() - t0,),
        passes=state.passes + (state.passes[-1] + passes + 1,),
        prior_fixed_until=state.prior_fixed_until + (not learn),
        unidentified=info["unidentified"],
        noise_floored=info["floored"],
        converged=False,
        jumped=False,
    )
    return state, stats.positions


def _moved(data: _Data, positions: np.ndarray, move: tuple[int, int]) -> np.ndarray:
    """``positions`` moved by ``move``, kept inside the images (as :func:`_shifted` keeps them)."""
    m = positions + np.asarray(move, dtype=np.intp)
    np.clip(m[:, 0], 0, data.Dh - 1, out=m[:, 0])
    np.clip(m[:, 1], 0, data.Dw - 1, out=m[:, 1])
    return m


def _moved_faces(data: _Data, positions: np.ndarray, moves: list) -> list[np.ndarray]:
    """For each move, the mean of the images' windows at ``positions`` moved by it (kept
    inside the images), unshifted: one pass over the images."""
    h, w = data.h, data.w

    def chunk(a: int, b: int) -> np.ndarray:
        x = data.chunk_images(a, b)
        windows = np.lib.stride_tricks.sliding_window_view(x, (h, w), axis=(1, 2))
        k = np.arange(b - a)
        faces = []
        for move in moves:
            m = _moved(data, positions[a:b], move)
            faces.append(windows[k, m[:, 0], m[:, 1]].sum(axis=0, dtype=np.float64))
        return np.stack(faces)

    total = np.zeros((len(moves), h, w))
    for _, b, part in data.map(chunk):
        total += part
        data.report(b)
    return list(total / data.K + data.offset)


def _scores(data: _Data, candidates: list[Params]) -> list[float]:
    """``log p(X | θ)`` of each of ``candidates``: one pass over the images."""
    scorers = [_Scorer(p, data) for p in candidates]

    def chunk(a: int, b: int) -> np.ndarray:
        x, xf = data.chunk_data(a, b)
        return np.array(
            [float(_Posterior.evidence(*s.log_joint(x, xf, data.sq_x[a:b]))[2].sum())
             for s in scorers]
        )  # fmt: skip

    total = np.zeros(len(candidates))
    for _, b, part in data.map(chunk):
        total += part
        data.report(b)
    return [float(v) for v in total]


def _moved_prior(prior: np.ndarray, move: tuple[int, int], support: np.ndarray | None):
    """``prior`` moved with the window by ``move``, the mass moved past an edge kept on it (as
    :func:`_shifted` keeps moved positions inside), within ``support`` (where a given start
    prior is positive); ``prior`` itself where nothing of it is left there."""
    Dh, Dw = prior.shape
    rows = np.clip(np.arange(Dh) + move[0], 0, Dh - 1)
    cols = np.clip(np.arange(Dw) + move[1], 0, Dw - 1)
    moved = np.zeros_like(prior)
    np.add.at(moved, (rows[:, None], cols[None, :]), prior)
    if support is not None:
        moved = moved * support
    total = moved.sum()
    return moved / total if total > 0 else prior


#: Restarts of the ``median`` start that begin from restart 0's fit with its face window moved
#: by (rows, columns) (see :func:`_shifted`); the others anneal (see :func:`_start`).
SHIFTS = {1: (2, 2), 3: (-2, -2), 4: (2, -2), 5: (-2, 2)}
#: Restarts of the ``median`` start that start from the positions' sampler (``sampler``).
SAMPLED = (6,)


def _move(data: _Data, restart: int) -> tuple[int, int] | None:
    """The move of restart ``restart``'s window (``SHIFTS``), along the axes with more than one
    position; None where it is no move, or an earlier restart's (a face as tall or as wide as
    the images: such a restart anneals under a random prior instead)."""

    def along(move: tuple[int, int]) -> tuple[int, int]:
        return (move[0] if data.Dh > 1 else 0, move[1] if data.Dw > 1 else 0)

    move = along(SHIFTS[restart])
    earlier = {along(m) for r, m in SHIFTS.items() if r < restart}
    return None if move == (0, 0) or move in earlier else move


def _start(
    data: _Data,
    init: str,
    rng: np.random.Generator,
    restart: int,
    given: dict,
    first: Any = None,
) -> tuple[Params, int]:
    """Where restart ``restart`` starts, and the passes over the images that took.

    The ``median`` start's restarts (none of it given): 1, 3, 4 and 5 start from restart 0's
    fit ``first`` (its ``positions``) with the face window moved by ``SHIFTS[restart]``
    (:func:`_shifted`; where that is no move or an earlier one, see :func:`_move`, they anneal
    under a random prior); 2 anneals the start (see ``_anneal``); 6 (``SAMPLED``) starts from
    the positions' sampler (``sampler._sampled``, with ``first``'s background and noise std;
    annealed with one image or one position); 7 and later anneal the start under a random
    prior each. With part of the start given, every restart anneals (1 as it is, later ones
    under a random prior), then takes back the given face, background or noise std (the
    given values are the start's; the rest is annealed). The study's starts draw their own,
    and a start given whole is used as it is."""
    params = _initialize(data, init, rng, given)
    if restart == 0 or init != "median" or _given_whole(given):
        return params, 0

    def report(what: str) -> Callable[[int, int], None] | None:
        if data.on_start is None:
            return None
        return lambda done, total: data.on_start(restart, what, done, total)

    move = _move(data, restart) if not given and restart in SHIFTS else None
    if move is not None:
        return _shifted(data, first, move, params.prior), 1
    if not given and restart in SAMPLED and data.K > 1 and data.Dh * data.Dw > 1:
        # (one image has no others to draw it by, one position nothing to draw: annealed)
        fitted = first.params  # its background and noise std: the sampler's
        p = Params(params.face, fitted.background, fitted.noise_std, params.prior)
        return _sampled(data, p, rng, report=report("sampling positions"))
    kept = {k: getattr(params, k) for k in _START_PARTS if given.get(k) is not None}
    tilted = restart >= (2 if given else 3) or restart in SHIFTS
    annealed = _anneal(data, params, rng if tilted else None, report=report("annealing"))
    return replace(annealed, **kept), ANNEAL_PASSES


def _shifted(data: _Data, first: Any, shift: tuple[int, int], prior: np.ndarray) -> Params:
    """A start a window over from a fit ``first`` (a :class:`RestartResult`): the face the mean
    of the images' windows at its ``positions`` moved by ``shift`` (kept inside the images),
    its background and noise std, under ``prior``. One pass over the images.

    A fit can settle with its window on part of the face and a strip of background, or on a
    pattern of the background that the faces partly cover; a start from windows two pixels
    over (diagonally) lets EM find another registration of the same images. Measured on the
    36 data sets of ``benchmarks/bench_convergence.py``: docs/INITIALISATION.md."""
    positions = np.asarray(first.positions, dtype=np.intp)
    (face,) = _moved_faces(data, positions, [shift])
    fitted = first.params
    return Params(face, fitted.background, fitted.noise_std, prior)


def initialize(
    X: np.ndarray,
    face_shape: tuple[int, int],
    init: str = "median",
    *,
    seed: int | np.random.SeedSequence | None = None,
    restart: int = 0,
) -> Params:
    """The parameters restart ``restart`` of :func:`fit` with ``init`` and otherwise default
    settings starts from.

    Parameters
    ----------
    X : ndarray of shape (K, H, W)
    face_shape : (h, w)
    init : {"median", "zeros", "bright", "random", "smooth"}
        ``median`` (the default of :func:`fit`): the per-pixel median of the images as the
        background, a robust noise std, and a face that favours no position (see
        ``_init_median``). Its restarts 1, 3, 4 and 5 start from restart 0's fit with the face
        window moved two pixels diagonally (``SHIFTS``; here restart 0 is fitted with the
        default settings to build them), restart 2 anneals the median start (``ANNEAL_PASSES``
        passes over the images), restart 6 starts from the positions' sampler
        (``SAMPLER_SWEEPS`` passes, with restart 0's background and noise std) and later ones
        anneal the median start under a random prior. The study's
        starts, on the
        0..255 scale: ``zeros`` (F = B = 0, s = 1), ``bright`` (F = B = 255, s = 255),
        ``random`` (F, B uniform on 0..255, s exponential with mean 10), ``smooth`` (F and B
        from Gaussian-filtered random images, s their residual std). All start from a
        uniform prior.
    seed, restart
        As in :func:`fit`: restart ``r`` draws from child ``r`` of ``SeedSequence(seed)``.
    """
    data = _Data(X, face_shape, cache_fft=False)
    child = _seed_child(_seed_sequence(seed), restart)
    first = None
    if init == "median" and (restart in SHIFTS or restart in SAMPLED):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            first = fit(X, face_shape, init=init, restarts=1)  # (restart 0: no draws)
    return _start(data, init, np.random.default_rng(child), restart, {}, first)[0]


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
    on_start: Callable[[int, str, int, int], None] | None = None,
    resume: Checkpoint | None = None,
    client: Any = None,
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
    on_start : callable, optional
        ``on_start(restart, what, done, total)`` while a restart's start is built over many
        passes before its first iteration, after each of them: ``what`` is ``"annealing"``
        (``ANNEAL_PASSES`` passes) or ``"sampling positions"`` (the positions' sampler,
        ``SAMPLER_SWEEPS`` sweeps), ``done`` of ``total`` made (first with ``done`` 0).
        Called from this thread.
    resume : Checkpoint, optional
        Carry on an interrupted fit: the same images, settings and ``init_params``, and the
        last checkpoint it reported (with ``settings.seed`` None, the checkpoint's seed). The
        result is the uninterrupted fit's, bit for bit (timings aside). Anything else is
        refused with a :class:`CheckpointError` that says what differs, after the pass that
        reads the images and before any EM work. ``memory_limit``, ``workers``,
        ``cache_fft`` and the callbacks may differ.
    client : distributed.Client, optional
        Run every pass on the workers of this Dask cluster (see :mod:`.cluster`): each reads
        its chunks of ``X`` once and keeps them, with their spectra, for the whole fit. ``X``
        must be a reader the workers can open again (an ``NpyReader`` or ``ZarrReader`` of a
        file they can read). The result is the same as without, bit for bit (timings aside).
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
    kind, where = (_Data, ()) if client is None else (_cluster()._ClusterData, (client,))
    data = kind(
        X,
        settings.face_shape,
        *where,
        chunk_size=settings.chunk_size,
        cache_fft=cache_fft,
        workers=workers,
        memory_limit=memory_limit,
        dtype=settings.dtype,
        on_chunk=on_chunk,
    )
    data.on_start = on_start
    try:
        return _fit(data, settings, init_params, callback, resume)
    finally:
        if client is not None:
            data.close()


def _cluster():
    """The cluster module, imported only for a fit on a cluster (it imports distributed)."""
    from facefinder_cli.engine import cluster

    return cluster


def _fit(data: _Data, settings: FitSettings, init_params, callback, resume) -> FitResult:
    """:func:`fit` once the images are read."""
    given = _given(init_params)
    fixed_start = settings.repeats_start(_given_whole(given))
    asked = settings.restarts if settings.restarts != "auto" else 1
    if asked > 1 and fixed_start and settings.method != "mc":
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
    support = None if given.get("prior") is None else np.asarray(given["prior"]) > 0
    fingerprint = data.fingerprint()
    runs: list[RestartResult] = []
    if resume is not None:
        why = _resume_refused(resume, settings, start, data, fingerprint, fixed_start)
        if why is not None:
            raise CheckpointError(why)
        runs = list(resume.finished)
    while len(runs) < (planned := _planned(settings, runs, fixed_start)):
        r, t0 = len(runs), time.perf_counter()
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
            first = runs[0] if runs else None
            params, start_passes = _start(data, settings.init, rng, r, given, first)
            state = Checkpoint(
                settings=settings,
                start=start,
                data=fingerprint,
                finished=tuple(runs),
                restart=r,
                iteration=0,
                params=params,
                elbo=(),
                log_likelihood=(),
                gain=(),
                seconds=(time.perf_counter() - t0,),
                passes=(start_passes,),
                converged=False,
                prior_free=settings.prior_update == "always",
                prior_fixed_until=0,
                unidentified=np.zeros((data.H, data.W), dtype=bool),
                noise_floored=False,
            )
        runs.append(_run(data, state, rng, t0, callback, planned, support))
    best = max(range(len(runs)), key=lambda r: (runs[r].history.log_likelihood[-1], -r))
    run = runs[best]
    h = run.history
    if settings.max_iter > 0 and not h.converged and settings.tol > 0:  # (tol <= 0: as asked)
        gain = f"last gain {h.gain[-1]:.3g} nats per image and pixel"
        if settings.accelerated:
            gain = f"estimated {h.gain[-1]:.3g} nats per image and pixel from the optimum"
            if math.isinf(h.gain[-1]):
                gain = "its gains were not yet shrinking"
            elif h.gain[-1] < settings.tol:
                gain += (
                    f" in the last iteration, of the {accelerate.STOP_CYCLES} in a row the rule "
                    "asks for"
                )
        elif math.isinf(h.gain[-1]):  # Monte-Carlo EM, before its second window
            gain = f"Monte-Carlo EM's gain needs {2 * MC_WINDOW} iterations"
        warnings.warn(
            f"EM did not converge in {settings.max_iter} iterations ({gain}, tol "
            f"{settings.tol:g}); raise max_iter or tol",
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
        passes=h.passes,
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
