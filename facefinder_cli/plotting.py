"""Figures: lower-bound curves of one or more runs, and the prior as a heat map.

matplotlib is imported inside the functions, with the non-interactive Agg backend, so the rest
of the tool never pays for it and nothing needs a screen.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np

__all__ = ["Curve", "curves_figure", "heat_map", "plot_curves"]

Quantity = Literal["elbo", "log_likelihood"]
XAxis = Literal["iteration", "seconds"]

_YLABEL = {"elbo": "ELBO  L(q, θ)", "log_likelihood": "log-likelihood  log p(X | θ)"}


@dataclass(frozen=True)
class Curve:
    """One run's history, ready to draw.

    Attributes
    ----------
    label : str
    elbo, log_likelihood, seconds : ndarray of shape (n_iter + 1,)
    n_values : int
        ``K * H * W``, for per-pixel normalisation.
    prior_fixed_until : int
        Iterations with the prior held fixed (marked on the curve when > 0).
    data : str
        The data the run was fitted on (its input path), "" if unknown: gaps are measured to
        the best of the curves with the same data and ``n_values``.
    """

    label: str
    elbo: np.ndarray
    log_likelihood: np.ndarray
    seconds: np.ndarray
    n_values: int
    prior_fixed_until: int = 0
    data: str = ""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    curves: Sequence[Curve], out: BinaryIO, *, fmt: str = "png", **options: Any
) -> None:
    """Draw the curves on one figure (see :func:`curves_figure` for ``options``) and write it
    to ``out`` as ``fmt`` (png, svg or pdf)."""
    plt = _pyplot()
    fig = curves_figure(curves, **options)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    out.write(buf.getvalue())


def curves_figure(
    curves: Sequence[Curve],
    *,
    quantity: Quantity = "elbo",
    x: XAxis = "iteration",
    per_pixel: bool = False,
    gap: bool = False,
    title: str | None = None,
):
    """A matplotlib figure of the curves. ``per_pixel`` divides by ``K H W`` so runs on
    different data compare; ``gap`` plots, on a log scale, how far each point is below the
    best value of the curves fitted on the same data (``Curve.data`` and ``n_values``; the best
    point itself is left out): runs on several data sets each compare with their own best."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ys = []
    for c in curves:
        y = np.asarray(getattr(c, quantity), dtype=float)
        ys.append(y / c.n_values if per_pixel else y)
    best: dict[tuple[str, int], float] = {}
    for c, y in zip(curves, ys):
        key = (c.data, c.n_values)
        best[key] = max(best.get(key, -np.inf), float(np.max(y)))
    for c, y in zip(curves, ys):
        xs = np.arange(len(y)) if x == "iteration" else np.asarray(c.seconds, dtype=float)
        if gap:  # the best point itself (gap 0) cannot show on a log scale
            top = best[(c.data, c.n_values)]
            y = np.where(top - y > 0, top - y, np.nan)
        (line,) = ax.plot(xs, y, marker="." if len(y) < 60 else None, label=c.label)
        if 0 < c.prior_fixed_until < len(y) - 1:
            t = c.prior_fixed_until + 1  # the first parameters from a learnt prior
            ax.plot(xs[t], y[t], "o", mfc="none", color=line.get_color())
    unit = " per image and pixel" if per_pixel else ""
    if gap:
        ax.set_yscale("log")
        of = " of the same data" if len(best) > 1 else ""
        ax.set_ylabel(f"best{of} − {_YLABEL[quantity].split()[0]}{unit} (nats)")
    else:
        ax.set_ylabel(f"{_YLABEL[quantity]}{unit}")
    ax.set_xlabel("iteration" if x == "iteration" else "seconds")
    if any(0 < c.prior_fixed_until for c in curves):
        ax.plot([], [], "o", mfc="none", color="grey", label="prior learnt from here")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def heat_map(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """An ``(n, m)`` array as an ``(n, m, 3)`` uint8 RGB image, colour-mapped from its minimum
    (dark) to its maximum (bright); a constant array maps to the middle colour."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=float)
    lo, hi = float(v.min()), float(v.max())
    t = (v - lo) / (hi - lo) if hi > lo else np.full(v.shape, 0.5)
    rgba = colormaps[cmap](t)
    return (rgba[..., :3] * 255).round().astype(np.uint8)
