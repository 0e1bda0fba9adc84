"""``facefinder fit --faces N`` (N > 1): several faces on one background
(:func:`~facefinder_cli.engine.fit_mixture`). ``--faces 1`` is the ordinary fit."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import warnings
from typing import Any

import click
import numpy as np

from facefinder_cli import engine, images, outputs, runs
from facefinder_cli.cli.fit_resume import (
    RUN_FOLDER,
    CheckpointSaver,
    FitJob,
    Resumed,
    check_run_folder_name,
    kept_for_resume,
    save_when_interrupted,
    save_when_lost,
)
from facefinder_cli.cli.options import (
    STOPPED,
    check_unchanged,
    cluster_client,
    load,
    log_notes,
    non_finite,
    note_stale,
    note_unsure,
    print_json,
    said,
)
from facefinder_cli.cli.progress import ProgressBar
from facefinder_cli.errors import InputError
from facefinder_cli.images.common import plural
from facefinder_cli.interrupts import Interrupted

log = logging.getLogger("facefinder")


def refuse_with_faces(n_faces: int | str, given: dict[str, Any]) -> None:
    """One line for each option a fit of several faces does not take (yet): ``given`` maps
    an option's name to whether it was given."""
    for option, why, instead in (
        ("--checkpoint-every", "is not checkpointed (each number of faces is a fit of its own)",
         "give --faces N"),
        ("--face-size auto", "needs the face size: give --face-size HxW, not", "fit one face"),
        ("--init-from", "starts from its own seeds", "give --faces N"),
        ("--accelerate squarem", "is plain EM", "fit one face"),
    ):  # fmt: skip
        if given.get(option):
            raise click.UsageError(
                f"a fit of --faces {n_faces} {why}"
                + ("" if why.endswith("not") else ": drop")
                + f" {option} (or {instead})"
            )


def fit_faces(
    n_faces: int | str,
    job: FitJob,
    out: str,
    *,
    as_json: bool,
    overwrite: bool,
    memory_limit: int | None,
    workers: int | None,
    scheduler: str | None = None,
    resumed: Resumed | None = None,
) -> None:
    """Fit ``n_faces`` faces (or, for ``"auto"``, the number the criterion chooses) to
    ``job.input`` and write the run into ``out`` (a folder), or the faces side by side as a
    PNG to a stream; or carry on the fit ``resumed`` (in its folder ``out``). A fit of N faces
    into a folder saves checkpoints as one face's does (every --checkpoint-every iterations,
    and on Ctrl-C, SIGTERM or a lost cluster)."""
    input, settings = (job.input_path if resumed else job.input), job.settings
    truth = runs.load_truth(job.truth) if job.truth else None
    auto = n_faces == "auto"
    if truth is not None and truth.faces is None:
        if not auto:
            raise click.BadParameter(
                f"{job.truth}: the truth of one face: fit it with --faces 1",
                param_hint="'--truth'",
            )
        # --faces auto may choose one: the truth as one of one face
        labels = np.zeros(len(truth.positions), dtype=np.intp)
        truth = dataclasses.replace(truth, faces=truth.params.face[None], labels=labels)
    if truth is not None and not auto and len(truth.faces) != n_faces:
        held = 1 if truth.faces is None else len(truth.faces)
        raise click.BadParameter(
            f"{job.truth}: the truth of {held} face{'s' if held > 1 else ''}, not {n_faces}",
            param_hint="'--truth'",
        )
    warm = None  # (a resumed fit starts as its checkpoint says, whatever the file holds now)
    if job.init_from is not None and resumed is None:
        warm = runs.load_mixture_start(job.init_from, n_faces)
    keep = images.input_paths(input) + [p for p in (job.init_from, job.truth) if p]
    folder = None if outputs.is_stream(out) else out
    with outputs.claim(folder) as stale:
        note_stale(stale)
        if folder is not None and resumed is None:
            check_run_folder_name(folder, overwrite)
        if folder is not None:
            outputs.check_folder_target(folder, overwrite, keep=keep, kind=RUN_FOLDER)
        stack = load(input, job.layout, job.skip_unreadable, stream=True)
        K, H, W = stack.images.shape
        if resumed is not None:
            resumed.check_input(input, K, H, W)
        h, w = settings.face_shape
        if h > H or w > W:
            raise click.BadParameter(
                f"{h}x{w} is larger than the images ({H}x{W}) of {input}",
                param_hint="'--face-size'",
            )
        if not auto and K < n_faces:
            raise click.BadParameter(
                f"{n_faces} faces need at least as many images; {input} has {K}",
                param_hint="'--faces'",
            )
        if warm is not None and warm.background.shape != (H, W):
            bh, bw = warm.background.shape
            raise click.BadParameter(
                f"{job.init_from}: made for {bh}x{bw} images, these are {H}x{W}",
                param_hint="'--init-from'",
            )
        if warm is not None and warm.faces.shape[1:] != (h, w):
            fh, fw = warm.faces.shape[1:]
            raise click.BadParameter(
                f"{job.init_from}: its faces are {fh}x{fw}, not {h}x{w}",
                param_hint="'--init-from'",
            )
        if truth is not None and (
            truth.params.background.shape != (H, W) or len(truth.positions) != K
        ):
            raise click.BadParameter(
                f"{job.truth}: describes {len(truth.positions)} images of "
                f"{truth.params.background.shape[0]}x{truth.params.background.shape[1]}, the "
                f"input has {K} of {H}x{W}",
                param_hint="'--truth'",
            )
        if truth is not None and truth.params.face.shape != (h, w):
            raise click.BadParameter(
                f"{job.truth}: its faces are {truth.params.face.shape[0]}x"
                f"{truth.params.face.shape[1]}, not {h}x{w}",
                param_hint="'--truth'",
            )

        def announce() -> None:
            if resumed is not None:
                log.info(
                    "resuming %s at iteration %d of restart %d",
                    out, resumed.state.iteration, resumed.state.restart + 1,
                )  # fmt: skip
            log_notes(stack, truth_given=job.truth is not None)
            log.info(
                "fitting %s faces of %dx%d in %d images of %dx%d (%s) by %s EM",
                "1, 2, 3, ..." if auto else n_faces, h, w, K, H, W, input, settings.method,
            )  # fmt: skip
            if warm is not None and settings.restarts > 1 and settings.method != "mc":
                log.warning(
                    "all %d restarts start from %s and end the same: --restarts 1 gives it",
                    settings.restarts, job.init_from,
                )  # fmt: skip

        STOPPED["line"] = (
            "interrupted while the number of faces was being chosen (--faces auto saves no "
            "checkpoint): nothing was written"
            if auto
            else "interrupted before the faces were fitted: nothing was written"
        )
        saver = None
        if folder is not None and not auto:
            saver = CheckpointSaver(folder, job.options(), keep, job.checkpoint_every, overwrite)
            if resumed is not None:  # the folder holds our checkpoint already
                saver.resuming()
        # A resumed fit is announced once the engine has taken its checkpoint (a refusal stays
        # the only line), and until it reports, Ctrl-C keeps that checkpoint and says so.
        states = _States(saver, None if resumed is None else resumed.state)
        if resumed is None:
            announce()
        else:
            states.on_first = announce
        bar = ProgressBar()
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", engine.ConvergenceWarning)
                kw = dict(
                    memory_limit=memory_limit,
                    workers=workers,
                    callback=_Iterations(settings),
                    on_chunk=bar.chunk,
                )
                with cluster_client(scheduler, stack, input) as client:
                    kw["client"] = client
                    if auto:
                        choice = engine.choose_faces(stack.images, settings, on_trial=_said,
                                                     **kw)  # fmt: skip
                        result, searched = choice.result, choice
                    else:
                        result = engine.fit_mixture(
                            stack.images,
                            settings,
                            n_faces,
                            on_state=states,
                            resume=None if resumed is None else resumed.state,
                            init_params=warm,
                            **kw,
                        )
                        searched = None
        except engine.NonFiniteError as err:
            raise non_finite(input, stack, err) from None
        except engine.ValueRangeError as err:
            raise InputError(f"{input}: {err}") from None
        except engine.CheckpointError as err:
            raise InputError(f"{resumed.path}: {err}") from None
        except engine.ClusterError as err:  # the scheduler or the client was lost
            raise InputError(
                save_when_lost(saver, states.latest, {}, settings.restarts, err)
            ) from None
        except Interrupted:
            if states.latest is not None:
                STOPPED["line"] = save_when_interrupted(saver, states.latest, {}, settings.restarts)
            raise
        finally:
            bar.close()
            kw["callback"].close()
        seconds = time.perf_counter() - t0
        check_unchanged(
            input,
            stack,
            "the run was not written",
            " with --overwrite" if saver is not None and saver.wrote else "",  # (as fit says)
        )
        if states.on_first is not None:  # (resumed at its very end: nothing was reported)
            states.on_first()
            states.on_first = None
        STOPPED["line"] = (
            "interrupted after the fit, before the run was written: nothing was written"
        )
        try:
            *written, errors = _write(
                result, searched, job, stack, truth, folder, out, keep, overwrite, saver
            )
        except Interrupted as stop:
            if folder is not None and stop.after == "install":
                STOPPED["line"] = f"interrupted after the run was written to {folder}"
            elif saver is not None and states.latest is not None:  # (its last state: resumable)
                STOPPED["line"] = save_when_interrupted(saver, states.latest, {}, settings.restarts)
            raise
        except InputError as err:  # refused now (a file of the user's came in, say)
            raise InputError(kept_for_resume(said(err), saver, states.latest, {})) from None
        if folder is None:
            STOPPED["line"] = f"interrupted after the faces were written to {out}"
        else:
            STOPPED["line"] = f"interrupted after the run was written to {folder}"
    unused = [m + 1 for m, n in enumerate(np.bincount(result.faces_of_images,
                                                       minlength=len(result.params.weights)))
              if n == 0]  # fmt: skip
    if unused:
        log.warning(
            "face%s %s explain%s no image best: fewer faces may do (--faces auto chooses)",
            "s" if len(unused) > 1 else "", ", ".join(map(str, unused)),
            "" if len(unused) > 1 else "s",
        )  # fmt: skip
    summary = _summary(result, K, H, W, seconds, out, errors, job)
    if searched is not None:
        summary["faces_search"] = {
            "chosen": searched.n_faces,
            "margin": searched.margin if np.isfinite(searched.margin) else None,
            "clear": bool(searched.margin >= np.log(20.0) and not searched.at_cap),
            "at_cap": searched.at_cap,
            "tried": [t[0] for t in searched.trials],
        }
        log.info(
            "chose %d face%s by the criterion (%s: %s); tried %s",
            searched.n_faces,
            "s" if searched.n_faces > 1 else "",
            "clear" if summary["faces_search"]["clear"] else "unclear",
            "the most that could be tried (as many as the images, or the cap): more may fit"
            if searched.at_cap else f"{searched.margin:.1f} nats above the next best"
            if np.isfinite(searched.margin) else "no other number tried",
            ", ".join(str(t[0]) for t in searched.trials),
        )  # fmt: skip
    if as_json:
        print_json(summary, folder)
    _report(summary, written, folder, resumed is not None)


def _write(
    result, searched, job: FitJob, stack, truth, folder, out, keep, overwrite, saver
) -> list:
    """Write the run into ``folder`` (or the faces side by side into the stream ``out``): the
    names of the files written, and last the errors against the truth (or None)."""
    errors = None
    if truth is not None and len(truth.faces) == len(result.params.weights):
        errors = runs.mixture_errors(result, truth)
    elif truth is not None:
        log.warning(
            "the truth holds %d faces and %d were chosen: no errors against it",
            len(truth.faces), len(result.params.weights),
        )  # fmt: skip
    K, H, W = stack.images.shape
    zoom = job.zoom or runs.view_zoom((H, W))
    p = result.params
    if folder is None:
        lo, hi = runs.display_range(p.faces, p.background)
        images.write_png(out, runs.montage(p.faces, hi), lo, hi, zoom=zoom)
        return [errors]
    if saver is not None:
        saver.check_folder()
    replace = overwrite or (saver is not None and saver.wrote)  # (our checkpoint is there)
    with outputs.atomic_folder(folder, replace, keep=keep, kind=RUN_FOLDER) as tmp:
        written = runs.save_mixture_run(tmp, result, names=stack.names, options=job.options(),
                                        errors=errors, zoom=zoom, plots=job.plots)  # fmt: skip
        if searched is not None:
            written += runs.save_faces_search(tmp, searched)
    return [*written, errors]


class _States:
    """The fit's state after each start and iteration: the latest is what Ctrl-C saves, and
    every --checkpoint-every iterations it is saved as it comes. ``on_first`` is called at the
    first report."""

    def __init__(
        self, saver: CheckpointSaver | None, latest: engine.MixtureCheckpoint | None = None
    ) -> None:
        self.saver, self.latest = saver, latest
        self.on_first: Any = None

    def __call__(self, state: engine.MixtureCheckpoint) -> None:
        if self.on_first is not None:
            self.on_first()
            self.on_first = None
        self.latest = state
        if self.saver is not None:
            self.saver.maybe_save(state, {})


class _Iterations:
    """A bar of EM iterations per restart on a terminal (as a one-face fit shows), and each
    iteration's numbers in the log at debug level (-v)."""

    def __init__(self, settings) -> None:
        self.settings, self.bar, self.restart = settings, None, -1

    def __call__(self, restart: int, iteration: int, elbo: float, ll: float) -> None:
        from tqdm import tqdm

        if restart != self.restart or self.bar is None:
            self.close()
            self.restart = restart
            n = self.settings.restarts
            self.bar = tqdm(total=self.settings.max_iter, desc=f"restart {restart + 1}/{n}"
                            if n > 1 else "EM", unit="it", file=sys.stderr, disable=None,
                            leave=False, dynamic_ncols=True)  # fmt: skip
        self.bar.set_postfix_str(f"ELBO {elbo:.6g}", refresh=False)
        self.bar.update(1)
        log.debug("restart %d, iteration %d: ELBO %.10g, log-likelihood of the previous %.10g",
                  restart + 1, iteration, elbo, ll)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _said(trial: tuple) -> None:
    n, ll, criterion, _, n_iter, seconds = trial
    log.info("  %d face%s: criterion %.1f (%d iterations, %.1f s)", n, "s" if n > 1 else "",
             criterion, n_iter, seconds)  # fmt: skip


def _summary(result, K, H, W, seconds, out, errors, job: FitJob) -> dict[str, Any]:
    p = result.params
    s: dict[str, Any] = {
        "n_images": K,
        "image_size": [H, W],
        "face_size": list(p.faces.shape[1:]),
        "faces": len(p.weights),
        "weights": [round(float(v), 6) for v in p.weights],
        "images_per_face": np.bincount(result.faces_of_images, minlength=len(p.weights)).tolist(),
        "method": result.settings.method,
        "restarts": len(result.restart_log_likelihoods),
        # "auto" or the number given (checkpoints from before it kept only the number)
        "restarts_asked": (
            job.restarts_asked if job.restarts_asked is not None else result.settings.restarts
        ),
        "best_restart": result.best_restart,
        "n_iter": result.n_iter,
        "converged": result.converged,
        "seconds": round(seconds, 3),
        "noise_std": p.noise_std,
        "log_likelihood": float(result.log_likelihood[-1]),
        "log_likelihood_per_pixel": float(result.log_likelihood[-1]) / (K * H * W),
        "elbo": float(result.elbo[-1]),
        "mean_face_probability": float(np.mean(result.face_probability)),
        "mean_position_probability": float(np.mean(result.probability)),
        "out": out,
    }
    if errors is not None:
        s["truth"] = errors
    return s


def _report(s: dict[str, Any], written: list[str], folder: str | None, resumed: bool) -> None:
    state = f"converged after {s['n_iter']} iterations" if s["converged"] else (
        f"stopped after {s['n_iter']} iterations (--max-iter)")  # fmt: skip
    took = f"{s['seconds']:.1f} s"
    if "faces_search" in s:  # the iterations are the chosen fit's, the time the search's
        state += " (the chosen fit)"
        took += f" (the whole search: {plural(len(s['faces_search']['tried']), 'number')} of faces)"
    elif s["restarts"] > 1:  # the iterations are the kept restart's, the time all restarts'
        state += " (the kept restart)"
        took += f" (all {s['restarts']} restarts)"
    log.info(
        "%s in %s%s: %d face%s, weights %s (images: %s), noise std %.4g, log-likelihood %.6g",
        state, took, " since --resume" if resumed else "", s["faces"],
        "s" if s["faces"] > 1 else "",
        ", ".join(f"{v:.3g}" for v in s["weights"]), ", ".join(map(str, s["images_per_face"])),
        s["noise_std"], s["log_likelihood"],
    )  # fmt: skip
    note_unsure(s["mean_position_probability"], "positions.csv" if written else "the fit")
    if "truth" in s:
        t = s["truth"]
        match = t["face_match"]
        matched = (
            f"the true face is face {match[0]}"
            if len(match) == 1
            else "faces matched up to relabelling: true faces 1.. are faces "
            + ", ".join(map(str, match))
        )
        log.info(
            "against the truth (%s): correlations %s, images given their face %.1f%%, and "
            "their position too %.1f%%",
            matched,
            ", ".join(f"{c:.3f}" for c in t["face_correlation"]),
            100 * t["faces_right"],
            100 * t["positions_right"],
        )
    if folder is not None:
        log.info("wrote %s: %s", folder, ", ".join(written))
