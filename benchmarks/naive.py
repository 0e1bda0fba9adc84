"""A straightforward EM iteration, as most people write it: one ``scipy.signal.fftconvolve``
call per image and term. The yardstick for ``bench_engine.py``; not used by the tool."""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import logsumexp


def log_likelihood(X, F, B, s):
    """``(K, H, W) -> (K, H-h+1, W-w+1)``, three convolutions per image."""
    K, H, W = X.shape
    h, w = F.shape
    ones = np.ones((h, w))
    out = np.empty((K, H - h + 1, W - w + 1))
    for k in range(K):
        r = (X[k] - B) ** 2
        inside = (
            fftconvolve(X[k] ** 2, ones, mode="valid")
            - 2 * fftconvolve(X[k], F[::-1, ::-1], mode="valid")
            + np.sum(F**2)
        )
        outside = r.sum() - fftconvolve(r, ones, mode="valid")
        out[k] = -0.5 * H * W * np.log(2 * np.pi * s**2) - (inside + outside) / (2 * s**2)
    return out


def iteration(X, F, B, s, A):
    """One soft EM iteration: E-step, then the M-step with ``s²`` as an expectation."""
    K, H, W = X.shape
    h, w = F.shape
    lp = log_likelihood(X, F, B, s) + np.log(A)
    q = np.exp(lp - logsumexp(lp, axis=(1, 2), keepdims=True))
    A = q.mean(axis=0)
    F = np.zeros((h, w))
    num = np.zeros((H, W))
    den = np.zeros((H, W))
    for k in range(K):
        F += fftconvolve(X[k], q[k][::-1, ::-1], mode="valid")
        uncover = 1 - fftconvolve(q[k], np.ones((h, w)), mode="full")
        num += uncover * X[k]
        den += uncover
    F /= K
    B = np.where(den > 1e-8 * K, num / np.maximum(den, 1e-300), B)
    # s² = E_q ||X - Model||² / (HWK), from the log-likelihood at unit variance.
    sse = -2 * (log_likelihood(X, F, B, 1.0) + 0.5 * H * W * np.log(2 * np.pi))
    s = np.sqrt(np.sum(q * sse) / (H * W * K))
    return F, B, s, A
