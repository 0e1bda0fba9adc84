"""A deliberately slow, obviously correct reference implementation of the model.

Written straight from the model definition (the engine's module docstring, "Model"), not
from the engine's fast formulas: every function loops explicitly over images and face positions,
builds the model image ``Model_d`` (the background with the face pasted with its top-left corner at
``d``) and works with plain sums of squares. Only for tiny inputs: the cost is
``O(K * positions * H * W)`` Python-level work.

Conventions: ``X`` has shape ``(K, H, W)``, the face ``(h, w)``, the background ``(H, W)``,
``noise_std`` is a standard deviation, the prior and every posterior ``q_k`` have shape
``(Dh, Dw) = (H-h+1, W-w+1)``; positions are ``(row, column)`` of the face's top-left corner.
"""

from __future__ import annotations

import math

import numpy as np

#: Threshold of the background update: a pixel is re-estimated only where
#: ``Σ_k (1 - cover_k) > K * UNCOVERED_MIN`` (the spec's ``sqrt(float64 eps)``).
UNCOVERED_MIN = math.sqrt(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


def n_positions(image_shape, face_shape):
    """``(Dh, Dw)``: the number of face positions along each axis."""
    (H, W), (h, w) = image_shape, face_shape
    return H - h + 1, W - w + 1


def all_positions(image_shape, face_shape):
    """Every position ``(row, col)`` in row-major order (the order ``argmax`` uses)."""
    Dh, Dw = n_positions(image_shape, face_shape)
    return [(r, c) for r in range(Dh) for c in range(Dw)]


def model_image(face, background, position):
    """``Model_d``: a copy of the background with the face pasted at ``position``."""
    face = np.asarray(face, dtype=np.float64)
    h, w = face.shape
    r, c = position
    m = np.array(background, dtype=np.float64, copy=True)
    m[r : r + h, c : c + w] = face
    return m


def window_mask(image_shape, face_shape, position):
    """Boolean ``(H, W)`` mask of the face window ``win(d)``."""
    (h, w), (r, c) = face_shape, position
    mask = np.zeros(image_shape, dtype=bool)
    mask[r : r + h, c : c + w] = True
    return mask


def _log(x):
    """``log(x)`` of a non-negative Python float, with ``log(0) = -inf`` (no warning)."""
    return math.log(x) if x > 0 else -math.inf


def _logsumexp(values):
    """``log Σ exp(v)`` of a 1-D array that may contain ``-inf`` (not all of them)."""
    values = np.asarray(values, dtype=np.float64)
    top = float(np.max(values))
    total = 0.0
    for v in values:
        total += math.exp(v - top)  # exp(-inf) == 0.0 exactly
    return top + math.log(total)


# ----------------------------------------------------------------------------------------------
# E-step
# ----------------------------------------------------------------------------------------------


def log_likelihood(X, face, background, noise_std):
    """``log N(X_k | Model_d, s² I)`` for every image ``k`` and position ``d``: ``(K, Dh, Dw)``."""
    X = np.asarray(X, dtype=np.float64)
    K, H, W = X.shape
    s2 = float(noise_std) ** 2
    Dh, Dw = n_positions((H, W), np.shape(face))
    out = np.empty((K, Dh, Dw))
    for k in range(K):
        for r in range(Dh):
            for c in range(Dw):
                resid = X[k] - model_image(face, background, (r, c))
                sse = float(np.sum(resid * resid))
                out[k, r, c] = -0.5 * H * W * math.log(2.0 * math.pi * s2) - sse / (2.0 * s2)
    return out


def log_joint(X, face, background, noise_std, prior):
    """``log p(X_k | d) + log A(d)``, with ``log 0 = -inf``: ``(K, Dh, Dw)``."""
    ll = log_likelihood(X, face, background, noise_std)
    prior = np.asarray(prior, dtype=np.float64)
    out = np.empty_like(ll)
    for k in range(ll.shape[0]):
        for r in range(ll.shape[1]):
            for c in range(ll.shape[2]):
                out[k, r, c] = ll[k, r, c] + _log(float(prior[r, c]))
    return out


def posterior(X, face, background, noise_std, prior):
    """``q_k(d) = p(d | X_k)``, normalised in the log domain: ``(K, Dh, Dw)``.

    Positions with zero prior get exactly ``q = 0`` (``exp(-inf) = 0``).
    """
    lj = log_joint(X, face, background, noise_std, prior)
    q = np.empty_like(lj)
    for k in range(lj.shape[0]):
        top = float(np.max(lj[k]))  # log-sum-exp: shift by the maximum before exponentiating
        for r in range(lj.shape[1]):
            for c in range(lj.shape[2]):
                q[k, r, c] = math.exp(lj[k, r, c] - top)  # exp(-inf) == 0.0 exactly
        q[k] /= float(np.sum(q[k]))
    return q


def map_positions(X, face, background, noise_std, prior):
    """Every image's most probable position, first one (row-major) on ties: ``(K, 2)`` int."""
    lj = log_joint(X, face, background, noise_std, prior)
    K, Dh, Dw = lj.shape
    out = np.empty((K, 2), dtype=np.intp)
    for k in range(K):
        best, best_pos = -math.inf, None
        for r in range(Dh):
            for c in range(Dw):
                if best_pos is None or lj[k, r, c] > best:
                    best, best_pos = lj[k, r, c], (r, c)
        out[k] = best_pos
    return out


def log_marginal(X, face, background, noise_std, prior):
    """``log p(X | θ) = Σ_k log Σ_d p(X_k | d) A(d)``."""
    lj = log_joint(X, face, background, noise_std, prior)
    return float(sum(_logsumexp(lj[k].ravel()) for k in range(lj.shape[0])))


# ----------------------------------------------------------------------------------------------
# Posteriors from positions
# ----------------------------------------------------------------------------------------------


def positions_to_q(positions, n_pos):
    """The dense ``q`` of ``positions`` (``(K, 2)``: one-hot; ``(K, S, 2)``: the empirical
    distribution of ``S`` equally weighted draws, repeated draws adding up)."""
    pos = np.asarray(positions)
    if pos.ndim == 2:
        pos = pos[:, None, :]
    K, S, _ = pos.shape
    q = np.zeros((K,) + tuple(n_pos))
    for k in range(K):
        for s in range(S):
            q[k, pos[k, s, 0], pos[k, s, 1]] += 1.0 / S
    return q


# ----------------------------------------------------------------------------------------------
# M-step
# ----------------------------------------------------------------------------------------------


def cover(q, face_shape, image_shape):
    """``cover_k(i, j) = Σ_{d : (i, j) ∈ win(d)} q_k(d)``: ``(K, H, W)``."""
    q = np.asarray(q, dtype=np.float64)
    h, w = face_shape
    K, Dh, Dw = q.shape
    out = np.zeros((K,) + tuple(image_shape))
    for k in range(K):
        for r in range(Dh):
            for c in range(Dw):
                out[k, r : r + h, c : c + w] += q[k, r, c]
    return out


def background_weight(q, face_shape, image_shape):
    """``Σ_k (1 - cover_k)``, the denominator of the background update: ``(H, W)``."""
    cov = cover(q, face_shape, image_shape)
    return np.sum(1.0 - cov, axis=0)


def unidentified(q, face_shape, image_shape):
    """Background pixels the M-step cannot re-estimate: ``Σ_k (1 - cover_k) <= K sqrt(eps)``."""
    K = np.shape(q)[0]
    return ~(background_weight(q, face_shape, image_shape) > K * UNCOVERED_MIN)


def expected_sse(X, q, face, background):
    """``Σ_k Σ_d q_k(d) ||X_k - Model_d||²``, building every model image."""
    X = np.asarray(X, dtype=np.float64)
    K = X.shape[0]
    _, Dh, Dw = np.shape(q)
    total = 0.0
    for k in range(K):
        for r in range(Dh):
            for c in range(Dw):
                if q[k, r, c] == 0:
                    continue
                resid = X[k] - model_image(face, background, (r, c))
                total += float(q[k, r, c]) * float(np.sum(resid * resid))
    return total


def m_step(X, q, h, w, previous_background=None):
    """The soft M-step for a dense posterior ``q`` of shape ``(K, Dh, Dw)``.

    Returns ``(face, background, noise_std, prior)``; background pixels with
    ``Σ_k (1 - cover_k) <= K sqrt(eps)`` keep ``previous_background`` (default: the per-pixel mean
    of ``X`` over the images).
    """
    X = np.asarray(X, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    K, H, W = X.shape
    Dh, Dw = n_positions((H, W), (h, w))
    assert q.shape == (K, Dh, Dw), (q.shape, (K, Dh, Dw))

    # A(d) = (1/K) Σ_k q_k(d)
    prior = np.zeros((Dh, Dw))
    for k in range(K):
        prior += q[k]
    prior /= K

    # F(u, v) = (1/K) Σ_k Σ_d q_k(d) X_k(d + (u, v))
    face = np.zeros((h, w))
    for k in range(K):
        for r in range(Dh):
            for c in range(Dw):
                face += q[k, r, c] * X[k, r : r + h, c : c + w]
    face /= K

    # B = Σ_k (1 - cover_k) X_k / Σ_k (1 - cover_k), where that is identifiable.
    cov = cover(q, (h, w), (H, W))
    num = np.zeros((H, W))
    den = np.zeros((H, W))
    for k in range(K):
        num += (1.0 - cov[k]) * X[k]
        den += 1.0 - cov[k]
    if previous_background is None:
        previous_background = X.mean(axis=0)
    background = np.array(previous_background, dtype=np.float64, copy=True)
    known = den > K * UNCOVERED_MIN
    for i in range(H):
        for j in range(W):
            if known[i, j]:
                background[i, j] = num[i, j] / den[i, j]

    # s² = (1/(HWK)) Σ_k Σ_d q_k(d) ||X_k - Model_d(F_new, B_new)||²
    noise_std = math.sqrt(expected_sse(X, q, face, background) / (H * W * K))
    return face, background, noise_std, prior


def m_step_positions(X, positions, h, w, previous_background=None, check=True):
    """The M-step for positions ``(K, 2)`` (hard EM) or ``(K, S, 2)`` (``S`` equally weighted
    draws per image): :func:`m_step` on the dense ``q`` of their empirical distribution.

    With ``check``, the face and prior are also computed independently (the face as the plain
    average of the ``K S`` crops, the prior as position counts / ``K S``) and asserted equal.
    """
    X = np.asarray(X, dtype=np.float64)
    K, H, W = X.shape
    n_pos = n_positions((H, W), (h, w))
    q = positions_to_q(positions, n_pos)
    face, background, noise_std, prior = m_step(X, q, h, w, previous_background)
    if check:
        pos = np.asarray(positions)
        if pos.ndim == 2:
            pos = pos[:, None, :]
        S = pos.shape[1]
        crops = np.zeros((h, w))
        counts = np.zeros(n_pos)
        for k in range(K):
            for s in range(S):
                r, c = int(pos[k, s, 0]), int(pos[k, s, 1])
                crops += X[k, r : r + h, c : c + w]
                counts[r, c] += 1
        scale = max(1.0, float(np.max(np.abs(X))))
        np.testing.assert_allclose(face, crops / (K * S), rtol=1e-12, atol=1e-12 * scale)
        np.testing.assert_allclose(prior, counts / (K * S), rtol=1e-12, atol=1e-15)
    return face, background, noise_std, prior


# ----------------------------------------------------------------------------------------------
# The lower bound
# ----------------------------------------------------------------------------------------------


def lower_bound(X, face, background, noise_std, prior, q):
    """``L(q, θ) = Σ_k Σ_d q_k(d) (log p(X_k | d) + log A(d) - log q_k(d))`` with ``0 log 0 = 0``
    (terms with ``q_k(d) = 0`` contribute nothing; ``q > 0`` where ``A = 0`` gives ``-inf``)."""
    ll = log_likelihood(X, face, background, noise_std)
    prior = np.asarray(prior, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    total = 0.0
    for k in range(q.shape[0]):
        for r in range(q.shape[1]):
            for c in range(q.shape[2]):
                qd = float(q[k, r, c])
                if qd == 0.0:
                    continue
                total += qd * (ll[k, r, c] + _log(float(prior[r, c])) - math.log(qd))
    return total


def dft2(a, sign=-1):
    """The 2-D discrete Fourier transform by its definition (``sign=+1``: the inverse, not
    divided by the size)."""
    h, w = a.shape
    out = np.zeros((h, w), dtype=complex)
    for u in range(h):
        for v in range(w):
            for i in range(h):
                for j in range(w):
                    out[u, v] += a[i, j] * np.exp(sign * 2j * np.pi * (u * i / h + v * j / w))
    return out


def shrinkage_gains(face, noise_var, bands=8):
    """The Wiener gains ``S / (S + N)`` of every frequency of the face's grid ``(h, w)`` (gain 1
    at frequency 0), ``N = h w noise_var``, ``S`` the power law ``exp(level) |f|^slope`` fitted
    by weighted least squares (weights: the square root of the count) to ``log(mean power - N)``
    against the mean ``log |f|`` of the bands (``bands`` intervals, equal in ``log |f|``, from the
    lowest non-zero ``|f|`` to the highest) whose mean power is at least ``2 N``; a rising fit is
    replaced by the strong bands' weighted mean level; with fewer than two strong bands, ``S``
    is the mean power of the non-zero frequencies less ``N`` (at least 0), everywhere."""
    face = np.asarray(face, dtype=np.float64)
    h, w = face.shape
    noise = h * w * noise_var
    if noise <= 0 or h * w == 1:  # nothing to shrink but the mean, which is kept
        return np.ones((h, w))
    spectrum = dft2(face - face.mean())

    def freq(u, v):
        fu = (u if u <= (h - 1) // 2 else u - h) / h  # numpy.fft.fftfreq's convention
        fv = (v if v <= (w - 1) // 2 else v - w) / w
        return math.hypot(fu, fv)

    cells = [(u, v) for u in range(h) for v in range(w) if (u, v) != (0, 0)]
    lo = min(freq(u, v) for u, v in cells)
    hi = max(freq(u, v) for u, v in cells) * (1 + 1e-9)
    groups = [[] for _ in range(bands)]
    for u, v in cells:
        b = min(int(math.log(freq(u, v) / lo) / math.log(hi / lo) * bands), bands - 1)
        groups[b].append((u, v))
    xs, ys, ws = [], [], []
    for g in groups:
        if g:
            mean = sum(abs(spectrum[c]) ** 2 for c in g) / len(g)
            if mean >= 2 * noise:
                xs.append(sum(math.log(freq(*c)) for c in g) / len(g))
                ys.append(math.log(mean - noise))
                ws.append(len(g))
    if len(xs) >= 2:
        # minimise Σ w_i (y_i - level - slope x_i)²
        x, y, wt = np.array(xs), np.array(ys), np.array(ws, dtype=float)
        xm, ym = np.average(x, weights=wt), np.average(y, weights=wt)
        slope = np.sum(wt * (x - xm) * (y - ym)) / np.sum(wt * (x - xm) ** 2)
        level = ym - slope * xm
        if slope > 0:
            slope, level = 0.0, math.log(np.average(np.exp(y), weights=wt))
        signal = {c: math.exp(level + slope * math.log(freq(*c))) for c in cells}
    else:
        flat = max(sum(abs(spectrum[c]) ** 2 for c in cells) / len(cells) - noise, 0.0)
        signal = {c: flat for c in cells}
    gains = np.ones((h, w))
    for c in cells:
        gains[c] = signal[c] / (signal[c] + noise)
    return gains


def shrink(a, gains):
    """``a`` (h, w) with each frequency multiplied by ``gains`` (h, w)."""
    return (dft2(dft2(a) * gains, sign=+1) / a.size).real


def held_out_posterior(
    X, face, background, noise_std, prior, *, face_fitted, prior_learnt, hard=False
):
    """Each image's posterior under the parameters fitted to the *other* images, ``(K, Dh, Dw)``.

    ``q`` is the posterior under the given (fitted) parameters. With ``face_fitted`` image k is
    scored with ``F_{-k} = (K F - c_k) / (K - 1)``, ``c_k = Σ_d q_k(d) X_k(d + ·)``, shrunk by
    the Wiener gains of ``F`` for the noise of a face fitted to K - 1 images,
    ``shrinkage_gains(F, noise_std² / (K - 1))``; with
    ``prior_learnt`` its prior is ``(max(K A - q_k, 0) + 1) / (K - 1 + D)`` (the Dirichlet
    predictive of the other images' posteriors). ``hard``: ``q_k`` is one-hot at image k's MAP
    position (hard EM built its face from those crops). Model images built pixel by pixel."""
    X = np.asarray(X, dtype=np.float64)
    K = X.shape[0]
    face = np.asarray(face, dtype=np.float64)
    h, w = face.shape
    q = posterior(X, face, background, noise_std, prior)
    if hard:
        q = positions_to_q(map_positions(X, face, background, noise_std, prior), q.shape[1:])
    prior = np.asarray(prior, dtype=np.float64)
    out = np.empty_like(q)
    if face_fitted and K >= 2:
        gains = shrinkage_gains(face, noise_std**2 / (K - 1))
    for k in range(K):
        f = face
        if face_fitted and K >= 2:
            crop = np.zeros((h, w))
            for (r, c), weight in np.ndenumerate(q[k]):
                crop += weight * X[k, r : r + h, c : c + w]
            f = shrink((K * face - crop) / (K - 1), gains)
        a = prior
        if prior_learnt:
            a = (np.maximum(K * prior - q[k], 0.0) + 1.0) / (K - 1 + prior.size)
        out[k] = posterior(X[k : k + 1], f, background, noise_std, a)[0]
    return out


# ----------------------------------------------------------------------------------------------
# Several faces (engine/mixture.py): the latent pair (face m, position d), prior w_m A(d)
# ----------------------------------------------------------------------------------------------


def mixture_log_joint(X, faces, background, noise_std, weights, prior):
    """``log N(X_k | Model_{m,d}, s² I) + log w_m + log A(d)``: ``(K, N, Dh, Dw)``."""
    parts = [
        log_joint(X, face, background, noise_std, prior) + _log(float(weight))
        for face, weight in zip(faces, weights)
    ]
    return np.stack(parts, axis=1)


def mixture_posterior(X, faces, background, noise_std, weights, prior):
    """``q_k(m, d)`` and ``log p(X_k)``, normalised over all pairs of each image."""
    lj = mixture_log_joint(X, faces, background, noise_std, weights, prior)
    K = lj.shape[0]
    ll = np.array([_logsumexp(lj[k].ravel()) for k in range(K)])
    q = np.empty_like(lj)
    for k in range(K):
        for idx in np.ndindex(lj.shape[1:]):
            q[(k, *idx)] = math.exp(lj[(k, *idx)] - ll[k]) if np.isfinite(lj[(k, *idx)]) else 0.0
    return q, ll


def mixture_m_step(X, q, h, w, previous_background, previous_faces=None):
    """Faces, background, noise std, weights and prior maximising ``E_q[log p(X, m, d)]``,
    each by its definition: weighted means of crops and of uncovered pixels. A face no image
    took (zero mass) keeps its previous value."""
    X = np.asarray(X, dtype=np.float64)
    K, H, W = X.shape
    N = q.shape[1]
    positions = all_positions((H, W), (h, w))
    faces = np.zeros((N, h, w))
    for m in range(N):
        num, den = np.zeros((h, w)), 0.0
        for k in range(K):
            for r, c in positions:
                num += q[k, m, r, c] * X[k, r : r + h, c : c + w]
                den += q[k, m, r, c]
        faces[m] = num / den if den > 0 else previous_faces[m]
    num, den = np.zeros((H, W)), np.zeros((H, W))
    for k in range(K):
        for m in range(N):
            for r, c in positions:
                outside = ~window_mask((H, W), (h, w), (r, c))
                num += q[k, m, r, c] * outside * X[k]
                den += q[k, m, r, c] * outside
    known = den > K * UNCOVERED_MIN
    background = np.where(known, num / np.where(known, den, 1.0), previous_background)
    sse = 0.0
    for k in range(K):
        for m in range(N):
            for r, c in positions:
                resid = X[k] - model_image(faces[m], background, (r, c))
                sse += q[k, m, r, c] * float(np.sum(resid * resid))
    noise_std = math.sqrt(sse / (K * H * W))
    weights = q.sum(axis=(0, 2, 3)) / K
    prior = q.sum(axis=(0, 1)) / K
    return faces, background, noise_std, weights, prior


def mixture_lower_bound(X, faces, background, noise_std, weights, prior, q):
    """``E_q[log p(X, m, d | θ)] + H(q)``, summed over images, from its definition."""
    lj = mixture_log_joint(X, faces, background, noise_std, weights, prior)
    total = 0.0
    for idx in np.ndindex(q.shape):
        if q[idx] > 0:
            total += q[idx] * (lj[idx] - math.log(q[idx]))
    return total
