"""Figures: lower-bound curves of one or more runs, and the prior over face positions.

matplotlib is imported inside the functions, and figures are drawn on its Agg canvas directly
(no pyplot: no global state, nothing needs a screen), so the rest of the tool never pays for it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np

from facefinder_cli.names import printable

__all__ = ["Curve", "curves_figure", "plot_curves", "plot_prior", "prior_figure"]

Quantity = Literal["elbo", "log_likelihood"]
XAxis = Literal["iteration", "seconds", "passes"]

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
    passes : ndarray of shape (n_iter + 1,) or None
        Passes over the images by each iteration (None: not recorded).
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
    passes: np.ndarray | None = None


def _plain(text: str) -> str:
    """``text`` drawn as it is: bytes that are not UTF-8 as ``\\xNN`` (:func:`names.printable`)
    and dollar signs escaped, which matplotlib would otherwise read as mathematics (a run
    named ``r $\\frac{$`` failed to plot; ``cost $5 and $6`` lost its dollars)."""
    return printable(text).replace("$", r"\$")


def _figure(size: tuple[float, float]):
    """A new figure on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: BinaryIO, fmt: str, output: tuple[str, str] | None = None) -> None:
    """``fig`` as ``fmt`` (png, svg or pdf), naming facefinder as its creator and ``output``,
    (what it is made for, its file name) as what it was drawn as: --overwrite replaces only a
    plot drawn as that output under that name (``outputs.is_facefinder_plot``)."""
    from facefinder_cli import __version__
    from facefinder_cli.outputs import creator_stamp, stamp_digest

    key = "Software" if fmt == "png" else "Creator"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, metadata={key: creator_stamp(__version__, output)})
    out.write(stamp_digest(buf.getvalue()))


def plot_curves(
    curves: Sequence[Curve],
    out: BinaryIO,
    *,
    fmt: str = "png",
    output: tuple[str, str] | None = None,
    **options: Any,
) -> None:
    """Draw the curves on one figure (see :func:`curves_figure` for ``options``) and write it
    to ``out`` as ``fmt`` (png, svg or pdf), stamped as ``output`` (see :func:`_save`)."""
    _save(curves_figure(curves, **options), out, fmt, output)


def plot_prior(
    prior: np.ndarray,
    out: BinaryIO,
    *,
    fmt: str = "png",
    output: tuple[str, str] | None = None,
    **options: Any,
) -> None:
    """Draw the prior (see :func:`prior_figure`) and write it to ``out`` as ``fmt``, stamped
    as ``output`` (see :func:`_save`)."""
    _save(prior_figure(prior, **options), out, fmt, output)


def _describe(prior: np.ndarray) -> str:
    """How peaked a prior over D positions is, in words: "uniform (each of the D positions
    1/D)", or its largest value against the uniform one and how few positions hold half of it."""
    p = np.asarray(prior, dtype=float).ravel()
    p = p / p.sum()
    D = p.size
    if np.ptp(p) <= 1e-9 / D:
        return f"uniform: each of the {D} positions 1/{D}"
    half = int(np.searchsorted(np.cumsum(np.sort(p)[::-1]), 0.5) + 1)
    return f"peak {p.max() * D:.3g}x uniform; {half} of the {D} positions hold half the probability"


def prior_figure(prior: np.ndarray, *, title: str | None = None):
    """A heat map of the prior over the face's positions: the axes are the row and column of
    the face's top-left corner, the colour bar is in probability, and the title says whether
    the prior is uniform or how peaked it is."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    a = np.asarray(prior, dtype=float)
    Dh, Dw = a.shape
    width = min(9.0, max(4.5, 2.0 + 5.0 * Dw / max(Dh, Dw)))
    height = min(7.0, max(3.2, 1.4 + 4.5 * Dh / max(Dh, Dw)))
    fig = _figure((width, height))
    ax = fig.add_subplot()
    extent = (-0.5, Dw - 0.5, Dh - 0.5, -0.5)  # pixel centres on the integers
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:  # uniform: one colour, but a colour bar that still reads as probability
        lo, hi = lo * 0.5, hi * 1.5 if hi > 0 else 1.0
    image = ax.imshow(a, cmap="viridis", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    ax.set_xlabel("column of the face's top-left corner")
    ax.set_ylabel("row")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    bar = fig.colorbar(image, ax=ax, shrink=0.9, format=FormatStrFormatter("%.3g"))
    bar.set_label("probability")
    ax.set_title(_plain(title or f"prior over face positions\n{_describe(a)}"), fontsize="medium")
    fig.tight_layout()
    return fig


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
    point itself, and any within round-off of it, is drawn on a dashed floor line below the
    smallest gap): runs on several data sets each compare with their own best.

    Labels and the title may come from file names or the command line, which hold bytes that
    are not UTF-8 as surrogate escapes (matplotlib's fonts refuse those): they are drawn with
    such bytes as ``\\xNN``, as the CSV files write them (:func:`names.printable`)."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    ys = []
    for c in curves:
        y = np.asarray(getattr(c, quantity), dtype=float)
        ys.append(y / c.n_values if per_pixel else y)
    best: dict[tuple[str, int], float] = {}
    for c, y in zip(curves, ys):
        key = (c.data, c.n_values)
        best[key] = max(best.get(key, -np.inf), float(np.max(y)))
    floor = None
    if gap:  # gaps within round-off of the best (0, a few ulps) are drawn at a floor
        gaps = []
        for c, y in zip(curves, ys):
            top = best[(c.data, c.n_values)]
            g = top - y
            g[g <= 16 * np.finfo(float).eps * max(abs(top), 1e-300)] = 0.0
            gaps.append(g)
        positive = [float(g[g > 0].min()) for g in gaps if (g > 0).any()]
        floor = min(positive) / 10 if positive else 1.0
        ys = [np.where(g > 0, g, floor) for g in gaps]
    for c, y in zip(curves, ys):
        xs = {"iteration": np.arange(len(y)), "seconds": c.seconds, "passes": c.passes}[x]
        xs = np.asarray(xs, dtype=float)
        (line,) = ax.plot(xs, y, marker="." if len(y) < 60 else None, label=_plain(c.label))
        if 0 < c.prior_fixed_until < len(y) - 1:
            t = c.prior_fixed_until + 1  # the first parameters from a learnt prior
            ax.plot(xs[t], y[t], "o", mfc="none", color=line.get_color())
    unit = " per image and pixel" if per_pixel else ""
    if gap:
        ax.set_yscale("log")
        ax.axhline(floor, color="grey", linestyle="--", linewidth=0.8)
        ax.plot([], [], color="grey", linestyle="--", linewidth=0.8, label="at the best (gap 0)")
        of = " of the same data" if len(best) > 1 else ""
        ax.set_ylabel(f"best{of} − {_YLABEL[quantity].split()[0]} (nats{unit})")
    else:
        ax.set_ylabel(f"{_YLABEL[quantity]} (nats{unit})")
        plain = ScalarFormatter(useOffset=False)
        plain.set_scientific(False)
        ax.yaxis.set_major_formatter(plain)
    if x != "seconds":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel({"passes": "passes over the images"}.get(x, x))
    if any(0 < c.prior_fixed_until for c in curves):
        ax.plot([], [], "o", mfc="none", color="grey", label="prior learnt from here")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(_plain(title))
    fig.tight_layout()
    return fig


def plot_sizes(
    trials: Sequence[Sequence],
    chosen: tuple[int, int],
    out: BinaryIO,
    *,
    fmt: str = "png",
    output: tuple[str, str] | None = None,
) -> None:
    """The face-size search's criterion (rows of ``sizes.csv``: height, width, fit,
    log-likelihood, criterion, ...) over the heights tried at the chosen width and over the
    widths tried at the chosen height, short and full fits apart; written to ``out``, stamped
    as ``output`` (see :func:`_save`)."""
    fig = _figure((9.0, 3.6))
    axes = fig.subplots(1, 2, sharey=False)
    for ax, (axis, other, label) in zip(axes, ((0, 1, "height"), (1, 0, "width"))):
        for kind, style in (("short", "o-"), ("full", "s")):
            pts = sorted((t[axis], t[4]) for t in trials
                         if t[2] == kind and t[other] == chosen[other])  # fmt: skip
            if pts:
                ax.plot(*zip(*pts), style, label=f"{kind} fits", ms=4)
        ax.axvline(chosen[axis], color="0.6", ls=":", label=f"chosen {chosen[axis]}")
        fixed = "width" if axis == 0 else "height"
        ax.set_xlabel(f"face {label} (px), at {fixed} {chosen[other]}")
        ax.set_ylabel("criterion (nats)")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    fig.suptitle(f"Face size: {chosen[0]}x{chosen[1]} chosen (log-likelihood - BIC penalty)")
    fig.tight_layout()
    _save(fig, out, fmt, output)
