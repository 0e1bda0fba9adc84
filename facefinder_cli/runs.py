"""A fit on disk: the run folder that ``facefinder fit`` writes, and reading runs back.

A run folder holds ``result.npz`` (everything), ``history.csv`` (one row per iteration),
``positions.csv`` (one row per image) and PNGs of the face, the background and the prior.
The ``.npz`` keys use the engine's names: ``face``, ``background``, ``noise_std``, ``prior``,
``elbo``, ``log_likelihood``, ...
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shlex
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from facefinder_cli import __version__, engine
from facefinder_cli.engine import (
    Checkpoint,
    FitResult,
    FitSettings,
    Params,
    RestartHistory,
    RestartResult,
)
from facefinder_cli.errors import Hint, InputError
from facefinder_cli.images import write_png
from facefinder_cli.images.common import plural
from facefinder_cli.names import csv_writer, printable
from facefinder_cli.outputs import OVERWRITE, atomic_write

__all__ = [
    "Run",
    "Truth",
    "display_range",
    "load_checkpoint",
    "load_params",
    "load_run",
    "load_truth",
    "result_path",
    "save_checkpoint",
    "save_run",
    "save_truth",
    "view_zoom",
]

RESULT = "result.npz"
HISTORY = "history.csv"
POSITIONS = "positions.csv"
ELBO_PLOT = "elbo.png"
ERROR_COLUMNS = (
    "face_rmse",
    "background_rmse",
    "background_rmse_seen",
    "background_rmse_hidden",
    "positions_right",
)

_PARAMS = ("face", "background", "noise_std", "prior")


def _params_arrays(prefix: str, p: Params) -> dict[str, Any]:
    return {prefix + k: np.asarray(getattr(p, k)) for k in _PARAMS}


def _params_from(z: dict[str, np.ndarray], prefix: str) -> Params:
    return Params(
        z[prefix + "face"],
        z[prefix + "background"],
        float(z[prefix + "noise_std"]),
        z[prefix + "prior"],
    )


def _require(z: dict[str, np.ndarray], p: Path, what: str, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in z]
    if missing:
        listed = ", ".join(f"'{k}'" for k in missing)
        raise InputError(f"{p}: not {what} (no {listed} in it)")


def _checked_params(z: dict[str, np.ndarray], p: Path) -> Params:
    """The parameters stored in ``z`` (read from ``p``), checked so that a damaged or foreign
    file is one line naming the file and the key, before any work."""
    arrays = {}
    for key in ("face", "background", "prior"):
        arr = z[key]
        if arr.ndim != 2 or arr.dtype.kind not in "biuf" or arr.size == 0:
            raise InputError(f"{p}: '{key}' is not a 2-D array of numbers")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise InputError(f"{p}: '{key}' holds NaN or infinite values")
        arrays[key] = arr
    for key in ("face", "background"):
        top = float(np.abs(arrays[key]).max())
        if top > engine.LARGEST_VALUE:
            raise InputError(f"{p}: '{key}' holds values up to {top:.3g}, too large to use")
    noise = z["noise_std"]
    if noise.shape != () or noise.dtype.kind not in "biuf":
        what = f"shape {noise.shape}" if noise.shape != () else f"dtype {noise.dtype}"
        raise InputError(f"{p}: 'noise_std' is not a single number ({what})")
    s = float(noise)
    if not (math.isfinite(s) and 0 < s <= engine.LARGEST_VALUE):
        raise InputError(f"{p}: 'noise_std' is {s!r}; it must be positive and at most 1e100")
    (h, w), (H, W) = arrays["face"].shape, arrays["background"].shape
    if h > H or w > W:
        raise InputError(f"{p}: its face ({h}x{w}) is larger than its background ({H}x{W})")
    prior = arrays["prior"]
    if prior.shape != (H - h + 1, W - w + 1):
        raise InputError(
            f"{p}: 'prior' has shape {prior.shape}; a {h}x{w} face in {H}x{W} images has "
            f"{(H - h + 1, W - w + 1)} positions"
        )
    if (prior < 0).any() or not prior.sum() > 0:
        raise InputError(f"{p}: 'prior' is not a distribution (negative values or a zero sum)")
    return Params(arrays["face"], arrays["background"], s, prior / prior.sum())


@dataclass(frozen=True)
class Run:
    """A run read back from disk.

    ``params`` is None when only a ``history.csv`` was found. ``errors`` holds the per-iteration
    errors against a known truth (``face_rmse``, ``background_rmse``, ..., ``positions_right``)
    when the fit was given one: see :func:`facefinder_cli.synthetic.errors`.
    """

    source: str
    elbo: np.ndarray
    log_likelihood: np.ndarray
    seconds: np.ndarray
    n_values: int
    prior_fixed_until: int
    params: Params | None = None
    method: str = ""
    init: str = ""
    errors: dict[str, np.ndarray] = field(default_factory=dict)
    data: str = ""  # the input it was fitted on, from its settings ("" for a history.csv)
    n_images: int = 0  # the images it was fitted on (0 for a history.csv)
    passes: np.ndarray | None = None  # passes over the images (None: not recorded)


def _history_rows(result: FitResult, errors: dict[str, np.ndarray]) -> str:
    h = result.restarts[result.best_restart]
    n_values = result.positions.shape[0] * result.background.size
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    extra = [c for c in ERROR_COLUMNS if c in errors]
    head = ["iteration", "elbo", "log_likelihood", "seconds", "prior_fixed", "n_values", "gain"]
    head.append("passes")
    w.writerow([*head, *extra])
    for t in range(len(result.elbo)):
        w.writerow(
            [
                t,
                repr(float(result.elbo[t])),
                repr(float(result.log_likelihood[t])),
                f"{result.seconds[t]:.6f}",
                int(0 < t <= h.prior_fixed_until),  # this M-step held the prior
                n_values,
                repr(float(result.gain[t])),
                int(result.passes[t]),
                *(repr(float(errors[c][t])) for c in extra),
            ]
        )
    return out.getvalue()


def _settings_record(settings: FitSettings, options: dict[str, Any]) -> dict[str, Any]:
    """One record of a fit's settings and the caller's options (whose names must differ)."""
    record = settings.to_dict()
    clash = sorted(set(record) & set(options))
    if clash:
        raise ValueError(f"options {clash} have the names of settings")
    return {**record, **options}


def _padded(rows: Sequence[np.ndarray]) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


#: The face-size search's table in a run folder (``fit --face-size auto``).
SIZES = "sizes.csv"
_SIZE_COLUMNS = ("height", "width", "fit", "log_likelihood", "criterion", "n_params",
                 "iterations", "passes", "seconds")  # fmt: skip


def size_rows(choice: engine.SizeChoice) -> dict[str, Any]:
    """The face-size search as a JSON-able record (kept in checkpoints, written by
    :func:`save_sizes`)."""
    return {
        "trials": [
            [
                t.size[0],
                t.size[1],
                "full" if t.full else "short",
                t.log_likelihood,
                t.criterion,
                t.n_params,
                t.n_iter,
                t.passes,
                round(t.seconds, 3),
            ]
            for t in choice.trials
        ],  # fmt: skip
        "chosen": list(choice.size),
        "margin": choice.margin if math.isfinite(choice.margin) else None,
        "rival": list(choice.rival) if choice.rival else None,
        "at_edge": choice.at_edge,
        "range": [list(choice.lo), list(choice.hi)],
        "larger_fits_as_well": (
            list(choice.larger_fits_as_well) if choice.larger_fits_as_well else None
        ),
        "clear": choice.clear,
        "passes": choice.passes,
        "seconds": round(choice.seconds, 3),
    }


def add_full_fit(record: dict[str, Any], result: FitResult) -> None:
    """Add the chosen size's full fit (the command line's own) to the search's ``record``,
    with its seconds as history.csv counts them: every restart's, over every session of a
    resumed fit (the time since --resume alone, as before, was a tenth of it)."""
    seconds = float(sum(r.seconds[-1] for r in result.restarts))
    h, w = result.face.shape
    K = result.positions.shape[0]
    n = engine.sizes.n_params((h, w), result.background.shape)
    ll = float(result.log_likelihood[-1])
    passes = int(sum(int(r.passes[-1]) for r in result.restarts))  # (as --json counts them)
    record["trials"].append(
        [h, w, "full", ll, ll - 0.5 * n * math.log(K), n, result.n_iter, passes, round(seconds, 3)]
    )


def size_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The search's outcome for ``--json``: the record without its table."""
    short = sum(1 for row in record["trials"] if row[2] == "short")
    return {k: v for k, v in record.items() if k != "trials"} | {
        "fits": len(record["trials"]),
        "short_fits": short,
    }


def size_verdict(summary: dict[str, Any]) -> str:
    """One line saying which size was chosen, and how clearly."""
    h, w = summary["chosen"]
    head = (f"chose the face size {h}x{w} from {plural(summary['short_fits'], 'short fit')} "
            f"({summary['seconds']:.1f} s)")  # fmt: skip
    if summary.get("at_edge"):
        (a, b), (c, d) = summary["range"]
        smallest = engine.sizes.SMALLEST_SIDE
        if (h, w) == (a, b) and max(a, b) <= smallest:  # no face is looked for below it
            return (
                f"{head}; unclear: it is the smallest size searched ({a}x{b}), so the images "
                "may not show the face's size (too few of them for their noise?)"
            )
        return (
            f"{head}; unclear: it is on the edge of the range searched, {a}x{b}:{c}x{d}, and "
            "the best size may lie outside it"
        )
    larger = summary["larger_fits_as_well"]
    if larger:
        return (
            f"{head}; unclear: the larger {larger[0]}x{larger[1]} fits the images as well, so "
            "they do not show where the face ends (a flat background around it?), and the "
            "smaller was chosen"
        )
    rival, margin = summary["rival"], summary["margin"]
    if rival is None:
        return f"{head}; no other size was tried more than a pixel away"
    what = "clear" if margin >= engine.sizes.CLEAR else "unclear"
    return (
        f"{head}; {what}: the best size more than a pixel away, {rival[0]}x{rival[1]}, scores "
        f"{margin:.1f} nats lower"
    )


def _run_plot(name: str) -> tuple[str, str]:
    """What a plot of a run folder is drawn as (its stamp): fit's, under its name there."""
    return ("fit", name)


def save_sizes(folder: str | os.PathLike, record: dict[str, Any], *, plots: bool) -> list[str]:
    """Write the face-size search into ``folder``: ``sizes.csv`` (one row per fit), and with
    ``plots`` ``sizes.png`` (the criterion over heights and widths)."""
    folder = Path(folder)
    with atomic_write(folder / SIZES, "w") as f:
        w = csv_writer(f)
        w.writerow(_SIZE_COLUMNS)
        for row in record["trials"]:
            w.writerow([repr(v) if isinstance(v, float) else v for v in row])
    if not plots:
        return [SIZES]
    from facefinder_cli.plotting import plot_sizes  # imports matplotlib

    with atomic_write(folder / "sizes.png") as f:
        plot_sizes(record["trials"], tuple(record["chosen"]), f, output=_run_plot("sizes.png"))
    return [SIZES, "sizes.png"]


def save_run(
    folder: str | os.PathLike,
    result: FitResult,
    *,
    names: Sequence[str],
    options: dict[str, Any] | None = None,
    errors: dict[str, np.ndarray] | None = None,
    zoom: int = 1,
    plots: bool = True,
) -> list[str]:
    """Write a run into ``folder`` (which must exist, e.g. a temporary folder being built):
    ``result.npz``, PNGs of the face, background, prior and ELBO curve (the last two only with
    ``plots``: they need matplotlib), ``history.csv`` and ``positions.csv``. ``result.npz``'s
    ``settings`` (JSON) are the fit's settings (:class:`~facefinder_cli.engine.FitSettings`)
    with ``options``, the caller's own (e.g. the command line's input path).

    Returns the names of the files written.
    """
    folder = Path(folder)
    n_values = result.positions.shape[0] * result.background.size
    errors = errors or {}
    restarts = result.restarts
    arrays: dict[str, Any] = dict(
        face=result.face,
        background=result.background,
        noise_std=result.noise_std,
        prior=result.prior,
        elbo=result.elbo,
        log_likelihood=result.log_likelihood,
        gain=result.gain,
        seconds=result.seconds,
        passes=result.passes,
        final_elbo=result.final_elbo,
        n_iter=result.n_iter,
        converged=result.converged,
        positions=result.positions,
        position_probability=result.position_probability,
        unidentified=result.unidentified,
        noise_floored=result.noise_floored,
        method=result.method,
        init=result.init,
        seed_entropy=str(result.seed_entropy),
        best_restart=result.best_restart,
        prior_fixed_until=restarts[result.best_restart].prior_fixed_until,
        names=np.array([str(n) for n in names]),
        restart_elbo=_padded([r.elbo for r in restarts]),
        restart_log_likelihood=_padded([r.log_likelihood for r in restarts]),
        restart_gain=_padded([r.gain for r in restarts]),
        restart_seconds=_padded([r.seconds for r in restarts]),
        restart_passes=_padded([r.passes for r in restarts]),
        restart_n_iter=np.array([r.n_iter for r in restarts]),
        restart_converged=np.array([r.converged for r in restarts]),
        # each restart's mean held-out probability of its positions (restarts="auto" asks
        # the first whether to run more)
        restart_mean_probability=np.array([r.mean_probability for r in restarts]),
        settings=json.dumps(_settings_record(result.settings, options or {}), sort_keys=True),
        version=__version__,
        **{k: np.asarray(v) for k, v in errors.items()},
    )
    with atomic_write(folder / RESULT) as f:
        np.savez_compressed(f, **arrays)
    with atomic_write(folder / HISTORY, "w") as f:
        f.write(_history_rows(result, errors))
    with atomic_write(folder / POSITIONS, "w") as f:
        w = csv_writer(f)
        w.writerow(["image", "row", "column", "probability"])
        for name, (r, c), p in zip(names, result.positions, result.position_probability):
            w.writerow([printable(name), int(r), int(c), f"{p:.6g}"])
    lo, hi = display_range(result.face, result.background)
    write_png(folder / "face.png", result.face, lo, hi, zoom=zoom)
    write_png(folder / "background.png", result.background, lo, hi, zoom=zoom)
    if not plots:
        return [RESULT, "face.png", "background.png", HISTORY, POSITIONS]
    from facefinder_cli.plotting import Curve, plot_curves, plot_prior  # imports matplotlib

    with atomic_write(folder / "prior.png") as f:
        plot_prior(result.prior, f, output=_run_plot("prior.png"))
    h = restarts[result.best_restart]
    curve = Curve(
        f"{result.method} EM, {result.init} start",
        result.elbo,
        result.log_likelihood,
        result.seconds,
        n_values,
        h.prior_fixed_until,
    )
    with atomic_write(folder / ELBO_PLOT) as f:
        plot_curves([curve], f, output=_run_plot(ELBO_PLOT))
    return [RESULT, "face.png", "background.png", "prior.png", "elbo.png", HISTORY, POSITIONS]


def montage(faces: np.ndarray, fill: float, gap: int = 2) -> np.ndarray:
    """The faces (N, h, w) side by side, ``gap`` pixels of ``fill`` between them."""
    N, h, w = faces.shape
    out = np.full((h, N * w + (N - 1) * gap), fill, dtype=np.float64)
    for m, face in enumerate(faces):
        out[:, m * (w + gap) : m * (w + gap) + w] = face
    return out


def save_mixture_run(
    folder: str | os.PathLike,
    result: engine.MixtureResult,
    *,
    names: Sequence[str],
    options: dict[str, Any] | None = None,
    errors: dict[str, Any] | None = None,
    zoom: int = 1,
    plots: bool = True,
) -> list[str]:
    """Write a fit of several faces into ``folder``: ``result.npz``, ``face_1.png`` ... and
    ``faces.png`` (side by side), ``background.png``, ``history.csv``, ``positions.csv`` (each
    image's face and position) and, with ``plots``, ``prior.png``. Returns the names."""
    folder = Path(folder)
    p = result.params
    N = len(p.weights)
    record = _settings_record(result.settings, options or {}) | {"faces": N}
    arrays: dict[str, Any] = dict(
        faces=p.faces,
        background=p.background,
        noise_std=p.noise_std,
        weights=p.weights,
        prior=p.prior,
        elbo=result.elbo,
        log_likelihood=result.log_likelihood,
        seconds=result.history_seconds,
        prior_fixed_until=result.prior_fixed_until,
        n_iter=result.n_iter,
        converged=result.converged,
        face_of_image=result.faces_of_images,
        positions=result.positions,
        position_probability=result.probability,
        face_probability=result.face_probability,
        best_restart=result.best_restart,
        restart_log_likelihood=result.restart_log_likelihoods,
        names=np.array([str(n) for n in names]),
        settings=json.dumps(record, sort_keys=True),
        version=__version__,
        **{k: np.asarray(v) for k, v in (errors or {}).items()},
    )
    with atomic_write(folder / RESULT) as f:
        np.savez_compressed(f, **arrays)
    n_values = len(result.faces_of_images) * p.background.size
    with atomic_write(folder / HISTORY, "w") as f:  # (the columns of a one-face fit's)
        w = csv_writer(f)
        w.writerow(["iteration", "elbo", "log_likelihood", "seconds", "prior_fixed",
                    "n_values", "gain", "passes"])  # fmt: skip
        for t, (e, ll) in enumerate(zip(result.elbo, result.log_likelihood)):
            gain = (e - result.elbo[t - 1]) / n_values if t else math.nan
            held = int(0 < t <= result.prior_fixed_until)
            seconds = f"{result.history_seconds[t]:.6f}"
            w.writerow([t, repr(float(e)), repr(float(ll)), seconds, held, n_values,
                        repr(float(gain)), t])  # fmt: skip
    with atomic_write(folder / POSITIONS, "w") as f:
        w = csv_writer(f)
        w.writerow(["image", "face", "row", "column", "probability", "face_probability"])
        rows = zip(names, result.faces_of_images, result.positions, result.probability,
                   result.face_probability)  # fmt: skip
        for name, m, (r, c), prob, face_p in rows:
            w.writerow([printable(name), int(m) + 1, int(r), int(c), f"{prob:.6g}",
                        f"{face_p:.6g}"])  # fmt: skip
    lo, hi = display_range(p.faces, p.background)
    written = [RESULT, HISTORY, POSITIONS]
    for m, face in enumerate(p.faces):
        write_png(folder / f"face_{m + 1}.png", face, lo, hi, zoom=zoom)
        written.append(f"face_{m + 1}.png")
    write_png(folder / "faces.png", montage(p.faces, hi), lo, hi, zoom=zoom)
    write_png(folder / "background.png", p.background, lo, hi, zoom=zoom)
    written += ["faces.png", "background.png"]
    if plots:
        from facefinder_cli.plotting import Curve, plot_curves, plot_prior  # imports matplotlib

        with atomic_write(folder / "prior.png") as f:
            plot_prior(p.prior, f, output=_run_plot("prior.png"))
        curve = Curve(
            f"{result.settings.method} EM, {N} faces",
            result.elbo,
            result.log_likelihood,
            result.history_seconds,
            n_values,
            result.prior_fixed_until,
            passes=np.arange(len(result.elbo), dtype=np.float64),
        )
        with atomic_write(folder / ELBO_PLOT) as f:
            plot_curves([curve], f, output=_run_plot(ELBO_PLOT))
        written += ["prior.png", "elbo.png"]
    return written


def save_faces_search(folder: str | os.PathLike, choice: engine.FacesChoice) -> list[str]:
    """Write ``faces.csv``: every number of faces that ``fit --faces auto`` tried."""
    with atomic_write(Path(folder) / "faces.csv", "w") as f:
        w = csv_writer(f)
        w.writerow(["faces", "log_likelihood", "criterion", "n_params", "iterations", "seconds"])
        for n, ll, criterion, n_params, n_iter, seconds in choice.trials:
            w.writerow([n, repr(ll), repr(criterion), n_params, n_iter, round(seconds, 3)])
    return ["faces.csv"]


def mixture_errors(result: engine.MixtureResult, truth: Truth) -> dict[str, Any]:
    """The fit against the truth of data of several faces, up to relabelling: the fitted
    faces matched to the true ones (the matching that maximises the summed correlations),
    each matched face's correlation and RMSE, the share of images given their true face,
    and the share given their true face and position."""
    true, fitted = truth.faces, result.params.faces
    N = len(true)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        den = math.sqrt(float(a @ a) * float(b @ b))
        return float(a @ b) / den if den > 0 else 0.0

    from scipy.optimize import linear_sum_assignment

    table = np.array([[corr(true[i], fitted[j]) for j in range(N)] for i in range(N)])
    _, perm = linear_sum_assignment(table, maximize=True)  # (N! orderings: not by trying)
    label_of = np.empty(N, dtype=np.intp)  # fitted face j -> true face
    for i, j in enumerate(perm):
        label_of[j] = i
    given = label_of[result.faces_of_images]
    right_face = given == truth.labels
    return {
        "face_match": [int(j) + 1 for j in perm],  # true face i is fitted face perm[i]
        "face_correlation": [round(float(table[i, j]), 6) for i, j in enumerate(perm)],
        "face_rmse": [
            float(np.sqrt(np.mean((true[i] - fitted[j]) ** 2))) for i, j in enumerate(perm)
        ],  # fmt: skip
        "faces_right": float(np.mean(right_face)),
        "positions_right": float(
            np.mean(right_face & np.all(result.positions == truth.positions, axis=1))
        ),
    }


def view_zoom(image_shape: tuple[int, int], target: int = 256, most: int = 8) -> int:
    """The default upscaling of the PNGs: the smallest integer that makes images at least
    ``target`` pixels on their longer side, between 1 and ``most``."""
    return max(1, min(most, -(-target // max(image_shape))))


def display_range(*arrays: np.ndarray) -> tuple[float, float]:
    """One intensity range for face and background images, so they compare: 0..255 when both
    fit in it, else their joint minimum and maximum."""
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    return (0.0, 255.0) if lo >= 0 and hi <= 255 else (lo, hi)


def _npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` file written by facefinder (``what`` names it in errors)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        loaded = None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        try:
            with open(path, "rb") as f:
                zipped = f.read(4) == b"PK\x03\x04"  # a zip file, cut short or damaged
        except OSError:
            zipped = False
        if zipped:
            raise InputError(f"{path}: {what} is damaged or truncated")
        raise InputError(f"{path}: not {what} (expected an .npz file written by facefinder)")
    try:
        with loaded as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise InputError(f"{path}: {what} is damaged or truncated") from None


def result_path(path: str | os.PathLike, history: bool = True) -> Path:
    """The file a run is read from: ``path`` itself, or a run folder's ``result.npz`` (its
    ``history.csv`` if it has none and ``history``; else that is refused, as holding no
    fitted parameters)."""
    p = Path(path)
    if p.is_dir():
        if (p / RESULT).is_file():
            return p / RESULT
        if (p / HISTORY).is_file():
            if not history:
                raise InputError(f"{p}: holds a {HISTORY} but no {RESULT}: no fitted parameters")
            return p / HISTORY
        if (p / CHECKPOINT).is_file():
            raise InputError(
                f"{p}: holds a fit's {CHECKPOINT} (running, or interrupted), no result yet; an "
                "interrupted fit finishes with `facefinder ",
                Hint("resume", str(p), command="fit"),
                "`",
            )
        raise InputError(
            f"{p}: no {RESULT} or {HISTORY} in this folder"
            if history
            else f"{p}: no {RESULT} in this folder (not a run folder of facefinder fit)"
        )
    if not p.exists():
        broken = os.path.lexists(p)  # a link to nothing, or a loop of links: as load_stack says
        raise InputError(f"{p}: {'broken symbolic link' if broken else 'no such file or folder'}")
    return p


def _mixture_damage(faces, background, noise: float, weights, prior) -> str | None:
    """What is wrong with the parameters of a fit of several faces, naming the key; None if
    nothing."""
    if faces.ndim != 3 or 0 in faces.shape:
        return f"'faces' has shape {faces.shape}; expected (faces, height, width)"
    if background.ndim != 2:
        return f"'background' has shape {background.shape}; expected (height, width)"
    n, h, w = faces.shape
    H, W = background.shape
    if h > H or w > W:
        return f"its {h}x{w} faces are larger than its {H}x{W} background"
    if weights.shape != (n,):
        return f"'weights' has shape {weights.shape}; expected ({n},), one per face"
    if prior.shape != (H - h + 1, W - w + 1):
        return (
            f"'prior' has shape {prior.shape}; {h}x{w} faces in a {H}x{W} background take "
            f"{(H - h + 1, W - w + 1)} positions"
        )
    for key, values in (("faces", faces), ("background", background)):
        if not np.isfinite(values).all():
            return f"'{key}' holds values that are not finite"
    if not (math.isfinite(noise) and noise > 0):
        return f"'noise_std' is {noise:g}; it must be positive and finite"
    if not engine.SMALLEST_SCALE * engine.NOISE_FLOOR <= noise <= engine.LARGEST_VALUE:
        return f"'noise_std' is {noise:.3g}, out of the range the fit can compute with"
    for key, values in (("weights", weights), ("prior", prior)):
        if not (np.isfinite(values).all() and (values >= 0).all()):
            return f"'{key}' holds values that are negative or not finite"
        if abs(values.sum() - 1) >= 1e-6:
            return f"'{key}' sums to {values.sum():.6g}, not 1"
    return None


def load_mixture(path: str | os.PathLike) -> tuple[engine.MixtureParams, int, Path] | None:
    """The parameters of a fit of several faces (a run folder or its ``result.npz``), the
    number of images it was fitted to, and the file read; None if it is a fit of one face."""
    p = result_path(path, history=False)
    if p.suffix == ".csv":
        return None
    z = _npz(p, "a facefinder result")
    if "weights" in z and "faces" not in z and "face" not in z:
        raise InputError(f"{p}: a fit of several faces without its faces (no 'faces' in it)")
    if "faces" not in z or "face" in z:
        return None
    if "n_faces" in z and "face_of_image" not in z:  # (found by review)
        raise InputError(
            f"{p}: the checkpoint of an unfinished fit, not its result: carry on with "
            f"`facefinder fit --resume {shlex.quote(str(p.parent))}` first"
        )
    _require(z, p, "a fit of several faces", ["faces", "background", "noise_std", "weights",
                                               "prior", "face_of_image"])  # fmt: skip
    keys = ("faces", "background", "prior", "weights")
    try:
        faces, background, prior, weights = (np.asarray(z[k], dtype=np.float64) for k in keys)
        noise = float(np.asarray(z["noise_std"]))
    except (TypeError, ValueError):
        raise InputError(
            f"{p}: damaged (its {', '.join(keys)} or noise_std are not numbers)"
        ) from None
    damage = _mixture_damage(faces, background, noise, weights, prior)
    if damage is not None:
        raise InputError(f"{p}: damaged: {damage}")
    n_images = len(np.asarray(z["face_of_image"]))
    return engine.MixtureParams(faces, background, noise, weights, prior), n_images, p


def load_mixture_start(path: str | os.PathLike, n_faces: int) -> engine.MixtureParams:
    """Where a fit of ``n_faces`` faces starts with ``--init-from path``: a fit of that many
    faces (a run folder or its ``result.npz``), or a ``truth.npz`` of that many (its faces,
    background, noise and prior, the faces equally likely, as generate draws them)."""
    found = load_mixture(path)
    if found is not None:
        params, p = found[0], found[2]
    else:
        p = result_path(path)
        z = _npz(p, "a facefinder result or truth file")
        if "face" not in z:
            raise InputError(f"{p}: not a facefinder run or truth file (no 'face' or 'faces')")
        if "faces" not in z or "labels" not in z:
            raise InputError(
                f"{p}: a fit or truth of one face: --faces {n_faces} starts from a run or "
                f"truth of {n_faces} faces"
            )
        truth = load_truth(p)
        n = len(truth.faces)
        t = truth.params
        faces = np.asarray(truth.faces, dtype=np.float64)
        if not np.isfinite(faces).all() or np.abs(faces).max() > engine.LARGEST_VALUE:
            raise InputError(f"{p}: 'faces' holds NaN, infinite or too large values")
        params = engine.MixtureParams(faces, t.background, t.noise_std, np.full(n, 1 / n),
                                      t.prior)  # fmt: skip
    if len(params.faces) != n_faces:
        raise InputError(
            f"{p}: holds {len(params.faces)} faces, not {n_faces}: give --faces "
            f"{len(params.faces)}, or another start"
        )
    return params


def _load_mixture_run(z: dict[str, np.ndarray], p: Path) -> Run:
    """A fit of several faces as :func:`load_run` reads one (``params`` None: its faces are
    :func:`load_mixture`'s), for plot-elbo."""
    what = "a fit of several faces"
    _require(z, p, what, ["elbo", "log_likelihood", "seconds", "face_of_image", "background"])
    series = {}
    for key in ("elbo", "log_likelihood", "seconds"):
        arr = z[key]
        if arr.ndim != 1 or arr.dtype.kind not in "biuf" or arr.size == 0:
            raise InputError(f"{p}: '{key}' is not a list of numbers")
        series[key] = arr.astype(np.float64)
    if not len(series["elbo"]) == len(series["log_likelihood"]) == len(series["seconds"]):
        raise InputError(f"{p}: its histories have different lengths")
    try:
        record = json.loads(str(z["settings"])) if "settings" in z else {}
    except ValueError:
        record = {}
    K = len(np.asarray(z["face_of_image"]))
    return Run(
        source=str(p),
        n_values=K * int(np.asarray(z["background"]).size),
        prior_fixed_until=int(np.asarray(z.get("prior_fixed_until", 0))),
        method=f"{record.get('method', 'soft')} EM, {record.get('faces', '?')} faces",
        data=str(record.get("input", "")),
        n_images=K,
        passes=np.arange(len(series["elbo"]), dtype=np.float64),  # (one per iteration)
        **series,
    )


def _refuse_several_faces(z: dict[str, np.ndarray], p: Path) -> None:
    """One line for a result of ``fit --faces N`` where one face's parameters are wanted."""
    if "faces" in z and "face" not in z:
        n = np.shape(z["faces"])[0] if np.ndim(z["faces"]) else "several"
        raise InputError(
            f"{p}: a fit of {n} faces (fit --faces): a fit of one face cannot start from it; "
            f"give --faces {n}"
        )


def load_run(path: str | os.PathLike) -> Run:
    """Read a run from a ``result.npz``, a ``history.csv`` or a run folder."""
    p = result_path(path)
    if p.suffix == ".csv":
        return _load_history(p)
    z = _npz(p, "a facefinder result")
    what = "a facefinder result"
    if "faces" in z and "face" not in z:
        return _load_mixture_run(z, p)
    _require(z, p, what, [*_PARAMS, "elbo", "log_likelihood", "seconds", "positions"])
    params = _checked_params(z, p)
    series = {}
    for key in ("elbo", "log_likelihood", "seconds"):
        arr = z[key]
        if arr.ndim != 1 or arr.dtype.kind not in "biuf" or arr.size == 0:
            raise InputError(f"{p}: '{key}' is not a list of numbers")
        series[key] = arr.astype(np.float64)
    if len({len(v) for v in series.values()}) != 1:
        raise InputError(f"{p}: 'elbo', 'log_likelihood' and 'seconds' differ in length")
    positions = z["positions"]
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise InputError(f"{p}: 'positions' is not a table of (row, column) pairs")
    n_values = int(positions.shape[0]) * int(params.background.size)
    try:
        fixed = int(z.get("prior_fixed_until", 0))
    except (TypeError, ValueError):
        raise InputError(f"{p}: 'prior_fixed_until' is not a number") from None
    return Run(
        source=str(p),
        elbo=series["elbo"],
        log_likelihood=series["log_likelihood"],
        seconds=series["seconds"],
        n_values=n_values,
        n_images=int(positions.shape[0]),
        prior_fixed_until=fixed,
        params=params,
        method=str(z.get("method", "")),
        init=str(z.get("init", "")),
        errors={k: z[k] for k in ERROR_COLUMNS if k in z},
        data=_input_of(z),
        passes=_passes(z.get("passes"), len(series["elbo"])),
    )


#: Largest size of a value in a history that ``plot-elbo`` reads: a fit's log-likelihood is
#: some nats per pixel, and near float64's limit the plot's axes cannot be drawn.
_LARGEST_HISTORY_VALUE = 1e100


def _passes(values: Any, n: int) -> np.ndarray | None:
    """A run's record of passes over the images, if it has a sound one."""
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.shape != (n,) or arr.dtype.kind not in "biuf" or not np.isfinite(arr).all():
        return None
    return arr.astype(np.float64)


def _input_of(z: Any) -> str:
    """The input path a result was fitted on, from its settings ("" if it does not say)."""
    try:
        return str(json.loads(str(z["settings"])).get("input_path") or "")
    except (KeyError, ValueError, AttributeError):
        return ""


def _load_history(p: Path) -> Run:
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = set(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: cannot read ({err})") from None
    need = {"elbo", "log_likelihood", "seconds", "n_values"}
    if not need <= columns:
        raise InputError(f"{p}: not a facefinder history (needs columns {', '.join(sorted(need))})")
    if not rows:  # (a fit writes its start's row at least)
        raise InputError(f"{p}: a history with its header but no rows (truncated?)")
    for line, r in enumerate(rows, start=2):
        if None in r or None in r.values():  # DictReader's marks of too many or too few
            raise InputError(
                f"{p}: line {line} does not have the header's {len(rows[0])} columns (truncated?)"
            )
    try:
        col = {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != "iteration"}
    except ValueError:
        raise InputError(f"{p}: a value in the history is not a number") from None
    for k in ("elbo", "log_likelihood", "seconds"):
        if not np.isfinite(col[k]).all():
            raise InputError(f"{p}: column {k} holds a value that is not finite")
        if np.abs(col[k]).max() > _LARGEST_HISTORY_VALUE:  # (matplotlib's axes fail on them)
            raise InputError(
                f"{p}: column {k} holds a value beyond ±{_LARGEST_HISTORY_VALUE:g}, which no fit "
                "makes (an edited history?)"
            )
    n = col["n_values"]
    if not (n[0] >= 1 and n[0] == int(n[0]) and (n == n[0]).all()):
        raise InputError(f"{p}: column n_values must hold one positive whole number")
    return Run(
        source=str(p),
        elbo=col["elbo"],
        log_likelihood=col["log_likelihood"],
        seconds=col["seconds"],
        n_values=int(col["n_values"][0]),
        prior_fixed_until=int(col.get("prior_fixed", np.zeros(1)).sum()),
        errors={k: col[k] for k in ERROR_COLUMNS if k in col},
        passes=_passes(col.get("passes"), len(col["elbo"])),
    )


def load_params(path: str | os.PathLike) -> Params:
    """The parameters of a run (folder or ``result.npz``) or of a ``truth.npz``."""
    p = result_path(path, history=False)
    if p.suffix == ".csv":
        raise InputError(f"{p}: a history holds no parameters; give the run folder or result.npz")
    z = _npz(p, "a facefinder result or truth file")
    _refuse_several_faces(z, p)
    if "faces" in z and len(z["faces"]) > 1:
        raise InputError(
            f"{p}: the truth of {len(z['faces'])} faces: a fit of one face cannot start from it"
        )
    _require(z, p, "a facefinder result or truth file", _PARAMS)
    return _checked_params(z, p)


@dataclass(frozen=True)
class Truth:
    """What ``facefinder generate`` wrote beside the data: the parameters and every position."""

    params: Params
    positions: np.ndarray
    faces: np.ndarray | None = None  # (N, h, w) for data of several faces (face = faces[0])
    labels: np.ndarray | None = None  # (K,) each image's face, for data of several faces


def save_truth(
    path: str | os.PathLike,
    truth: Params,
    positions: np.ndarray,
    *,
    overwrite: bool = False,
    faces: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> None:
    """Write the truth of a synthetic data set (``facefinder generate``) for ``fit --truth``
    (``overwrite=True`` to replace a file there)."""
    with atomic_write(path, overwrite=overwrite) as f:
        write_truth(f, truth, positions, faces=faces, labels=labels)


def write_truth(
    f: IO[bytes],
    truth: Params,
    positions: np.ndarray,
    *,
    faces: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> None:
    """The truth of a synthetic data set, as an ``.npz`` file, to the binary file ``f``; for
    several faces, with ``faces`` (N, h, w) and each image's face ``labels`` too."""
    extra = {} if faces is None else {"faces": faces, "labels": labels}
    np.savez_compressed(
        f,
        face=truth.face,
        background=truth.background,
        noise_std=truth.noise_std,
        prior=truth.prior,
        positions=positions,
        version=__version__,
        **extra,
    )


def load_truth(path: str | os.PathLike) -> Truth:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    z = _npz(p, "a truth file")
    _require(z, p, "a truth file", [*_PARAMS, "positions"])
    params = _checked_params(z, p)
    positions = z["positions"]
    if positions.ndim != 2 or positions.shape[1] != 2 or positions.dtype.kind not in "iu":
        raise InputError(
            f"{p}: 'positions' has shape {positions.shape}; expected one (row, column) pair of "
            "integers per image, shape (n_images, 2)"
        )
    Dh, Dw = params.prior.shape
    if len(positions) and (
        positions.min() < 0 or positions[:, 0].max() >= Dh or positions[:, 1].max() >= Dw
    ):
        raise InputError(
            f"{p}: 'positions' lie outside the {Dh}x{Dw} positions of its face in its images"
        )
    faces = labels = None
    if "faces" in z:
        faces, labels = z["faces"], z.get("labels")
        if (
            faces.ndim != 3
            or faces.shape[1:] != params.face.shape
            or labels is None
            or labels.shape != (len(positions),)
            or labels.dtype.kind not in "iu"
            or (len(labels) and (labels.min() < 0 or labels.max() >= len(faces)))
        ):
            raise InputError(
                f"{p}: 'faces' and 'labels' do not describe the faces of its images (faces of "
                "its face's size, one face index per image)"
            )
        faces, labels = faces.astype(np.float64), labels.astype(np.intp)
    return Truth(params, positions.astype(np.intp), faces, labels)


# ---------------------------------------------------------------------------------------------
# Checkpoints of an interrupted fit
# ---------------------------------------------------------------------------------------------

CHECKPOINT = "checkpoint.npz"


#: How later restarts start (see ``engine.loop._start``), as checkpoints record it: a fit of
#: several restarts from a checkpoint without it, or with another, began under another scheme.
RESTART_STARTS = "moved-windows, sampled-6"
#: The earlier schemes, and the first restart that starts otherwise in this one (a fit of no
#: more restarts than that resumes alike). Without a scheme: before the moved windows.
_EARLIER_STARTS = {"": 1, "moved-windows": 6, "moved-windows, sampled": 3}


def save_checkpoint(
    path: str | os.PathLike,
    state: Checkpoint,
    options: dict[str, Any],
    extra: dict[str, Any],
    *,
    overwrite: bool = True,
    in_run_folder: bool = False,
) -> None:
    """Write a fit's :class:`~facefinder_cli.engine.Checkpoint` to ``path``, atomically, with
    ``options`` (the caller's own settings, JSON-able: stored beside the fit's settings as
    ``result.npz`` stores them) and ``extra`` (JSON-able, e.g. per-iteration errors). Every
    float is stored exactly, so the resumed fit equals the uninterrupted one bit for bit. A
    fit of several faces' :class:`~facefinder_cli.engine.MixtureCheckpoint` goes into the
    same file, known by its ``n_faces``. ``in_run_folder``: ``path`` lies in a run folder in
    place (not one being built), whose marker then records it as facefinder's."""
    if isinstance(state, engine.MixtureCheckpoint):
        arrays = _mixture_checkpoint_arrays(state, options, extra)
        with atomic_write(path, overwrite=overwrite, in_marked_folder=in_run_folder) as f:
            np.savez(f, **arrays)
        return
    arrays: dict[str, Any] = {
        "settings": json.dumps(_settings_record(state.settings, options), sort_keys=True),
        "start": state.start or "",
        "data_fingerprint": json.dumps(state.data, sort_keys=True),
        "restart": state.restart,
        "iteration": state.iteration,
        "elbo": np.array(state.elbo, dtype=float),
        "log_likelihood": np.array(state.log_likelihood, dtype=float),
        "gain": np.array(state.gain, dtype=float),
        "seconds": np.array(state.seconds, dtype=float),
        "passes": np.array(state.passes, dtype=np.int64),
        "converged": state.converged,
        "prior_free": state.prior_free,
        "prior_fixed_until": state.prior_fixed_until,
        "unidentified": state.unidentified,
        "noise_floored": state.noise_floored,
        "jumped": state.jumped,
        "rng_state": json.dumps(state.rng_state),
        "extra": json.dumps(extra, sort_keys=True),
        "n_finished": len(state.finished),
        "version": __version__,
        "restart_scheme": RESTART_STARTS,
        **_params_arrays("", state.params),
    }
    if (
        state.settings.restarts == "auto"
        or state.settings.restarts <= _EARLIER_STARTS["moved-windows"]
    ):
        # as the version before wrote it, which then resumes it alike; with more restarts
        # it finds none and refuses (it began restart 6 otherwise)
        arrays["restart_starts"] = "moved-windows"
    for i, done in enumerate(state.finished):
        h = done.history
        arrays.update(_params_arrays(f"finished{i}_", done.params))
        arrays.update(
            {
                f"finished{i}_init": h.init,
                f"finished{i}_elbo": h.elbo,
                f"finished{i}_log_likelihood": h.log_likelihood,
                f"finished{i}_gain": h.gain,
                f"finished{i}_seconds": h.seconds,
                f"finished{i}_passes": h.passes,
                f"finished{i}_n_iter": h.n_iter,
                f"finished{i}_converged": h.converged,
                f"finished{i}_final_elbo": h.final_elbo,
                f"finished{i}_prior_fixed_until": h.prior_fixed_until,
                f"finished{i}_positions": done.positions,
                f"finished{i}_probability": done.probability,
                f"finished{i}_unidentified": done.unidentified,
                f"finished{i}_noise_floored": done.noise_floored,
            }
        )
    with atomic_write(path, overwrite=overwrite, in_marked_folder=in_run_folder) as f:
        np.savez(f, **arrays)


def load_checkpoint(path: str | os.PathLike) -> tuple[Checkpoint, dict[str, Any], dict[str, Any]]:
    """Read what :func:`save_checkpoint` wrote: the checkpoint, the caller's ``options`` and
    ``extra``. ``path`` is the checkpoint file or the run folder holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        if (p.parent / RESULT).is_file():
            raise InputError(f"{path}: the fit is complete ({RESULT}): nothing to resume")
        if os.path.lexists(p):  # a folder, a link to nothing, a device by that name
            raise InputError(f"{p}: not a checkpoint file: nothing to resume")
        raise InputError(f"{path}: no {CHECKPOINT} here: nothing to resume")
    z = _npz(p, "a checkpoint")
    if "n_faces" in z:
        return _load_mixture_checkpoint(z, p)
    if "gain" not in z or "start" not in z or "jumped" not in z:
        raise InputError(
            f"{p}: a checkpoint of an earlier format (facefinder {z.get('version', '< 0.1')}), "
            "which this version cannot resume: fit again with ",
            OVERWRITE,
        )
    saved, engine_fields = _saved_settings(z, p)
    restarts = saved.get("restarts")  # (its type is checked with the other settings below)
    key = next((k for k in ("restart_scheme", "restart_starts") if k in z), None)
    scheme = "" if key is None else str(z[key])  # (restart_starts: as earlier versions wrote)
    differs = _EARLIER_STARTS.get(scheme, 1) if scheme != RESTART_STARTS else None
    median = isinstance(restarts, int) and saved.get("init") == "median"
    if median and differs is not None and restarts > differs:
        raise InputError(
            f"{p}: a checkpoint whose later restarts started otherwise (made by another build "
            f"of facefinder {z.get('version', '< 0.1')}), which this one cannot resume: fit "
            "again with ",
            OVERWRITE,
        )
    with _reading_checkpoint(p):
        finished = []
        for i in range(int(z["n_finished"])):
            f = f"finished{i}_"
            history = RestartHistory(
                init=str(z[f + "init"]),
                elbo=z[f + "elbo"],
                log_likelihood=z[f + "log_likelihood"],
                gain=z[f + "gain"],
                seconds=z[f + "seconds"],
                passes=z[f + "passes"],
                n_iter=int(z[f + "n_iter"]),
                converged=bool(z[f + "converged"]),
                final_elbo=float(z[f + "final_elbo"]),
                prior_fixed_until=int(z[f + "prior_fixed_until"]),
                mean_probability=float(np.mean(z[f + "probability"])),
            )
            finished.append(
                RestartResult(
                    _params_from(z, f),
                    history,
                    z[f + "positions"],
                    z[f + "probability"],
                    z[f + "unidentified"],
                    bool(z[f + "noise_floored"]),
                )
            )
        settings = FitSettings.from_dict({k: v for k, v in saved.items() if k in engine_fields})
        options = {k: v for k, v in saved.items() if k not in engine_fields}
        state = Checkpoint(
            settings=settings,
            start=str(z["start"]) or None,
            data=json.loads(str(z["data_fingerprint"])),
            finished=tuple(finished),
            restart=int(z["restart"]),
            iteration=int(z["iteration"]),
            params=_params_from(z, ""),
            elbo=tuple(float(v) for v in z["elbo"]),
            log_likelihood=tuple(float(v) for v in z["log_likelihood"]),
            gain=tuple(float(v) for v in z["gain"]),
            seconds=tuple(float(v) for v in z["seconds"]),
            passes=tuple(int(v) for v in z["passes"]),
            converged=bool(z["converged"]),
            prior_free=bool(z["prior_free"]),
            prior_fixed_until=int(z["prior_fixed_until"]),
            unidentified=z["unidentified"],
            noise_floored=bool(z["noise_floored"]),
            jumped=bool(z["jumped"]),
            rng_state=json.loads(str(z["rng_state"])),
        )
        extra = _extra_record(z, p)
    return state, options, extra


@contextlib.contextmanager
def _reading_checkpoint(p: Path) -> Iterator[None]:
    """A missing or damaged entry of the checkpoint ``p``, read within, as one line."""
    try:
        yield
    except InputError:
        raise
    except KeyError as err:
        raise InputError(f"{p}: not a complete facefinder checkpoint (no {err} in it)") from None
    except (ValueError, TypeError) as err:
        raise InputError(
            f"{p}: not a complete facefinder checkpoint (a damaged value: {err})"
        ) from None


def _extra_record(z: dict[str, np.ndarray], p: Path) -> dict[str, Any]:
    """The caller's ``extra`` record stored in a checkpoint."""
    extra = json.loads(str(z["extra"]))
    if not isinstance(extra, dict):
        raise InputError(f"{p}: not a complete facefinder checkpoint (its extra record is damaged)")
    return extra


def _saved_settings(z: dict[str, np.ndarray], p: Path) -> tuple[dict[str, Any], set[str]]:
    """A checkpoint's record of settings, and the names of the engine's settings in it."""
    try:
        saved = json.loads(str(z.get("settings", "")))
    except ValueError:
        saved = None
    if not isinstance(saved, dict):
        raise InputError(f"{p}: not a facefinder checkpoint: its record of settings is damaged")
    engine_fields = {f.name for f in dataclasses.fields(FitSettings)}
    if not engine_fields <= set(saved):
        lacking = ", ".join(sorted(engine_fields - set(saved)))
        raise InputError(
            f"{p}: made by another version of facefinder (its settings lack {lacking}), which "
            "this one cannot resume: fit again with ",
            OVERWRITE,
        )
    return saved, engine_fields


_MIXTURE_PARAMS = ("faces", "background", "noise_std", "weights", "prior")
_MIXTURE_PER_IMAGE = ("faces_of_images", "positions", "probability", "face_probability")


def _mixture_checkpoint_arrays(
    state: engine.MixtureCheckpoint, options: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """What :func:`save_checkpoint` stores of a fit of several faces."""
    one = state.one
    arrays: dict[str, Any] = {
        "settings": json.dumps(_settings_record(state.settings, options), sort_keys=True),
        "data_fingerprint": json.dumps(state.data, sort_keys=True),
        "n_faces": state.n_faces,
        "restart": state.restart,
        "iteration": state.iteration,
        "elbo": np.array(state.elbo, dtype=float),
        "log_likelihood": np.array(state.log_likelihood, dtype=float),
        "seconds": np.array(state.seconds, dtype=float),
        "held": state.held,
        "released": state.released,
        "prior_free": state.prior_free,
        "converged": state.converged,
        "rng_state": json.dumps(state.rng_state),
        "extra": json.dumps(extra, sort_keys=True),
        "n_finished": len(state.finished),
        "version": __version__,
        "start": state.start or "",
        **{k: np.asarray(getattr(state.params, k)) for k in _MIXTURE_PARAMS},
    }
    if one is not None:  # (None: a given start)
        arrays.update(one_face=one.face, one_background=one.background,
                      one_noise_std=one.noise_std, one_positions=one.positions)  # fmt: skip
    if state.given is not None:  # (kept: the file it came from may change)
        arrays.update({"given_" + k: np.asarray(getattr(state.given, k)) for k in _MIXTURE_PARAMS})
    for i, done in enumerate(state.finished):
        f = f"finished{i}_"
        arrays.update({f + k: np.asarray(getattr(done.params, k)) for k in _MIXTURE_PARAMS})
        arrays.update({f + k: getattr(done, k) for k in _MIXTURE_PER_IMAGE})
        arrays.update({f + k: getattr(done, k) for k in ("elbo", "log_likelihood", "seconds")})
        arrays.update({f + k: getattr(done, k) for k in ("n_iter", "converged", "held")})
    return arrays


def _load_mixture_checkpoint(
    z: dict[str, np.ndarray], p: Path
) -> tuple[engine.MixtureCheckpoint, dict[str, Any], dict[str, Any]]:
    """What :func:`_mixture_checkpoint_arrays` stored (the engine checks its consistency)."""
    saved, engine_fields = _saved_settings(z, p)
    try:
        n_faces, faces = int(z["n_faces"]), np.shape(z["faces"])
    except (KeyError, TypeError, ValueError):
        n_faces, faces = 0, ()
    if n_faces < 2 or faces[:1] != (n_faces,):
        raise InputError(f"{p}: not a valid facefinder checkpoint (its number of faces)")

    def params(f: str) -> engine.MixtureParams:
        return engine.MixtureParams(
            np.asarray(z[f + "faces"], dtype=np.float64),
            np.asarray(z[f + "background"], dtype=np.float64),
            float(z[f + "noise_std"]),
            np.asarray(z[f + "weights"], dtype=np.float64),
            np.asarray(z[f + "prior"], dtype=np.float64),
        )

    with _reading_checkpoint(p):
        finished = []
        for i in range(int(z["n_finished"])):
            f = f"finished{i}_"
            finished.append(
                engine.MixtureRestart(
                    params=params(f),
                    elbo=z[f + "elbo"],
                    log_likelihood=z[f + "log_likelihood"],
                    seconds=z[f + "seconds"],
                    n_iter=int(z[f + "n_iter"]),
                    converged=bool(z[f + "converged"]),
                    held=int(z[f + "held"]),
                    **{k: z[f + k] for k in _MIXTURE_PER_IMAGE},
                )
            )
        settings = FitSettings.from_dict({k: v for k, v in saved.items() if k in engine_fields})
        options = {k: v for k, v in saved.items() if k not in engine_fields}
        one = None
        if "one_face" in z:
            one = engine.MixtureStart(
                z["one_face"], z["one_background"], float(z["one_noise_std"]), z["one_positions"]
            )
        state = engine.MixtureCheckpoint(
            settings=settings,
            n_faces=int(z["n_faces"]),
            data=json.loads(str(z["data_fingerprint"])),
            one=one,
            finished=tuple(finished),
            restart=int(z["restart"]),
            iteration=int(z["iteration"]),
            params=params(""),
            elbo=tuple(float(v) for v in z["elbo"]),
            log_likelihood=tuple(float(v) for v in z["log_likelihood"]),
            seconds=tuple(float(v) for v in z["seconds"]),
            held=int(z["held"]),
            released=int(z["released"]),
            prior_free=bool(z["prior_free"]),
            converged=bool(z["converged"]),
            rng_state=json.loads(str(z["rng_state"])),
            start=str(z["start"]) or None,
            given=params("given_") if "given_faces" in z else None,
        )
        extra = _extra_record(z, p)
    return state, options, extra
