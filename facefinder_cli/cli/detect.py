"""``facefinder detect``: find the face in new images with a fitted model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from facefinder_cli import engine, images, names, outputs, runs
from facefinder_cli.cli.options import (
    CONTEXT,
    OUTPUT,
    STOPPED,
    check_cluster_input,
    check_unchanged,
    cluster_client,
    layout_opt,
    load,
    log_notes,
    non_finite,
    note_stale,
    note_unsure,
    overwrite_opt,
    prior_file,
    reports_errors,
    scheduler_opt,
    skip_opt,
    verbosity,
)
from facefinder_cli.errors import InputError
from facefinder_cli.names import printable

log = logging.getLogger("facefinder")


@click.command(context_settings=CONTEXT)
@click.argument("model", metavar="MODEL")
@click.argument("input", metavar="INPUT")
@click.option(
    "-o",
    "--out",
    default="-",
    show_default=True,
    type=OUTPUT,
    metavar="FILE|-",
    help="CSV file for the positions; '-' is stdout.",
)
@click.option(
    "--draw",
    type=OUTPUT,
    metavar="DIR",
    help="Also write each image as a PNG with the found face boxed in red; with a model of "
    "several faces, each face in its own colour (face 1 red, 2 blue, 3 yellow, 4 magenta, "
    "5 cyan, 6 orange, 7 green, 8 purple, 9 pink, 10 lime; face 11 red again, and so on), as "
    "the log says.",
)
@click.option(
    "--zoom",
    type=click.IntRange(1, 64),
    help="Upscale the --draw PNGs N times (nearest neighbour) [default: as for fit].",
)
@click.option(
    "--prior",
    "prior_choice",
    default="smoothed",
    show_default=True,
    metavar="smoothed|fitted|uniform|FILE.npy",
    help="Prior over the face's position in these images. smoothed: the fitted prior as the "
    "positions of a new image would follow it, given how many images it was fitted to (close to "
    "uniform when they were few); fitted: as fitted (it favours the training images' "
    "positions); uniform; or a .npy table of shape (H-h+1, W-w+1).",
)
@click.option(
    "--face",
    "face_choice",
    type=click.Choice(["shrunk", "fitted"]),
    default="shrunk",
    show_default=True,
    help="Face to score the images with. shrunk: the fitted face with the estimation noise it "
    "has from its finite number of images filtered out (its posterior mean; the same face "
    "when that noise is small), so that probabilities are not overstated at high noise; "
    "fitted: as fitted.",
)
@scheduler_opt
@skip_opt
@layout_opt
@overwrite_opt
@verbosity
@reports_errors
def detect(
    model,
    input,
    out,
    draw,
    zoom,
    prior_choice,
    face_choice,
    scheduler,
    skip_unreadable,
    layout,
    overwrite,
):
    """Find the face in new images with a fitted model.

    MODEL is a run folder or result.npz from `facefinder fit`; INPUT as for `fit`, with images
    of the size the model was fitted on. Prints, for each image, the most probable position of
    the face's top-left corner (row, column, from 0) and its posterior probability; for a fit
    of several faces (fit --faces N), also which face (from 1) and that face's probability.

    The faces may sit anywhere, not only where the training images had them (see --prior). A
    warning says when the images do not fit the model (another value scale, another scene).
    How far the probabilities can be trusted is measured in docs/PROBABILITIES.md.

    \b
    Examples:
      facefinder detect run new_images/ > positions.csv
      facefinder detect run/result.npz 'cam/*.png' --draw boxed/ -o positions.csv
    """
    if outputs.is_stdout(out) and outputs.stdout_closed():
        raise InputError("standard output is closed: there is nowhere to write the positions")
    mixture = runs.load_mixture(model)
    if mixture is not None and scheduler:
        raise click.UsageError(
            f"{model} is a fit of several faces: detect runs it on this machine only; drop "
            "--scheduler (or DASK_SCHEDULER_ADDRESS)"
        )
    check_cluster_input(scheduler, input)
    if mixture is not None:
        model_ = _several_faces(model, _mixture_params(*mixture, prior_choice, face_choice))
    else:
        run = runs.load_run(model)
        if run.params is None:
            raise click.BadParameter(
                f"{model}: has no fitted parameters (a history.csv alone)", param_hint="MODEL"
            )
        model_ = _one_face(run, _detect_params(run, prior_choice, face_choice))
    keep = [model, *images.input_paths(input)]
    if Path(prior_choice).suffix == ".npy":
        keep.append(prior_choice)
    if draw and not outputs.is_stream(out) and outputs.inside(out, draw):
        raise click.BadParameter(
            f"{out} is inside the --draw folder {draw}, which is replaced whole: write it "
            "elsewhere",
            param_hint="'-o' / '--out'",
        )
    if zoom is not None and not draw:
        log.warning("--zoom upscales the --draw PNGs; without --draw it does nothing")
    with outputs.claim(out, draw) as stale:
        note_stale(stale)
        outputs.check_file_target(
            out, overwrite, keep=keep, ours=lambda p: outputs.written_as(p, "detect")
        )
        if draw:
            outputs.check_folder_target(draw, overwrite, keep=keep, kind=DRAW_FOLDER)
        stack = load(input, layout, skip_unreadable, stream=True)
        K, H, W = stack.images.shape
        if (H, W) != model_.background_shape:
            bh, bw = model_.background_shape
            hint = ""
            suffix = Path(input).suffix.lower()
            if layout in (None, "auto") and suffix in (".npy", ".npz", ".mat"):
                # read along the other axis, the array would be the model's size: say so
                other = _other_layout(stack, suffix)
                if ((K, H) if other == "hwk" else (W, K)) == (bh, bw):
                    hint = f" (read with --layout {other}, its images would be: pass it)"
            raise InputError(
                f"{input}: images are {H}x{W}, the model was fitted on {bh}x{bw}{hint}"
            )
        try:
            with cluster_client(scheduler, stack, input) as client:
                found = model_.find(stack.images, client)
        except engine.NonFiniteError as err:  # a streamed .npy is checked as it is read
            raise non_finite(input, stack, err) from None
        except engine.ValueRangeError as err:  # values beyond what float64 computes with
            raise InputError(f"{input}: {err}") from None
        except ValueError as err:  # the model's, likewise
            raise InputError(f"{model_.source}: {err}") from None
        check_unchanged(input, stack, "the positions were not written")
        log_notes(stack, fitting=False)
        _warn_if_mismatched(found, model_.noise_std, input, stack.names)
        # what to say of a signal as each output is put in place, and once it is
        csv_file = not outputs.is_stream(out)
        STOPPED["installed"] = f"{out} was written all the same"
        if draw:
            STOPPED["installed"] = f"{out} was written, the boxed images in {draw} were not"
        with outputs.atomic_write(out, "w", overwrite=overwrite, record="detect") as f:
            rows = names.csv_writer(f)
            rows.writerow(["image", *model_.columns])
            for name, row in zip(stack.names, model_.rows(found)):
                rows.writerow([printable(name), *row])
        if csv_file:
            STOPPED["note"] = f"{out} was written all the same"
        if draw:  # one image at a time: a streamed stack is never held in memory
            if csv_file:
                STOPPED["note"] = f"{out} was written, the boxed images in {draw} were not"
            STOPPED["installed"] = (
                f"{out} and the boxed images in {draw} were written all the same"
                if csv_file
                else f"the boxed images in {draw} were written all the same"
            )
            h, w = model_.face_shape
            zoom = zoom or runs.view_zoom((H, W))
            changed = False
            try:
                with outputs.atomic_folder(draw, overwrite, keep=keep, kind=DRAW_FOLDER) as tmp:
                    faces = getattr(found, "faces", np.zeros(K, dtype=int))  # several, or one
                    for k, stem in enumerate(images.file_stems(stack.names, K)):
                        r, c = found.positions[k]
                        image = np.asarray(stack.images[k])
                        rgb = images.boxed(image, r, c, h, w, int(faces[k]))
                        images.write_png(Path(tmp) / (stem + ".png"), rgb, zoom=zoom)
                    changed = stack.changed()  # (the images were read again to draw them)
                    check_unchanged(
                        input,
                        stack,
                        f"{out} was written, the boxed images were not"
                        if csv_file
                        else "the boxed images were not written",
                    )
            except InputError as err:  # a full disk, say: the CSV is in place all the same
                if not csv_file or changed:
                    raise
                raise InputError(f"{err}; {out} was written, the boxed images were not") from None
            except MemoryError:
                raise InputError(
                    f"out of memory drawing the boxed images ({H * zoom}x{W * zoom} at --zoom "
                    f"{zoom})"
                    + (
                        f"; {out} was written, the boxed images were not"
                        if csv_file
                        else "; they were not written"
                    )
                ) from None
            STOPPED["note"] = STOPPED["installed"]
    boxes = ""
    if draw:
        boxes = f"; boxed images in {draw}"
        own = [Path(str(name)).stem for name in stack.names]
        if images.file_stems(stack.names, K) != own:  # e.g. a.png and a.tif: not unique
            boxes += (
                ", named img1.. in the order of the CSV's rows (the images' own names are not "
                "unique, plain or in order as file names)"
            )
        if model_.n_faces > 1:
            boxes += (
                " ("
                + ", ".join(
                    f"face {m + 1} {images.box_colour(m)[0]}"
                    + (" again" if m >= len(images.BOX_COLOURS) else "")
                    for m in range(model_.n_faces)
                )
                + ")"
            )
    log.info(
        "located %s in %d image%s (%smean probability %.3f)%s",
        model_.what,
        K,
        "" if K == 1 else "s",
        model_.counts(found),
        float(np.mean(found.probability)),
        boxes,
    )
    note_unsure(float(np.mean(found.probability)), "the CSV")


@dataclass(frozen=True)
class _Model:
    """What detect needs of a fitted model, one face or several: where it came from, its
    geometry and noise, how it finds the faces (``find(images, client)``), and the CSV's
    columns after the image's name with each image's row of them."""

    source: str
    background_shape: tuple[int, int]
    face_shape: tuple[int, int]
    noise_std: float
    find: Callable[[Any, Any], Any]
    columns: tuple[str, ...]
    rows: Callable[[Any], Any]
    what: str
    counts: Callable[[Any], str]
    n_faces: int = 1


#: The CSV's columns after the image's name, for a model of one face and of several.
ONE_FACE_COLUMNS = ("row", "column", "probability")
SEVERAL_FACES_COLUMNS = ("face", "row", "column", "probability", "face_probability")


def _one_face(run: runs.Run, params: engine.Params) -> _Model:
    return _Model(
        run.source,
        run.params.background.shape,
        run.params.face.shape,
        run.params.noise_std,
        lambda X, client: engine.detect(X, params, client=client),
        ONE_FACE_COLUMNS,
        lambda found: (
            (int(r), int(c), f"{p:.6g}") for (r, c), p in zip(found.positions, found.probability)
        ),
        "the face",
        lambda found: "",
    )


def _several_faces(source: str, params: engine.MixtureParams) -> _Model:
    """(On this machine: the caller refuses --scheduler.)"""
    N = len(params.weights)

    def rows(found):
        table = zip(found.faces, found.positions, found.probability, found.face_probability)
        for m, (r, c), p, q in table:
            yield int(m) + 1, int(r), int(c), f"{p:.6g}", f"{q:.6g}"

    def counts(found) -> str:
        per_face = np.bincount(found.faces, minlength=N)
        return f"images per face: {', '.join(map(str, per_face))}; "

    return _Model(
        str(source),
        params.background.shape,
        params.faces.shape[1:],
        params.noise_std,
        lambda X, client: engine.detect_mixture(X, params),
        SEVERAL_FACES_COLUMNS,
        rows,
        f"one of {N} faces",
        counts,
        N,
    )


def _mixture_params(
    p: engine.MixtureParams, n_images: int, source, choice: str, face_choice: str
) -> engine.MixtureParams:
    """A fit of several faces with the prior ``--prior`` and the faces ``--face`` ask for:
    each face shrunk as fitted to its share of the images."""
    if face_choice == "shrunk":
        faces = np.array([
            engine.shrunk_face(f, p.noise_std, max(2, int(round(w * n_images))))
            for f, w in zip(p.faces, p.weights)
        ])  # fmt: skip
        p = engine.MixtureParams(faces, p.background, p.noise_std, p.weights, p.prior)
    if choice == "fitted":
        prior = p.prior
    elif choice == "uniform":
        prior = engine.uniform_prior(p.prior.shape)
    elif choice == "smoothed":
        prior = engine.predictive_prior(p.prior, n_images)
    elif Path(choice).suffix == ".npy":
        h, w = p.faces.shape[1:]
        need = f"the model's {h}x{w} faces have {p.prior.shape} positions"
        prior = prior_file(choice, p.prior.shape, need)
    else:
        raise click.BadParameter(
            f"expected smoothed, fitted, uniform or a .npy file; got {choice!r}",
            param_hint="'--prior'",
        )
    return engine.MixtureParams(p.faces, p.background, p.noise_std, p.weights, prior)


#: A folder of boxed images that detect --draw writes.
DRAW_FOLDER = outputs.FolderKind(
    "detect --draw", expected=lambda name: name.lower().endswith(".png")
)


#: detect warns when the images' typical residual around the model is further than this factor
#: from the model's noise std (images that fit give a ratio within a few per cent of 1).
MISMATCH_FACTOR = 1.5


def _detect_params(run: runs.Run, choice: str, face_choice: str) -> engine.Params:
    """The model's parameters with the prior ``--prior`` and the face ``--face`` ask for."""
    p = run.params
    if face_choice == "shrunk" and len(run.elbo) > 1:  # a face some M-step fitted
        face = engine.shrunk_face(p.face, p.noise_std, run.n_images)
        p = engine.Params(face, p.background, p.noise_std, p.prior)
    if choice == "fitted":
        return p
    if choice == "uniform":
        return engine.Params(p.face, p.background, p.noise_std, engine.uniform_prior(p.prior.shape))
    if choice == "smoothed":
        if run.prior_fixed_until >= len(run.elbo) - 1:  # never re-estimated: given, not fitted
            return p
        prior = engine.predictive_prior(p.prior, run.n_images)
        return engine.Params(p.face, p.background, p.noise_std, prior)
    if Path(choice).suffix != ".npy":
        raise click.BadParameter(
            f"expected smoothed, fitted, uniform or a .npy file; got {choice!r}",
            param_hint="'--prior'",
        )
    need = f"the model's {p.face.shape[0]}x{p.face.shape[1]} face has {p.prior.shape} positions"
    return engine.Params(p.face, p.background, p.noise_std, prior_file(choice, p.prior.shape, need))


def _other_layout(stack: images.Stack, suffix: str) -> str:
    """The layout that ``stack``, read with the layout guessed (or MATLAB's for a .mat
    file), was not read with: its note's hint names it, if it has one."""
    for note in stack.notes:
        for hint in getattr(note, "hints", ()):
            if hint.option == "layout" and hint.value in ("khw", "hwk"):
                return hint.value
    return "khw" if suffix == ".mat" else "hwk"  # (read as hwk, khw without a word)


def _warn_if_mismatched(
    found: engine.Detection, noise_std: float, input: str, names: Sequence[str]
) -> None:
    """Warn when the images do not look like the model's: their residuals around it are far
    from its noise (another value scale, such as 8-bit images for a 16-bit model, or another
    scene); the positions and probabilities assume they fit. Typically, or (a few among
    many) image by image, naming them."""
    ratios = np.asarray(found.residual_std, dtype=float) / noise_std
    typical = float(np.median(ratios)) * noise_std
    ratio = typical / noise_std
    if 1 / MISMATCH_FACTOR <= ratio <= MISMATCH_FACTOR:
        off = np.flatnonzero(~((ratios >= 1 / MISMATCH_FACTOR) & (ratios <= MISMATCH_FACTOR)))
        if len(off):
            shown = ", ".join(printable(names[k]) for k in off[:3])
            lo, hi = (f"{float(f(ratios[off])):.3g}" for f in (np.nanmin, np.nanmax))
            log.warning(
                "%d of %d images do not match the model: %s%s differ%s from it by %s times its "
                "noise std. Are they of the same scene and value scale? Their positions and "
                "probabilities assume they are",
                len(off),
                len(ratios),
                shown,
                ", ..." if len(off) > 3 else "",
                "s" if len(off) == 1 else "",
                lo if lo == hi else f"{lo} to {hi}",
            )
        return
    log.warning(
        "%s does not match the model: the images differ from it by %.4g (typical residual "
        "std), where the model's noise std is %.4g (%.3gx). Are they of the same scene, and on "
        "the same value scale (e.g. 8-bit images, a model fitted on 16-bit ones)? Positions "
        "and probabilities assume they are",
        input,
        typical,
        noise_std,
        ratio,
    )
