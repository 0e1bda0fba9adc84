"""``facefinder fit``: recover face, background, noise and prior from noisy images.

The command, the checks of its options against the images, the run of the engine and the
report. What a fit does and how it is checkpointed and resumed is in :mod:`.fit_resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click
import numpy as np

from facefinder_cli import engine, images, outputs, runs, synthetic
from facefinder_cli.cli.fit_faces import fit_faces, refuse_with_faces
from facefinder_cli.cli.fit_resume import (
    RUN_FOLDER,
    CheckpointSaver,
    FitJob,
    Resumed,
    check_run_folder_name,
    kept_for_resume,
    only_with_resume,
    save_when_interrupted,
    save_when_lost,
)
from facefinder_cli.cli.options import (
    BYTE_SIZE,
    CONTEXT,
    FACE_SIZE,
    FACES,
    OUTPUT,
    RESTARTS,
    STOPPED,
    AutoSize,
    FiniteFloatType,
    ToleranceType,
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
    print_json,
    reports_errors,
    said,
    scheduler_opt,
    skip_opt,
    verbosity,
)
from facefinder_cli.cli.progress import ProgressBar
from facefinder_cli.errors import InputError
from facefinder_cli.images.common import plural
from facefinder_cli.interrupts import Interrupted

log = logging.getLogger("facefinder")


_SETTING_NAMES = frozenset(f.name for f in fields(engine.FitSettings))
#: The options' defaults are the engine's (but --seed: 0, so that a run repeats by default).
DEFAULTS = {f.name: f.default for f in fields(engine.FitSettings)}


def _new_job(input: str, face_size: tuple[int, int] | None, options: dict[str, Any]) -> FitJob:
    """The job of a new fit, from its options; the face size is --face-size, or that of the
    --init-from start."""
    if math.isnan(options["tol"]):
        raise click.BadParameter("must be a number, not nan", param_hint="'--tol'")
    if options["accelerate"] == "squarem" and options["method"] != "soft":
        raise click.BadParameter(
            f"squarem is for --method soft only, not {options['method']} (see "
            "docs/PERFORMANCE.md); use auto or none",
            param_hint="'--accelerate'",
        )
    init_from, truth = options.pop("init_from"), options.pop("truth")
    if isinstance(face_size, AutoSize):
        for name, value in (("--init-from", init_from), ("--truth", truth)):
            if value is not None:
                raise click.UsageError(
                    f"--face-size {face_size} chooses the size, and {name} gives one: give "
                    "--face-size HxW with it"
                )
        face_size = face_size.lo or (1, 1)  # (replaced by the chosen size)
    if face_size is None:
        if init_from is None:
            raise click.MissingParameter(param_hint="'--face-size'", param_type="option")
        face_size = runs.load_params(init_from).face.shape
    given = {k: v for k, v in options.items() if k in _SETTING_NAMES}
    return FitJob(
        settings=engine.FitSettings(face_size, **given),
        input=str(input),
        input_path=_absolute_input(input),
        init_from=os.path.abspath(init_from) if init_from else None,
        truth=os.path.abspath(truth) if truth else None,
        command=" ".join(sys.argv),
        **{k: v for k, v in options.items() if k not in _SETTING_NAMES},
    )


@click.command(context_settings=CONTEXT)
@click.argument("input", metavar="INPUT", required=False)
@click.option(
    "--face-size",
    type=FACE_SIZE,
    help="Size of the face in pixels, HxW (required unless --init-from gives it). 'auto' "
    "chooses it from the images, between 4x4 and the image size less a pixel, by a penalised "
    "likelihood (BIC); SMALLEST:LARGEST, e.g. 16x12:48x40, chooses it in that range. The run "
    "then holds the chosen size's fit, sizes.csv and sizes.png (see docs/METHODS.md).",
)
@click.option(
    "-o",
    "--out",
    type=OUTPUT,
    metavar="DIR|-",
    help="Output folder; '-' writes only the face as a PNG to stdout (for viewers), as does a "
    "device or FIFO (e.g. /dev/null) into itself.",
)
@click.option(
    "--method",
    type=click.Choice(engine.METHODS),
    default=DEFAULTS["method"],
    show_default=True,
    help="soft: exact posteriors over positions; hard: each image's best position "
    "only (faster, rougher); mc: Monte-Carlo EM, positions drawn from the posteriors.",
)
@click.option(
    "--accelerate",
    type=click.Choice(engine.ACCELERATIONS),
    default=DEFAULTS["accelerate"],
    show_default=True,
    help="auto: soft EM accelerated by SQUAREM (2 or 3 passes over the images per iteration, "
    "several times fewer in all where EM is slow; stops when close to the optimum; once "
    "converged, tries the face window one pixel over each way, 2 more passes, and carries on "
    "from a window that fits better), hard and mc plain; none: plain EM, the study's "
    "algorithm and stopping rule; squarem: as auto (soft only).",
)
@click.option(
    "--init",
    "init",
    type=click.Choice(engine.INIT_METHODS),
    default=DEFAULTS["init"],
    show_default=True,
    help="Start: median (from the data; reliable) or the study's zeros, bright, random, smooth.",
)
@click.option(
    "--faces",
    type=FACES,
    default=1,
    show_default=True,
    help="Number of different faces: each image shows one of them, all of --face-size, on "
    "the same background. With N > 1 the run holds face_1.png ... face_N.png, faces.png side "
    "by side, the weights, and each image's face in positions.csv. 'auto' fits 1, 2, 3, ... "
    "faces and keeps the number with the best penalised "
    "likelihood (BIC), writing faces.csv (see docs/METHODS.md); it keeps no checkpoint.",
)
@click.option(
    "--restarts",
    type=RESTARTS,
    default=DEFAULTS["restarts"],
    show_default=True,
    help="Starts, the one with the best log-likelihood kept. With --init median, the 2nd and "
    "4th to 6th start from the 1st's fit with the face window moved two pixels diagonally, "
    "the 3rd anneals the 1st start (40 more passes), the 7th starts from a sampler of the "
    "face positions (300 more passes, on one thread), the 8th on anneal the 1st start under "
    "a random prior over positions: often a better fit when the images are few for the noise. "
    "'auto': 3 where the 1st fit's positions are not sure (mean probability below 0.99; "
    "about 3.5x the time there), else 1; 1 from a start every restart would repeat (--init "
    "zeros or bright, --init-from) and with --max-iter 0; with --faces N > 1 or auto, 4 (1 "
    "from --init-from).",
)
@click.option(
    "--max-iter",
    type=click.IntRange(min=0),
    default=DEFAULTS["max_iter"],
    show_default=True,
    help="Most EM iterations per start (0: just the start); an accelerated iteration makes 2 or "
    "3 passes over the images. On the study's hardest data (noise 1000, 1500 images of "
    "20x30) the default converged in 51 to 160 (six data sets).",
)
@click.option(
    "--tol",
    type=ToleranceType(),
    default=DEFAULTS["tol"],
    show_default=True,
    help="Stop when the log-likelihood is estimated to be within this many nats per image and "
    "pixel of the optimum EM is converging to, in two iterations in a row (accelerated EM), or "
    "the ELBO rises by less in an iteration (plain EM); 0 or less: run --max-iter iterations "
    "(whatever the gains: at the optimum the ELBO may fall by a rounding error), with no "
    "warning.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed of the starts: the same seed gives the same result.",
)
@click.option(
    "--prior-update",
    type=click.Choice(engine.PRIOR_UPDATES),
    default=DEFAULTS["prior_update"],
    show_default=True,
    help="When the prior over positions is learnt: late (after the rest converges), "
    "always (every iteration, as in the study), never.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=DEFAULTS["samples"],
    show_default=True,
    help="mc: positions drawn per image in the first iteration.",
)
@click.option(
    "--samples-growth",
    type=FiniteFloatType(1.0),
    default=DEFAULTS["samples_growth"],
    show_default=True,
    help="mc: factor by which the draws grow every iteration.",
)
@click.option(
    "--max-samples",
    type=click.IntRange(min=1),
    default=DEFAULTS["max_samples"],
    show_default=True,
    help="mc: most draws per image (raised to --samples if lower).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=DEFAULTS["chunk_size"],
    help="Images per chunk of the streaming pass. Each thread holds one chunk's temporaries "
    "(about 0.6 MB per image of 64x64). [default: 64 images of 64x64, as many pixels for "
    "other sizes]",
)
@click.option(
    "--memory-limit",
    type=BYTE_SIZE,
    help="Memory for the working chunks (--workers x --chunk-size images, always) and then a "
    "cache of the images' FFTs, e.g. 512M or 4G; 0: no cache. Spectra that do not fit are "
    "recomputed in every iteration: slower, same result. [default: 1G, or an eighth of the "
    f"machine's memory if less; here {engine.default_memory_limit() / 2**30:.3g}G]",
)
@click.option(
    "--dtype",
    type=click.Choice(engine.DTYPES),
    default=DEFAULTS["dtype"],
    show_default=True,
    help="Precision of the per-image work (sums over images stay float64). float32 was up to "
    "23% faster in our benchmarks and finds the same face; its ELBO values are less precise when "
    "the noise is well below the images' contrast (docs/PERFORMANCE.md).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Threads working on chunks in parallel [default: all cores, here "
    f"{engine.available_cores()}]. Results do not depend on it.",
)
@click.option(
    "--init-from",
    type=click.Path(),
    metavar="RUN",
    help="Start from the parameters of a previous run (folder or result.npz), or of a "
    "truth.npz from generate (EM from the truth: a yardstick for the best fit). With --faces "
    "N, a run or truth of N faces (and --restarts 1 unless given).",
)
@click.option(
    "--truth",
    type=click.Path(),
    metavar="TRUTH.npz",
    help="Known truth (from `generate`): adds errors per iteration to the history.",
)
@click.option(
    "--zoom",
    type=click.IntRange(1, 64),
    help="Upscale face.png and background.png N times (nearest neighbour) [default: enough for "
    "the images to be at least 256 pixels wide or high, at most 8; 1 for exact pixels].",
)
@click.option(
    "--plots/--no-plots",
    default=True,
    show_default=True,
    help="Draw prior.png and elbo.png. --no-plots skips them and matplotlib, about 0.4 s: a "
    "third of the bundled sample's fit, for batches of many small fits (draw the curve later "
    "with `facefinder plot-elbo DIR`; result.npz holds the prior).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    metavar="N",
    help="Save the fit every N iterations into DIR/checkpoint.npz (it is also saved on Ctrl-C "
    "or SIGTERM).",
)
@click.option(
    "--resume",
    type=click.Path(),
    metavar="DIR",
    help="Carry on the interrupted fit saved in DIR, with its input and settings (only "
    "--workers and --memory-limit may be given again); ends exactly as the uninterrupted fit "
    "would.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a machine-readable summary on stdout (and nothing else there).",
)
@scheduler_opt
@skip_opt
@layout_opt
@overwrite_opt
@verbosity
@reports_errors
def fit(
    input, face_size, out, memory_limit, workers, scheduler, resume, as_json, overwrite, **options
):
    """Recover face, background, noise and prior from noisy images.

    INPUT is a folder of images (PNG, JPEG, TIFF, BMP; in natural order, img2 before img10), a
    glob pattern in quotes, a .npy/.npz stack, a multi-page TIFF or a MATLAB .mat file with X of
    shape (H, W, K). Colour images are converted to grayscale. A .npy stack of shape (K, H, W)
    is read from disk chunk by chunk in every iteration, never held in memory: `facefinder
    pack` makes one from a folder, with the image names in STACK.names.txt beside it.

    \b
    Writes into DIR:
      face.png, background.png   the recovered face and background (same grey scale)
      prior.png                  the prior over face positions: a map with axes and a scale
      elbo.png                   the ELBO per iteration (these two: not with --no-plots)
      history.csv                ELBO and log-likelihood per iteration
      positions.csv              each image's most probable face position and its probability
      result.npz                 all of it, with every restart's history and the settings

    Ctrl-C (or SIGTERM) saves the last completed iteration in DIR/checkpoint.npz and exits with
    status 130 (143); `facefinder fit --resume DIR` carries on from there.

    \b
    Examples:
      facefinder fit sample_data/noisy --face-size 40x30 -o run
      facefinder fit 'shots/*.png' --face-size 36x30 --restarts 4 -o run --overwrite
      facefinder fit data.mat --face-size 16x16 --method hard --json -o run > summary.json
      facefinder fit imgs/ --face-size 36x30 --zoom 4 -o - | display -
      facefinder fit shots.npy --face-size 24x24 --dtype float32 --memory-limit 4G -o run
      facefinder fit shots.zarr --face-size 24x24 --scheduler tcp://head:8786 -o run
    """
    n_faces = options.pop("faces")
    if resume and (n_faces == "auto" or n_faces > 1):
        raise click.UsageError(
            "--resume takes the input and settings from the checkpoint; drop --faces"
        )
    if n_faces == "auto" or n_faces > 1:
        refuse_with_faces(
            n_faces,
            {
                "--checkpoint-every": n_faces == "auto" and options["checkpoint_every"] is not None,
                "--face-size auto": isinstance(face_size, AutoSize),
                "--init-from": n_faces == "auto" and options["init_from"] is not None,
                "--accelerate squarem": options["accelerate"] == "squarem",
            },
        )
        if input is None:
            raise click.MissingParameter(param_hint="'INPUT'", param_type="argument")
        if out is None:
            raise click.MissingParameter(param_hint="'-o' / '--out'", param_type="option")
        if face_size is None and options["init_from"] is not None:  # the start's
            face_size = runs.load_mixture_start(options["init_from"], n_faces).faces.shape[1:]
        if face_size is None:
            raise click.MissingParameter(param_hint="'--face-size'", param_type="option")
        out = "-" if outputs.is_stdout(out) else out
        options["restarts_asked"] = options["restarts"]
        if options["restarts"] == "auto":  # (from a given start every restart starts the same)
            restarts = engine.mixture.MIXTURE_RESTARTS
            options["restarts"] = 1 if options["init_from"] is not None else restarts
        job = _new_job(input, face_size, options)
        _check_outputs(job, out, as_json)
        check_cluster_input(scheduler, job.input)
        fit_faces(n_faces, job, out, as_json=as_json, overwrite=overwrite,
                  memory_limit=memory_limit, workers=workers, scheduler=scheduler)  # fmt: skip
        return
    resumed: Resumed | None = None
    if resume and os.path.exists(resume) and not os.path.isdir(resume):
        folder = os.path.dirname(resume) or "."
        raise click.BadParameter(
            f"{resume}: a file; give the run folder that holds the fit's checkpoint.npz "
            f"({folder}, say)",
            param_hint="'--resume'",
        )
    if resume:
        only_with_resume(
            click.get_current_context(),
            ("resume", "as_json", "memory_limit", "workers", "scheduler"),
        )
        with outputs.claim(resume) as stale:  # a run put in place by a killed fit: back whole
            note_stale(stale)
        resumed = Resumed.load(resume)
        outputs.take_over(resumed.path)  # (the run replaces it, carried on: not a user's file)
        job, out, overwrite = resumed.job, resume, True
        if isinstance(resumed.state, engine.MixtureCheckpoint):  # a fit of several faces
            check_cluster_input(scheduler, job.input_path)
            _check_outputs(job, out, as_json)
            fit_faces(resumed.state.n_faces, job, out, as_json=as_json, overwrite=True,
                      memory_limit=memory_limit, workers=workers, scheduler=scheduler,
                      resumed=resumed)  # fmt: skip
            return
    else:
        if input is None:
            raise click.MissingParameter(param_hint="'INPUT'", param_type="argument")
        if out is None:
            raise click.MissingParameter(param_hint="'-o' / '--out'", param_type="option")
        out = "-" if outputs.is_stdout(out) else out
        auto = face_size if isinstance(face_size, AutoSize) else None
        job = _new_job(input, face_size, options)
    check_cluster_input(scheduler, job.input_path if resumed else job.input)
    _check_outputs(job, out, as_json)
    input, settings = job.input_path if resumed else job.input, job.settings
    with _given_to_the_interrupted_fit(resumed, resume):
        warm = runs.load_params(job.init_from) if job.init_from else None
        truth_data = runs.load_truth(job.truth) if job.truth else None
    keep = images.input_paths(input) + [p for p in (job.init_from, job.truth) if p]
    folder = None if outputs.is_stream(out) else out  # else only the face, as a PNG, into it
    with outputs.claim(folder) as stale:  # (a running fit's folder: refused here, in one line)
        note_stale(stale)
        if folder is not None and resumed is None:
            check_run_folder_name(folder, overwrite)
        if folder is not None:
            outputs.check_folder_target(folder, overwrite, keep=keep, kind=RUN_FOLDER)
        stack = load(input, job.layout, job.skip_unreadable, stream=True)
        K, H, W = stack.images.shape
        if resumed is not None:
            resumed.check_input(input, K, H, W)
        sizes = resumed.extra.get("sizes") if resumed is not None else None
        if resumed is None and auto is not None:
            STOPPED["line"] = "interrupted while choosing the face size: nothing was written"
            choice = _choose_size(stack, input, job, auto, memory_limit, workers, scheduler)
            job = dataclasses.replace(
                job, settings=dataclasses.replace(job.settings, face_shape=choice.size)
            )
            settings, sizes = job.settings, runs.size_rows(choice)
        with _given_to_the_interrupted_fit(resumed, resume):
            _check_face_size(input, stack, job, warm, truth_data)

        saver = None
        if folder is not None:
            saver = CheckpointSaver(folder, job.options(), keep, job.checkpoint_every, overwrite)
            if resumed is not None:  # the folder holds our checkpoint already
                saver.resuming()
            saver.sizes = sizes  # (a resumed fit writes sizes.csv all the same)
        # Announced once the engine has read the data: a streamed stack is checked in that first
        # pass (and compared with a checkpoint's), and an error there stays the only line.
        truth_errors = _TruthErrors(truth_data, resumed.extra.get("errors", {}) if resumed else {})
        announce = functools.partial(_announce, job, input, stack, resumed)
        planned = resumed.state.restarts if resumed else settings.planned(None)
        # whether --restarts auto would add restarts after an unsure first one (--init-from
        # gives a start whole)
        may_add = settings.planned(np.zeros(1), settings.repeats_start(warm is not None)) > 1
        progress = _Progress(announce, truth_errors, ProgressBar(planned), saver)
        if resumed is not None:  # until the engine reports, Ctrl-C keeps it, and says so
            progress.latest = resumed.state
        STOPPED["line"] = "interrupted before the first iteration: nothing was written"
        in_place = False  # whether the finished run folder is in place
        try:
            t0 = time.perf_counter()
            with cluster_client(scheduler, stack, input) as client:
                result, caught = _run_engine(
                    stack,
                    input,
                    settings,
                    progress,
                    resumed,
                    init_params=warm,
                    init_from=job.init_from,
                    memory_limit=memory_limit,
                    workers=workers,
                    client=client,
                )
            seconds = time.perf_counter() - t0
            check_unchanged(
                input,
                stack,
                "the run was not written",
                # (its checkpoint is of the old images: --resume would refuse the new ones)
                " with --overwrite" if saver is not None and saver.wrote else "",
            )
            if sizes is not None:
                runs.add_full_fit(sizes, result)
            _report_engine(result, caught, K)
            errors = truth_errors.history(result)
            zoom = job.zoom or runs.view_zoom((H, W))
            written: list[str] = []
            if folder is None:
                lo, hi = runs.display_range(result.face, result.background)
                images.write_png(out, result.face, lo, hi, zoom=zoom)
            else:
                saver.check_folder()
                try:
                    with outputs.atomic_folder(
                        folder,
                        overwrite or saver.wrote,
                        keep=keep,
                        kind=RUN_FOLDER,
                    ) as tmp:
                        written = runs.save_run(
                            tmp,
                            result,
                            names=stack.names,
                            options=job.options(),
                            errors=errors,
                            zoom=zoom,
                            plots=job.plots,
                        )
                        if sizes is not None:
                            written += runs.save_sizes(tmp, sizes, plots=job.plots)
                except Interrupted as stop:  # raised once the folder was renamed into place?
                    in_place = bool(written) and stop.after == "install"
                    raise
                except InputError as err:  # refused now (a file of the user's came in, say)
                    raise InputError(
                        kept_for_resume(said(err), saver, progress.latest, progress.truth.errors)
                    ) from None
                in_place = True
        except engine.ClusterError as err:  # the scheduler or the client was lost
            raise InputError(
                save_when_lost(
                    saver, progress.latest, progress.truth.errors, _restarts(progress, may_add), err
                )
            ) from None
        except Interrupted:
            progress.bar.close()
            if in_place:
                STOPPED["line"] = f"interrupted after the run was written to {folder}"
            else:
                STOPPED["line"] = save_when_interrupted(
                    saver,
                    progress.latest,
                    progress.truth.errors,
                    _restarts(progress, may_add),
                    progress.bar.building,
                )
            raise
        if in_place:
            STOPPED["line"] = f"interrupted after the run was written to {folder}"
        elif folder is None:
            STOPPED["line"] = f"interrupted after the face was written to {out}"
    summary = _summary(result, K, H, W, seconds, out, errors)
    if sizes is not None:
        summary["face_size_search"] = runs.size_summary(sizes)
    if as_json:
        print_json(summary, folder)
    _report(summary, result, written, resumed is not None)


def _choose_size(stack, input, job: FitJob, auto: AutoSize, memory_limit, workers, scheduler):
    """``engine.choose_face_size`` on the stack (on the cluster of ``scheduler``, if given),
    each fit of the search said as it ends."""
    K, H, W = stack.images.shape
    if H < 2 and W < 2:
        raise click.BadParameter(
            f"the images of {input} are {H}x{W}: a face has one position in them, and no size "
            "to choose",
            param_hint="'--face-size'",
        )
    lo, hi = engine.size_range((H, W))
    lo, hi = auto.lo or lo, auto.hi or hi
    if hi[0] > H or hi[1] > W:
        raise click.BadParameter(
            f"{auto}: the largest size is larger than the images ({H}x{W}) of {input}",
            param_hint="'--face-size'",
        )
    log.info(
        "choosing the face size between %dx%d and %dx%d in %d image%s of %dx%d (%s)",
        *lo, *hi, K, "" if K == 1 else "s", H, W, input,
    )  # fmt: skip

    def said(trial: engine.SizeTrial) -> None:
        log.info(
            "  %dx%d: criterion %.1f (%s fit, %d iterations, %.1f s)",
            *trial.size, trial.criterion, "full" if trial.full else "short", trial.n_iter,
            trial.seconds,
        )  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with cluster_client(scheduler, stack, input) as client:
                choice = engine.choose_face_size(
                    stack.images,
                    lo,
                    hi,
                    job.settings,
                    fit_chosen=False,  # (fitted below, as --face-size HxW would)
                    memory_limit=memory_limit,
                    workers=workers,
                    on_trial=said,
                    client=client,
                )
        except engine.NonFiniteError as err:
            raise non_finite(input, stack, err) from None
        except engine.ValueRangeError as err:
            raise InputError(f"{input}: {err}") from None
    log.info("%s", runs.size_verdict(runs.size_summary(runs.size_rows(choice))))
    return choice


def _check_outputs(job: FitJob, out: str, as_json: bool) -> None:
    """Refuse output options that cannot work together, before any work."""
    if as_json and out == "-":
        raise click.UsageError("--json and -o - both write to stdout; choose one")
    if (out == "-" or as_json) and outputs.stdout_closed():
        what = "the face" if out == "-" else "the --json summary"
        raise InputError(f"standard output is closed: there is nowhere to write {what}")
    if out == "-" and sys.stdout.isatty():
        raise click.UsageError(
            "-o - writes a PNG to stdout, which is a terminal: pipe it to a viewer or a file"
        )
    if job.checkpoint_every and outputs.is_stream(out):
        raise click.UsageError(f"--checkpoint-every needs an output folder, not -o {out}")


def _announce(job: FitJob, input: str, stack, resumed: Resumed | None) -> None:
    """What is about to be fitted (said once the engine has read the images)."""
    if resumed is not None:
        log.info(
            "resuming %s at iteration %d of restart %d",
            os.path.dirname(resumed.path),
            resumed.state.iteration,
            resumed.state.restart + 1,
        )
    log_notes(stack, truth_given=job.truth is not None)
    (h, w), (K, H, W) = job.settings.face_shape, stack.images.shape
    log.info(
        "fitting %s %dx%d face in %d image%s of %dx%d (%s) by %s EM",
        "an" if str(h).startswith("8") or h in (11, 18) else "a",  # (an 8x8, an 11x9)
        h,
        w,
        K,
        "" if K == 1 else "s",
        H,
        W,
        input,
        job.settings.method,
    )


def _restarts(progress: _Progress, may_add: bool) -> int | str:
    """How many restarts the fit runs, as far as its last checkpoint knows; in words while
    --restarts auto has yet to decide (in restart 1, from a start that restarts can change:
    ``may_add``)."""
    cp = progress.latest
    if cp is None:
        return 1
    if may_add and cp.settings.restarts == "auto" and not cp.finished:
        more = engine.settings.AUTO_RESTARTS
        return f"1 (or {more} if its positions are not sure: --restarts auto)"
    return cp.restarts


def _absolute_input(source: str) -> str:
    """``source`` as --resume finds it from any folder: an absolute path, or for a pattern the
    pattern under the current folder (whose name is escaped: it may hold * ? [)."""
    if os.path.lexists(source) or not any(c in source for c in "*?["):
        return os.path.abspath(source)
    if os.path.isabs(source):
        return source
    return os.path.join(glob.escape(os.getcwd()), source)


@contextlib.contextmanager
def _given_to_the_interrupted_fit(resumed, resume: str | None):
    """Errors about the files given to a fit (--init-from, --truth), said for a resumed fit as
    files of the interrupted fit's, which must be put back (before: "Invalid value for
    '--truth'", an option the user had not given, or a bare "no such file")."""
    try:
        yield
    except (InputError, click.BadParameter) as err:
        if resumed is None:
            raise
        what = err.message if isinstance(err, click.BadParameter) else said(err)
        raise InputError(
            f"{resume}: the interrupted fit was given files that no longer fit it: {what}; put "
            "back the file it was given to carry it on"
        ) from None


def _check_face_size(input, stack, job: FitJob, warm, truth_data) -> None:
    """Check the face size of a fit of ``stack`` against the images, the start and the truth,
    each error naming the option at fault."""
    K, H, W = stack.images.shape
    h, w = job.settings.face_shape
    if warm is not None and warm.background.shape != (H, W):
        bh, bw = warm.background.shape
        raise click.BadParameter(
            f"{job.init_from}: made for {bh}x{bw} images, these are {H}x{W}",
            param_hint="'--init-from'",
        )
    if h > H or w > W:
        guess = [n for n in map(said, stack.notes) if "--layout" in n]  # misread axes?
        raise click.BadParameter(
            f"{h}x{w} is larger than the images ({H}x{W}) of {input}"
            + (f" ({guess[0]})" if guess else ""),
            param_hint="'--face-size'",
        )
    if warm is not None and warm.face.shape != (h, w):
        raise click.BadParameter(
            f"{job.init_from}: its face is {warm.face.shape[0]}x{warm.face.shape[1]}, not {h}x{w}",
            param_hint="'--init-from'",
        )
    if truth_data is not None and truth_data.faces is not None and len(truth_data.faces) > 1:
        raise click.BadParameter(
            f"{job.truth}: the truth of {len(truth_data.faces)} faces: fit with --faces "
            f"{len(truth_data.faces)}",
            param_hint="'--truth'",
        )
    if truth_data is not None:
        tb = truth_data.params.background.shape
        if tb != (H, W) or len(truth_data.positions) != K:
            raise click.BadParameter(
                f"{job.truth}: describes {len(truth_data.positions)} images of {tb[0]}x{tb[1]}, "
                f"the input has {K} of {H}x{W}",
                param_hint="'--truth'",
            )
        if truth_data.params.face.shape != (h, w):
            tf = truth_data.params.face.shape
            raise click.BadParameter(
                f"{job.truth}: its face is {tf[0]}x{tf[1]}, not {h}x{w}", param_hint="'--truth'"
            )


def _run_engine(
    stack, input, settings, progress, resumed, init_from=None, **kw
) -> tuple[engine.FitResult, list]:
    """``engine.fit`` on the stack with the progress callback (started from ``kw``'s
    ``init_params``, read from the file ``init_from``, if given); its warnings are returned,
    to be said in the command's words."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", engine.ConvergenceWarning)
        warnings.simplefilter("always", engine.NoiseFloorWarning)
        try:
            result = engine.fit(
                stack.images,
                settings,
                callback=progress,
                on_chunk=progress.bar.chunk,
                on_start=progress.bar.start,
                resume=None if resumed is None else resumed.state,
                **kw,
            )
        except engine.NonFiniteError as err:  # a streamed .npy is checked as it is read
            raise non_finite(input, stack, err) from None
        except engine.CheckpointError as err:
            raise InputError(f"{resumed.path}: {err}") from None
        except engine.StartError as err:  # (--init-from's values, against these images)
            raise InputError(f"{init_from}: {err}") from None
        except engine.ValueRangeError as err:
            raise InputError(f"{input}: {err}") from None
        finally:
            progress.bar.close()
    return result, list(caught)


def _report_engine(result: engine.FitResult, caught: list, K: int) -> None:
    """The engine's notes and warnings, in the command line's words."""
    if result.fft_cached < K:
        log.info(
            "note: the FFT cache held %d of %d images within --memory-limit; raising it saves "
            "one FFT per other image and iteration",
            result.fft_cached,
            K,
        )
    for w_ in caught:
        if issubclass(w_.category, engine.ConvergenceWarning):
            gained = f"the last iteration gained {result.gain[-1]:.2g} nats per image and pixel"
            if result.settings.accelerated:
                gained = (
                    f"estimated {result.gain[-1]:.2g} nats per image and pixel below the optimum"
                    if math.isfinite(result.gain[-1])
                    else "its gains were not yet shrinking"
                )
                if result.gain[-1] < result.settings.tol:
                    gained += (
                        f" in the last iteration, of the {engine.accelerate.STOP_CYCLES} in a row "
                        "it stops on"
                    )
            elif math.isinf(result.gain[-1]):  # Monte-Carlo EM, before its second window
                gained = f"Monte-Carlo EM measures its gain after {2 * engine.MC_WINDOW} iterations"
            log.warning(
                "stopped at --max-iter %d before converging (%s; --tol is %g): raise --max-iter, "
                "or --tol",
                result.settings.max_iter,
                gained,
                result.settings.tol,
            )
        elif issubclass(w_.category, UserWarning):  # the engine's: noise floor, restarts
            log.warning("%s", w_.message)
        else:
            log.debug("%s: %s", w_.category.__name__, w_.message)


class _Progress:
    """The engine's progress callback in a fit, which hands each report on: to the fit's
    announcement (at the first report, once the engine has read the data), to the errors
    against the truth, to the bar; then it keeps the report's checkpoint (the latest, what
    Ctrl-C saves) and gives it to the checkpoint saver."""

    def __init__(
        self,
        on_start: Callable[[], None] | None,
        truth: _TruthErrors,
        bar: ProgressBar,
        saver: CheckpointSaver | None,
    ) -> None:
        self.on_start, self.truth, self.bar, self.saver = on_start, truth, bar, saver
        self.latest: engine.Checkpoint | None = None  # what Ctrl-C saves

    def __call__(self, p: engine.Progress) -> None:
        if self.on_start is not None:
            self.on_start()
            self.on_start = None
        self.truth(p)
        self.bar(p)
        self.latest = p.checkpoint
        if self.saver is not None:
            self.saver.maybe_save(p.checkpoint, self.truth.errors)


class _TruthErrors:
    """Errors against a known truth (``--truth``) per iteration of each restart, measured from
    the engine's progress reports; none without a truth. A resumed fit carries on with the
    ``errors`` its checkpoint saved."""

    def __init__(self, truth: runs.Truth | None, errors: dict[int, list[dict[str, float]]]) -> None:
        self.truth = truth
        self.errors = errors

    def __call__(self, p: engine.Progress) -> None:
        if self.truth is not None:
            rows = self.errors.setdefault(p.restart, [])
            if p.positions is not None:  # the E-step of θ_{t-1}: its positions
                rows[-1]["positions_right"] = synthetic.errors(
                    p.params, p.positions, self.truth.params, self.truth.positions
                )["positions_right"]
            rows.append(synthetic.errors(p.params, None, self.truth.params, self.truth.positions))

    def history(self, result: engine.FitResult) -> dict[str, np.ndarray] | None:
        """Errors against the truth per iteration of the kept restart (with the final
        positions)."""
        if self.truth is None:
            return None
        rows = self.errors[result.best_restart]
        rows[-1]["positions_right"] = synthetic.errors(
            result.params, result.positions, self.truth.params, self.truth.positions
        )["positions_right"]
        return {k: np.array([r[k] for r in rows]) for k in runs.ERROR_COLUMNS}


def _summary(result, K, H, W, seconds, out, errors) -> dict[str, Any]:
    n = K * H * W
    s = {
        "n_images": K,
        "image_size": [H, W],
        "face_size": list(result.face.shape),
        "method": result.method,
        "init": result.init,
        "restarts": len(result.restarts),
        "restarts_asked": result.settings.restarts,  # "auto" or the number given
        "best_restart": result.best_restart,
        "n_iter": result.n_iter,
        "accelerated": result.settings.accelerated,
        # passes over the images by every restart (annealing included): the work done
        "passes": int(sum(h.passes[-1] for h in result.restarts)),
        "converged": result.converged,
        "seconds": round(seconds, 3),  # this session's, reading included
        # the restarts' times as history.csv counts them (from each restart's start to its
        # last M-step), interrupted sessions included
        "history_seconds": round(float(sum(h.seconds[-1] for h in result.restarts)), 3),
        "noise_std": result.noise_std,
        "log_likelihood": float(result.log_likelihood[-1]),
        "log_likelihood_per_pixel": float(result.log_likelihood[-1]) / n,
        "elbo": float(result.elbo[-1]),
        "seed_entropy": str(result.seed_entropy),
        "unidentified_background_pixels": int(result.unidentified.sum()),
        "mean_position_probability": float(np.mean(result.position_probability)),
        "out": out,
    }
    if errors is not None:
        s.update({k: float(v[-1]) for k, v in errors.items()})
    # strict JSON has no NaN or infinity: a value that is not a number is null
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in s.items()}


def _report(s: dict[str, Any], result: engine.FitResult, written: list[str], resumed: bool) -> None:
    n = s["n_iter"]
    state = f"converged after {n} iterations"
    if not s["converged"]:  # (tol <= 0: as many iterations as asked for)
        state = f"stopped at --max-iter after {n} iterations"
        if result.settings.tol <= 0:
            state = f"ran {n} iterations"
    took = f"{s['seconds']:.1f} s"
    if s["restarts"] > 1:  # the iterations are the kept restart's, the time all restarts'
        state += " (the kept restart)"
        took += f" (all {s['restarts']} restarts)"
    if resumed:  # history.csv counts the earlier sessions too
        took += (
            f" since --resume ({s['history_seconds']:.1f} s of EM in all, as history.csv has it)"
        )
    log.info(
        "%s in %s: noise std %.4g, log-likelihood %.6g (%.4f per pixel)",
        state,
        took,
        s["noise_std"],
        s["log_likelihood"],
        s["log_likelihood_per_pixel"],
    )
    first = result.restarts[0].mean_probability
    if s["restarts"] > 1 and result.settings.restarts == "auto" and math.isfinite(first):
        log.info(
            "note: the 1st fit's positions were not sure (mean probability %.3f, below %g), so "
            "--restarts auto tried %d starts (--restarts 1: one)",
            math.floor(first * 1000) / 1000,  # (rounded down: never "0.990, below 0.99")
            engine.settings.SURE_PROBABILITY,
            s["restarts"],
        )
    if s["restarts"] > 1:
        lls = ", ".join(f"{h.log_likelihood[-1]:.6g}" for h in result.restarts)
        log.info(
            "kept restart %d of %d (best_restart %d in --json and result.npz, which count from "
            "0; final log-likelihoods: %s)",
            s["best_restart"] + 1,
            s["restarts"],
            s["best_restart"],
            lls,
        )
    kept = result.restarts[result.best_restart]
    K, D = s["n_images"], result.prior.size
    if kept.prior_fixed_until < kept.n_iter and D > K:  # a learnt prior, few images per position
        log.info(
            "note: the prior over %d positions was fitted to %s (%.2g per position): it is "
            "barely determined and favours the positions seen; positions.csv and detect use it "
            "smoothed (see detect --prior)",
            D,
            plural(K, "image"),
            K / D,
        )
    note_unsure(s["mean_position_probability"], "positions.csv" if written else "the fit")
    if s["unidentified_background_pixels"]:
        log.info(
            "%d background pixels were covered by the face in every image: they cannot be "
            "estimated and kept their starting value",
            s["unidentified_background_pixels"],
        )
    if "face_rmse" in s:
        log.info(
            "against the truth: face RMSE %.4g, background RMSE %.4g, positions right %.1f%%",
            s["face_rmse"],
            s["background_rmse"],
            100 * s["positions_right"],
        )
    if written:
        log.info("wrote %s: %s", s["out"], ", ".join(written))
