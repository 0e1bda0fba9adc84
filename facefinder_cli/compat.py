"""The course-assignment API (``calculate_log_probability``, ``run_EM``, ...) over the engine.

The well-known Bayesian-methods course assignment "find the face in noisy images" asks for seven
functions with a fixed interface; this module provides them so that code written for the
assignment (and its test vectors) runs unchanged. It uses the assignment's conventions:

* ``X`` : ndarray of shape ``(H, W, K)`` -- images along the **last** axis (the engine uses
  ``(K, H, W)``);
* ``F`` : face ``(h, w)``; ``B`` : background ``(H, W)``; ``s`` : noise standard deviation;
* ``A`` : prior over positions, ``(H-h+1, W-w+1)``;
* ``q`` : posteriors ``(H-h+1, W-w+1, K)``, or with ``use_MAP=True`` the MAP positions as an
  integer array of shape ``(2, K)`` (rows in ``q[0]``, columns in ``q[1]``).

This is a thin layer: every function checks its arguments, moves the image axis and calls
:mod:`facefinder_cli.engine`. There is no maths here; the model and its computation are described
in the docstring of :mod:`facefinder_cli.engine`.

``X`` is copied once per call into the engine's contiguous ``(K, H, W)`` layout (the engine reads
the stack image by image several times per iteration, which a strided view would make slow).
"""

from __future__ import annotations

import operator

import numpy as np

from . import engine

__all__ = [
    "calculate_log_probability",
    "calculate_lower_bound",
    "run_EM",
    "run_EM_with_restarts",
    "run_e_step",
    "run_m_step",
]


# --------------------------------------------------------------------------------------------
# Argument checking and layout conversion
# --------------------------------------------------------------------------------------------


def _stack(X) -> np.ndarray:
    """``(H, W, K)`` -> the engine's contiguous ``(K, H, W)``."""
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X must have shape (H, W, K), a 3-D array; got shape {X.shape}")
    if 0 in X.shape:
        raise ValueError(f"X must not be empty; got shape {X.shape}")
    return np.ascontiguousarray(np.moveaxis(X, -1, 0))


def _face_shape(h, w, image_shape: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = operator.index(h), operator.index(w)
    except TypeError:
        raise ValueError(f"h and w must be integers, got {h!r} and {w!r}") from None
    H, W = image_shape
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(
            f"the face ({h} x {w}) must be at least 1 x 1 and fit in the images ({H} x {W})"
        )
    return h, w


def _params(Xk: np.ndarray, F, B, s, A=None) -> engine.Params:
    """Check ``F, B, s, A`` against the images ``Xk`` (engine layout) and pack them.

    Without ``A`` (log-likelihoods do not use it) the prior is uniform.
    """
    H, W = Xk.shape[1:]
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"F must be a 2-D array of shape (h, w); got shape {F.shape}")
    h, w = _face_shape(*F.shape, (H, W))
    B = np.asarray(B, dtype=np.float64)
    if B.shape != (H, W):
        raise ValueError(f"B must have the images' shape (H, W) = {(H, W)}; got {B.shape}")
    A = np.ones((H - h + 1, W - w + 1)) if A is None else np.asarray(A, dtype=np.float64)
    if A.shape != (H - h + 1, W - w + 1):
        raise ValueError(
            f"A must have shape (H-h+1, W-w+1) = {(H - h + 1, W - w + 1)}; got {A.shape}"
        )
    if np.ndim(s) != 0:
        raise ValueError(
            f"s must be a scalar (the noise standard deviation); got shape {np.shape(s)}"
        )
    return engine.Params(face=F, background=B, noise_std=float(s), prior=A)


def _given(F, B, s, A, face_shape: tuple[int, int], image_shape: tuple[int, int]) -> dict:
    """Check the given parts of a starting point: the engine's ``init_params`` dict."""
    (h, w), (H, W) = face_shape, image_shape
    expected = {"F": (h, w), "B": (H, W), "A": (H - h + 1, W - w + 1)}
    for name, value in (("F", F), ("B", B), ("A", A)):
        if value is not None and np.shape(value) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]}; got {np.shape(value)}")
    if s is not None and np.ndim(s) != 0:
        raise ValueError(
            f"s must be a scalar (the noise standard deviation); got shape {np.shape(s)}"
        )
    given = {"face": F, "background": B, "noise_std": s, "prior": A}
    return {k: v for k, v in given.items() if v is not None}


def _q_to_engine(q, K: int, n_pos: tuple[int, int], use_MAP: bool) -> dict:
    """Course ``q`` -> the engine's ``posterior=`` (K, Dh, Dw) or ``positions=`` (K, 2) keyword."""
    q = np.asarray(q)
    if use_MAP:
        if q.shape != (2, K):
            raise ValueError(
                f"with use_MAP, q must be the positions, of shape (2, K) = {(2, K)}; got {q.shape}"
            )
        if not np.issubdtype(q.dtype, np.integer):
            raise ValueError(f"with use_MAP, q must hold integer positions; got dtype {q.dtype}")
        return {"positions": np.ascontiguousarray(q.T)}
    if q.shape != n_pos + (K,):
        raise ValueError(f"q must have shape (H-h+1, W-w+1, K) = {n_pos + (K,)}; got {q.shape}")
    return {"posterior": np.ascontiguousarray(np.moveaxis(q.astype(np.float64, copy=False), -1, 0))}


def _results(p) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    return p.face, p.background, float(p.noise_std), p.prior


# --------------------------------------------------------------------------------------------
# The assignment's functions
# --------------------------------------------------------------------------------------------


def calculate_log_probability(X, F, B, s) -> np.ndarray:
    """``log p(X_k | d_k, F, B, s)`` for every image and face position.

    Parameters
    ----------
    X : ndarray of shape (H, W, K)
    F : ndarray of shape (h, w)
    B : ndarray of shape (H, W)
    s : float
        Noise standard deviation.

    Returns
    -------
    ll : ndarray of shape (H-h+1, W-w+1, K)
        ``ll[dh, dw, k]``: log-likelihood of image ``k`` with the face's top-left corner at
        ``(dh, dw)``.
    """
    Xk = _stack(X)
    return engine.position_log_likelihood(Xk, _params(Xk, F, B, s)).transpose(1, 2, 0)


def calculate_lower_bound(X, F, B, s, A, q, use_MAP=False) -> float:
    """The lower bound ``L(q, θ) = Σ_k E_q[log p(X_k, d_k | θ)] - E_q[log q]``.

    Parameters
    ----------
    X : ndarray of shape (H, W, K)
    F : ndarray of shape (h, w)
    B : ndarray of shape (H, W)
    s : float
    A : ndarray of shape (H-h+1, W-w+1)
    q : ndarray of shape (H-h+1, W-w+1, K), or int ndarray of shape (2, K) with ``use_MAP``
        Posteriors, or (``use_MAP``) the face positions: rows in ``q[0]``, columns in ``q[1]``
        (a one-hot ``q``, entropy 0).
    use_MAP : bool

    Returns
    -------
    float
    """
    Xk = _stack(X)
    p = _params(Xk, F, B, s, A)
    return float(engine.elbo(Xk, p, **_q_to_engine(q, Xk.shape[0], p.prior.shape, use_MAP)))


def run_e_step(X, F, B, s, A, use_MAP=False) -> np.ndarray:
    """The E-step: posteriors over the face position, or the MAP positions.

    Parameters
    ----------
    X : ndarray of shape (H, W, K)
    F : ndarray of shape (h, w)
    B : ndarray of shape (H, W)
    s : float
    A : ndarray of shape (H-h+1, W-w+1)
    use_MAP : bool

    Returns
    -------
    q : ndarray of shape (H-h+1, W-w+1, K)
        ``q[:, :, k] = p(d | X_k, θ)``; with ``use_MAP``, int ndarray of shape (2, K): each
        image's most probable position (row in ``q[0]``, column in ``q[1]``; first on ties).
    """
    Xk = _stack(X)
    p = _params(Xk, F, B, s, A)
    if use_MAP:
        return engine.map_positions(Xk, p).T.copy()
    return engine.posterior(Xk, p).transpose(1, 2, 0)


def run_m_step(X, q, h, w, use_MAP=False):
    """The M-step: the parameters that maximise ``L(q, θ)`` for a given ``q``.

    Parameters
    ----------
    X : ndarray of shape (H, W, K)
    q : ndarray of shape (H-h+1, W-w+1, K), or int ndarray of shape (2, K) with ``use_MAP``
    h, w : int
        Face size.
    use_MAP : bool

    Returns
    -------
    F : ndarray of shape (h, w)
    B : ndarray of shape (H, W)
        Pixels that ``q`` covers in every image are not identifiable; the engine gives them the
        mean of the images there (see ``engine.m_step``).
    s : float
    A : ndarray of shape (H-h+1, W-w+1)
    """
    Xk = _stack(X)
    h, w = _face_shape(h, w, Xk.shape[1:])
    n_pos = (Xk.shape[1] - h + 1, Xk.shape[2] - w + 1)
    return _results(engine.m_step(Xk, (h, w), **_q_to_engine(q, Xk.shape[0], n_pos, use_MAP)))


def run_EM(X, h, w, F=None, B=None, s=None, A=None, tolerance=0.001, max_iter=50, use_MAP=False):
    """EM (or hard EM with ``use_MAP``) from one starting point.

    Parameters
    ----------
    X : ndarray of shape (H, W, K)
    h, w : int
        Face size.
    F : ndarray of shape (h, w), optional
    B : ndarray of shape (H, W), optional
    s : float, optional
    A : ndarray of shape (H-h+1, W-w+1), optional
        The starting point. Missing values come from the engine's default initialisation
        (``engine.initialize``); ``A`` defaults to uniform.
    tolerance : float
        Stop once an iteration raises the lower bound by less than ``tolerance`` nats (in total,
        not per pixel). ``-np.inf`` runs exactly ``max_iter`` iterations.
    max_iter : int
        ``0`` returns the starting point.
    use_MAP : bool
        Hard EM: each image's MAP position instead of its posterior.

    Returns
    -------
    F : ndarray of shape (h, w)
    B : ndarray of shape (H, W)
    s : float
    A : ndarray of shape (H-h+1, W-w+1)
    LL : ndarray of shape (n_iter + 2,)
        The lower bound at the starting point (with its own posterior), after every iteration's
        M-step, and after a final E-step at the returned parameters. For soft EM it never
        decreases, and its last value is ``log p(X | θ)``; with ``use_MAP`` it is the MAP objective.

    Warns
    -----
    engine.ConvergenceWarning
        Passed through from the engine when ``max_iter`` iterations did not meet ``tolerance``.
    engine.NoiseFloorWarning
        Passed through when the noise std hits its floor.
    """
    Xk = _stack(X)
    K, H, W = Xk.shape
    h, w = _face_shape(h, w, (H, W))
    init_params = _given(F, B, s, A, (h, w), (H, W))
    result = engine.fit(
        Xk,
        (h, w),
        method="hard" if use_MAP else "soft",
        max_iter=max_iter,
        tol=float(tolerance) / (K * H * W),
        init_params=init_params,
        prior_update="always",
        accelerate="none",  # the course's EM: one iteration per pass, its stopping rule
        restarts=1,  # (one EM run, as the course's)
    )
    return (*_results(result.params), np.append(result.elbo, result.final_elbo))


def run_EM_with_restarts(
    X, h, w, tolerance=0.001, max_iter=50, use_MAP=False, n_restarts=10, seed=None
):
    """EM from ``n_restarts`` starting points; the best one's parameters.

    Parameters
    ----------
    X : ndarray of shape (H, W, K)
    h, w : int
    tolerance, max_iter, use_MAP
        As in :func:`run_EM`.
    n_restarts : int
        Restart 0 is the engine's default start (the one :func:`run_EM` uses); the others
        start from its fit with the face window moved, or anneal it
        (``engine.fit(..., restarts=n_restarts)``; see ``FitSettings.restarts``).
    seed : int, optional
        Restart ``r`` draws from child ``r`` of ``SeedSequence(seed)``: a seed repeats the run,
        and more restarts with one seed never end worse (soft EM).

    Returns
    -------
    F : ndarray of shape (h, w)
    B : ndarray of shape (H, W)
    s : float
    A : ndarray of shape (H-h+1, W-w+1)
    L : float
        The chosen restart's final lower bound. Restarts are ranked by ``log p(X | θ)``, which for
        soft EM is this bound; with ``use_MAP``, ``L`` is the MAP objective of the restart with
        the highest ``log p(X | θ)``.

    Warns
    -----
    engine.ConvergenceWarning, engine.NoiseFloorWarning
        Passed through from the engine, as in :func:`run_EM`.
    """
    Xk = _stack(X)
    K, H, W = Xk.shape
    h, w = _face_shape(h, w, (H, W))
    result = engine.fit(
        Xk,
        (h, w),
        method="hard" if use_MAP else "soft",
        max_iter=max_iter,
        tol=float(tolerance) / (K * H * W),
        restarts=n_restarts,
        seed=seed,
        prior_update="always",
        accelerate="none",
    )
    return (*_results(result.params), float(result.final_elbo))
