"""The M-step: the sufficient statistics of one streaming pass (``_Stats``: frequency-domain
face sums, summed-area tables of the posteriors, or crops at chosen or drawn positions), the
closed-form parameter updates and lower bound, and the public ``m_step`` and ``elbo``."""

from __future__ import annotations

import math

import numpy as np

from facefinder_cli.engine import _fft as sfft
from facefinder_cli.engine.data import _check_params, _Data
from facefinder_cli.engine.estep import _chunk_log_joint, _Posterior
from facefinder_cli.engine.model import (
    DEFAULT_CHUNK_SIZE,
    UNCOVERED_MIN,
    Params,
    _box_full,
    _xlogy,
    uniform_prior,
)

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
        # float32 posteriors: (Σ_k m_k, Σ_k m_k X_k), m_k = Σ_d q_k(d) (see _background_update)
        self.mass: Mass | None = None
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
        cover = _box_full(q, d.h, d.w, d.by_slices)
        self.cover_x += np.einsum("kij,kij->ij", cover, x, dtype=np.float64)
        self.q_sum += q.sum(axis=0, dtype=np.float64)
        self.mass = _plus_mass(self.mass, _float32_mass(q, x))

    def add_positions(self, x: np.ndarray, pos: np.ndarray) -> None:
        """Add a chunk with ``S`` equally weighted positions per image, ``pos`` of shape
        ``(n, S, 2)`` (hard EM: ``S = 1``; Monte-Carlo EM: ``S`` draws)."""
        S = pos.shape[1]
        face, cover_x, counts = _position_sums(self.data, x, pos)
        self.face_sum += face / S
        self.cover_x += cover_x / S
        self.q_sum += counts / S

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
        self.mass = _plus_mass(self.mass, part.mass)
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
        mean, num, known, background = _background_update(
            d, self.q_sum, self.cover_x, previous, self.mass
        )
        # Σ_k Σ_d q_k(d) ||X_k - Model_d||² at the new F (optimal) and B (optimal where known).
        sse = d.total_sq - K * float(np.sum(face**2)) - float(np.sum(mean * num))
        n = K * H * W
        noise_std, floored = _noise_update(d, sse)
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


Mass = tuple[float, np.ndarray]


def _float32_mass(q: np.ndarray, x: np.ndarray) -> Mass | None:
    """For float32 posteriors ``q`` (n, ...) of images ``x`` (n, H, W): ``(Σ_k m_k, Σ_k m_k
    X_k)``, ``m_k`` the sum of ``q_k`` (see :func:`_background_update`); None for float64."""
    if q.dtype == np.float64:
        return None
    m = q.reshape(len(q), -1).sum(axis=1, dtype=np.float64)
    return float(m.sum()), np.einsum("k,kij->ij", m, x, dtype=np.float64)


def _plus_mass(a: Mass | None, b: Mass | None) -> Mass | None:
    if a is None or b is None:
        return a if b is None else b
    return a[0] + b[0], a[1] + b[1]


def _crops(d: _Data, x: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crops of a chunk ``x`` (n, H, W) at ``pos`` (n, S, 2), crop after crop: the flat
    index of each of their pixels in its image, and its value, both of shape (n S h w,), in
    one gather (about 1 ns a value; index arrays broadcast over (n, S, h, w) cost several)."""
    n, S = pos.shape[:2]
    window = (np.arange(d.h)[:, None] * d.W + np.arange(d.w)).ravel()
    flat = ((pos[:, :, 0] * d.W + pos[:, :, 1]).reshape(n * S, 1) + window).ravel()
    image = np.repeat(np.arange(n) * (d.H * d.W), S * d.h * d.w)
    return flat, x.ravel().take(flat + image)


def _position_sums(d: _Data, x: np.ndarray, pos: np.ndarray) -> tuple:
    """For a chunk ``x`` (n, H, W) and positions ``pos`` (n, S, 2): the sum of the crops at them
    (h, w), ``Σ cover ⊙ X`` over them (H, W) and their count at each position (Dh, Dw)."""
    n, S = pos.shape[:2]
    flat, crops = _crops(d, x, pos)
    face = crops.reshape(n * S, -1).sum(axis=0, dtype=np.float64).reshape(d.h, d.w)
    cover_x = np.bincount(flat, crops, d.H * d.W).reshape(d.H, d.W)
    return face, cover_x, _position_counts(d, pos)


def _position_counts(d: _Data, pos: np.ndarray) -> np.ndarray:
    """How many of the positions ``pos`` (..., 2) are at each position, (Dh, Dw) float64."""
    flat = (pos[..., 0] * d.Dw + pos[..., 1]).ravel()
    counts = np.bincount(flat, minlength=d.Dh * d.Dw).astype(np.float64)
    return counts.reshape(d.Dh, d.Dw)


def _known_mean(num: np.ndarray, den: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray]:
    """``num / den`` where the background is known (``den``, the images leaving a pixel
    uncovered, above ``n · UNCOVERED_MIN`` of ``n`` images), 0 elsewhere; and where it is."""
    known = den > n * UNCOVERED_MIN
    return np.divide(num, den, out=np.zeros_like(num), where=known), known


def _background_update(
    d: _Data,
    q_pos: np.ndarray,
    cover_x: np.ndarray,
    previous,  # Params or MixtureParams: its background
    mass: Mass | None = None,
):
    """The background's closed form from the summed posterior over positions ``q_pos`` and
    ``cover_x = Σ_k cover_k ⊙ X_k``: ``(mean, num, known, background)``, the shifted mean
    ``num / den`` where a pixel was seen (``den = Σ_k (1 - cover_k)`` above ``UNCOVERED_MIN``
    of the images), and the new background (the previous one elsewhere).

    ``Σ_k 1`` and ``Σ_k X_k`` are ``K`` and the data's exact sums, unless ``mass`` gives them
    as the float32 posteriors and images summed into ``cover_x`` have them: ``Σ_k m_k`` and
    ``Σ_k m_k X_k``, ``m_k`` the sum of ``q_k`` in float32 (1 up to its rounding). At a pixel
    the face covers in nearly every image, ``den`` is a difference of nearly equal sums, and
    only sums of the same numbers cancel (in review: a background 12 grey levels off at K = 5
    with the exact ones, against float64's; 7.6e-4 with these)."""
    whole, whole_x = (d.K, d.sum_x) if mass is None else mass
    den = whole - _box_full(q_pos, d.h, d.w)  # Σ_k (1 - cover_k)
    num = whole_x - cover_x  # Σ_k (1 - cover_k) X_k
    mean, known = _known_mean(num, den, d.K)
    return mean, num, known, np.where(known, mean + d.offset, previous.background)


def _noise_update(d: _Data, sse: float) -> tuple[float, bool]:
    """The noise std from the expected sum of squares ``sse``, and whether it was clipped at
    the data's floor."""
    s2 = sse / (d.K * d.H * d.W)
    floored = s2 < d.noise_floor**2 or not np.isfinite(s2)
    return (d.noise_floor if floored else math.sqrt(s2)), floored


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
            uniform_prior((data.Dh, data.Dw)),
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
