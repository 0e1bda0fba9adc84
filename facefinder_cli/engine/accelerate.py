"""Accelerated soft EM: one SQUAREM cycle (Varadhan & Roland, Scand. J. Statist. 2008).

From θ0, two plain EM steps give θ1 = M(θ0) and θ2 = M(θ1). With ``r = θ1 - θ0`` and
``v = θ2 - 2 θ1 + θ0``, the cycle jumps to ``θ' = θ0 - 2α r + α² v`` with the step length
``α = -|r| / |v|`` (their "S3"), at most ``-1`` (``α = -1`` gives ``θ'`` = θ2) and at least
``-STEP_MAX``. A third pass, the E-step at ``θ'``, gives ``log p(X | θ')`` and the M-step
sums of ``M(θ')``. The jump is accepted when ``log p(X | θ') ≥ L(q1, θ2)``, the lower bound
that the second EM step reached (and ``≤ log p(X | θ2)``); the cycle then ends at ``M(θ')``,
whose bound ``L(q', M(θ')) ≥ log p(X | θ')``. Otherwise it ends at θ2, plain EM's two steps:
the third pass was spent for nothing. Either way the bound after a cycle is at least the one
before, and a fixed point of EM is a fixed point of the cycle (r = v = 0) and the reverse.

The parameters are extrapolated where they are unconstrained, so that ``θ'`` is valid
whatever α: the face and background as they are, the noise std as its logarithm (floored
like the M-step's) and the prior as its logarithm, normalised again. Background pixels that
no M-step of the cycle could identify have ``r = v = 0`` and keep their value. The lengths
``|r|``, ``|v|`` weigh each coordinate by the information the images hold about it (about
``K / s²`` per face pixel, ``2 K H W`` for ``log s``, ``K A(d)`` per log prior entry), so
that no unit or size of a parameter dominates the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facefinder_cli.engine.data import _check_params, _Data
from facefinder_cli.engine.model import Params
from facefinder_cli.engine.mstep import _Stats
from facefinder_cli.engine.passes import _pass

#: The longest step, ``|α|``: SQUAREM's steps grow quickly where EM crawls, and a cap keeps a
#: rare wild extrapolation from costing a pass.
STEP_MAX = 64.0
#: Relative size of round-off in sums of log-likelihoods over all images and pixels.
_ROUNDING = 64 * np.finfo(np.float64).eps
#: The log of prior entries below this is taken at it (an entry of zero stays near zero).
_PRIOR_TINY = 1e-300


def _coordinates(p: Params, with_prior: bool) -> list[np.ndarray]:
    parts = [p.face, p.background, np.array(math.log(p.noise_std))]
    if with_prior:
        parts.append(np.log(np.maximum(p.prior, _PRIOR_TINY)))
    return parts


def step_length(
    p0: Params, p1: Params, p2: Params, data: _Data, with_prior: bool
) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """SQUAREM's S3 step length α (``-STEP_MAX ≤ α ≤ -1``) and the differences ``r``, ``v``
    per coordinate block (face, background, log noise std[, log prior])."""
    c0, c1, c2 = (_coordinates(p, with_prior) for p in (p0, p1, p2))
    r = [b - a for a, b in zip(c0, c1)]
    v = [c - 2 * b + a for a, b, c in zip(c0, c1, c2)]
    s2 = p2.noise_std**2
    weights = [data.K / s2, data.K / s2, 2.0 * data.K * data.H * data.W]
    if with_prior:
        weights.append(data.K * p2.prior)
    rr = sum(float(np.sum(w * d * d)) for w, d in zip(weights, r))
    vv = sum(float(np.sum(w * d * d)) for w, d in zip(weights, v))
    if not (vv > 0 and math.isfinite(rr) and math.isfinite(vv)):
        return -1.0, r, v
    return -min(max(math.sqrt(rr / vv), 1.0), STEP_MAX), r, v


def extrapolate(
    p0: Params, p2: Params, r: list[np.ndarray], v: list[np.ndarray], alpha: float, data: _Data
) -> Params | None:
    """``θ0 - 2α r + α² v`` as parameters, or None if they are not valid ones (too large to
    compute with). Prior entries that are zero in θ2 stay zero (EM never revives one: a
    position with no prior gets no posterior)."""
    c0 = _coordinates(p0, len(r) == 4)
    c = [a - 2 * alpha * dr + alpha * alpha * dv for a, dr, dv in zip(c0, r, v)]
    noise_std = max(math.exp(min(float(c[2]), 700.0)), data.noise_floor)
    prior = p0.prior
    if len(c) == 4:
        log_prior = np.where(p2.prior > 0, c[3], -np.inf)
        if not np.isfinite(log_prior.max()):
            return None
        prior = np.exp(log_prior - log_prior.max())
        prior /= prior.sum()
    try:
        return _check_params(Params(c[0], c[1], noise_std, prior), data)
    except ValueError:
        return None


@dataclass(frozen=True)
class Cycle:
    """What one SQUAREM cycle did: ``first`` is its first pass (the E-step at the start: its
    log-likelihood, bound and positions), ``params`` and ``info`` where it ended and that
    M-step's ``info`` (as :meth:`_Stats.m_step` gives it), ``passes`` the passes over the
    images it took (2 or 3), ``distance`` how far below its limit plain EM would still be
    after the cycle's two plain steps (:func:`_remaining`; nats), and ``jumped`` whether the
    cycle ended at its jump (accepted) rather than at the plain steps."""

    first: _Stats
    params: Params
    info: dict
    passes: int
    distance: float
    jumped: bool = False


#: Accelerated EM stops once this many cycles in a row (since a held prior was released) have
#: each estimated less than ``tol`` left to gain (:func:`_remaining`). One estimate alone can
#: miss a slow mode that faster ones still hide: on the 36 data sets of
#: ``benchmarks/bench_convergence.py``, stopping on one cycle ended within 1e-6 nats per image
#: and pixel of the best optimum found in 16, on two in a row in 20 (of the limit of its own
#: run: 18 and 24), for 17% more passes in all; three in a row changed nothing more.
STOP_CYCLES = 2


def _remaining(ll0: float, bound1: float, ll1: float, bound2: float) -> float:
    """How much log-likelihood plain EM still has to gain after two steps θ0 → θ1 → θ2, from
    ``ll0 = log p(X | θ0)``, ``bound1 = L(q0, θ1)``, ``ll1 = log p(X | θ1)`` and
    ``bound2 = L(q1, θ2)``: Aitken's estimate (Böhning 1994; McNicholas et al. 2010) for
    gains that shrink by a ratio ρ per step, ``g ρ / (1 - ρ)`` after a gain ``g``. ρ is the
    ratio of the two M-steps' gains of the bound (``bound - ll`` before them, the same
    measure twice) and the second step's gain of log-likelihood is taken as ρ times the
    first's, ``ll1 - ll0``. Every number comes from this cycle: the estimate needs no history,
    and a start at the optimum stops after ``STOP_CYCLES`` cycles of two passes. ``inf`` while
    the gains do not shrink; the gain itself once it is round-off."""
    g1, g2, gain = bound1 - ll0, bound2 - ll1, ll1 - ll0
    rounding = _ROUNDING * abs(ll0)  # below this, differences of the sums are round-off
    if not (g1 > rounding and gain > rounding):
        return max(gain, 0.0)
    rho = max(g2, 0.0) / g1
    if rho >= 1:
        return math.inf
    return gain * rho * rho / (1 - rho)


def cycle(data: _Data, p0: Params, update_prior: bool, enough: float) -> Cycle:
    """One SQUAREM cycle from ``p0`` (see the module's documentation). When the two plain
    steps leave less than ``enough`` nats to gain, it ends at θ2 without the third pass: the
    fit is about to stop (once ``STOP_CYCLES`` cycles in a row have), and an extrapolation
    would cost as much as the steps it saves."""
    s0 = _pass(data, p0, "soft", True, learn_prior=update_prior)
    p1, info1 = s0.m_step(p0, update_prior=update_prior)
    s1 = _pass(data, p1, "soft", True, learn_prior=update_prior)
    p2, info2 = s1.m_step(p1, update_prior=update_prior)
    distance = _remaining(s0.log_likelihood, info1["elbo"], s1.log_likelihood, info2["elbo"])
    if distance < enough:
        return Cycle(s0, p2, info2, 2, distance)
    alpha, r, v = step_length(p0, p1, p2, data, update_prior)
    jump = extrapolate(p0, p2, r, v, alpha, data)
    if jump is None:
        return Cycle(s0, p2, info2, 2, distance)
    s = _pass(data, jump, "soft", True, learn_prior=update_prior)
    if s.log_likelihood >= info2["elbo"]:
        p, info = s.m_step(jump, update_prior=update_prior)
        return Cycle(s0, p, info, 3, distance, jumped=True)
    return Cycle(s0, p2, info2, 3, distance)
