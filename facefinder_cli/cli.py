"""The ``facefinder`` command line.

Commands are thin: parse options, call the library, report. All maths lives in the engine.
stdout carries only data (a PNG with ``-o -``, a JSON summary with ``--json``, CSV from
``detect``); messages, warnings and the progress bar go to stderr.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import glob
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

from facefinder_cli import (
    __version__,
    engine,
    images,
    interrupts,
    names,
    outputs,
    runs,
    synthetic,
)
from facefinder_cli.errors import Hint, InputError, worded
from facefinder_cli.interrupts import Interrupted
from facefinder_cli.names import printable

log = logging.getLogger("facefinder")

SAMPLE_FACE = Path(__file__).parent / "data" / "face.png"
SAMPLE_BACKGROUND = Path(__file__).parent / "data" / "background.png"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---------------------------------------------------------------------------------------------
# Shared option types and decorators
# ---------------------------------------------------------------------------------------------


class ShapeType(click.ParamType):
    """``HxW`` (e.g. ``40x30``) as a ``(height, width)`` tuple of positive integers."""

    name = "HxW"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*[xX×,]\s*(\d+)\s*", str(value))
        if not m or int(m[1]) < 1 or int(m[2]) < 1:
            self.fail(f"expected HEIGHTxWIDTH in pixels, like 40x30; got {value!r}", param, ctx)
        return int(m[1]), int(m[2])


SHAPE = ShapeType()


class ByteSizeType(click.ParamType):
    """A memory size: bytes, or a number with a unit K, M, G, T (powers of 1024; ``KiB``,
    ``MB``... are read the same way), e.g. ``512M``, ``1.5G``."""

    name = "SIZE"
    _UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

    _MOST = 2**60  # an exbibyte: more than any machine, less than any overflow

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        text = str(value)
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.I)
        if not m:
            self.fail(f"expected a size like 512M or 2G; got {value!r}", param, ctx)
        size = decimal.Decimal(m[1]) * self._UNITS[m[2].lower()]  # exact, however many digits
        if size > self._MOST:
            shown = text if len(text) <= 24 else text[:20] + "..."
            self.fail(f"{shown!r} is more memory than any machine has", param, ctx)
        return int(size)


BYTE_SIZE = ByteSizeType()


class FiniteFloatType(click.ParamType):
    """A finite number (no inf or nan), at least ``minimum``."""

    name = "FLOAT"

    def __init__(self, minimum: float) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number, not {value!r}", param, ctx)
        if number < self.minimum:
            self.fail(f"must be at least {self.minimum:g}, not {value!r}", param, ctx)
        return number

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        return f"FLOAT>={self.minimum:g}"


class OutputType(click.ParamType):
    """An output path: any name but the empty one."""

    name = "PATH"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if str(value) == "":
            self.fail("must not be empty", param, ctx)
        return str(value)


OUTPUT = OutputType()


def _verbosity(f: Callable) -> Callable:
    """``-v``/``-q``: more or fewer messages on stderr."""

    def set_level(ctx: click.Context, param: click.Parameter, value: int) -> int:
        level = ctx.meta.get("facefinder_level", logging.INFO)
        level += 10 * value if param.name == "quiet" else -10 * value
        ctx.meta["facefinder_level"] = level
        log.setLevel(min(max(level, logging.DEBUG), logging.ERROR))
        return value

    f = click.option(
        "-q",
        "--quiet",
        count=True,
        expose_value=False,
        callback=set_level,
        help="Fewer messages (-qq: errors only).",
    )(f)
    f = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=set_level,
        help="More messages (-v: details).",
    )(f)
    return f


overwrite_opt = click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs (refused without it)."
)
skip_opt = click.option(
    "--skip-unreadable",
    is_flag=True,
    help="Leave out files of a folder or pattern that are not readable images (named in a "
    "note) instead of stopping at the first.",
)
layout_opt = click.option(
    "--layout",
    type=click.Choice(["auto", "khw", "hwk"]),
    default="auto",
    show_default=True,
    help="Axis order of a .npy/.npz/.mat stack: images first (khw) or last (hwk, as the "
    "course's .mat files); auto guesses from the file type and shape.",
)


def _reports_errors(f: Callable) -> Callable:
    """Turn the library's errors into one-line messages (exit 1), never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (InputError, ValueError) as err:
            log.debug("details", exc_info=True)
            raise click.ClickException(_said(err)) from None
        except MemoryError:
            command = click.get_current_context().info_name
            hint = ": try a smaller --chunk-size, or fewer or smaller images"
            raise click.ClickException(
                "out of memory" + (hint if command == "fit" else "")
            ) from None
        except BrokenPipeError:
            raise  # a reader closed standard output: a quiet end (see _Group.main)
        except OSError as err:  # the system refused something: say what, on which file
            log.debug("details", exc_info=True)
            where = f"{err.filename}: " if err.filename else ""
            raise click.ClickException(f"{where}{err.strerror or err}") from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:  # a bug: still one line, the details with -v
            log.debug("details", exc_info=True)
            raise click.ClickException(
                f"unexpected {type(err).__name__}: {err} (run with -v for details; please "
                "report it)"
            ) from None

    return wrapper


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"warning: {msg}"
        if record.exc_info:  # with -v: the traceback behind an error
            msg += "\n" + logging.Formatter().formatException(record.exc_info)
        click.echo(msg, err=True)


def _setup_logging() -> None:
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.propagate = False
    log.setLevel(logging.INFO)


def _load(
    source: str, layout: str, skip_unreadable: bool = False, stream: bool = False
) -> images.Stack:
    return images.load_stack(
        source,
        None if layout == "auto" else layout,
        skip_unreadable=skip_unreadable,
        stream=stream,
    )


def _non_finite(source: str, stack: images.Stack, err: engine.NonFiniteError) -> images.InputError:
    """The error for a non-finite image found by the engine in a streamed stack."""
    k, name = err.index, stack.names[err.index]
    named = "" if name == f"{os.path.basename(source)}[{k}]" else f", {name}"
    return images.InputError(f"{source}: image {k} (counting from 0{named}) contains {err.what}")


def _note_stale(done: list[str]) -> None:
    """Say what was cleaned up after a killed earlier run (see ``outputs.claim``)."""
    if done:
        more = f"; and {len(done) - 3} more" if len(done) > 3 else ""
        log.info("note: after an interrupted earlier run, %s%s", "; ".join(done[:3]), more)


def _flag(hint: Hint) -> str:
    """A library's hint in the command line's words: the option and its value."""
    flag = f"--{hint.option.replace('_', '-')} {hint.value}"
    return f"{hint.command} {flag}" if hint.command else flag


def _said(message: object) -> str:
    """A library's error or note as the command line says it: settings named as options."""
    return worded(message, _flag)


def _log_notes(stack: images.Stack, truth_given: bool = False) -> None:
    """How the input was read (after the checks, so that an error stays a single line)."""
    for note in stack.notes:
        if truth_given and note.startswith("not read: truth.npz"):
            continue  # the user gave it already
        if note.startswith("skipped"):  # data left out: worth a warning
            log.warning("%s", _said(note))
        else:
            log.info("note: %s", _said(note))


# ---------------------------------------------------------------------------------------------
# The group
# ---------------------------------------------------------------------------------------------


class _Group(click.Group):
    """Click's group, with every error on one line of stderr (no usage block, no traceback),
    and the same end for every command when it is interrupted (Ctrl-C: 130, SIGTERM: 143) or
    its reader goes away (``| head``: 141, quietly)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        _setup_logging()
        outputs.repair_std_streams()
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        with interrupts.handled(), _warnings_logged():
            code = self._run(*args, **kwargs)
        sys.exit(code)

    def _run(self, *args: Any, **kwargs: Any) -> int:
        _STOPPED.clear()
        outputs.forget_broken_pipe()
        try:
            return self._finish(self._command(*args, **kwargs))
        except Interrupted as stop:  # a signal while an error was being said: end quietly
            return stop.exit_code

    def _command(self, *args: Any, **kwargs: Any) -> int:
        """Run the command; its exit status, its error said in one line."""
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
            return rv if isinstance(rv, int) else 0
        except click.UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `facefinder`: show the help
                click.echo(err.format_message(), err=True)
                return err.exit_code
            where = err.ctx.command_path if err.ctx is not None else "facefinder"
            message = _unquoted_glob(err.format_message()) or err.format_message().rstrip(".")
            _say(f"Error: {message} (see '{where} --help')")
            return err.exit_code
        except click.ClickException as err:
            _say(f"Error: {err.format_message()}")
            return err.exit_code
        except click.Abort:
            click.echo("Aborted.", err=True)
            return 1
        except Interrupted as stop:
            line = _STOPPED.get("line")
            if line is None and stop.after == "install":  # the signal came as it was put in place
                line = "interrupted: " + _STOPPED.get(
                    "installed", "all the same, the output is complete"
                )
            if line is None:
                line = f"interrupted: {_STOPPED.get('note', 'no output file was written')}"
            _say(line)
            return stop.exit_code
        except BrokenPipeError:
            return 141

    def _finish(self, code: int) -> int:
        """Flush standard output; 141, quietly, if its reader went away."""
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            code = 141
        except OSError as err:
            _say(f"Error: standard output: cannot write ({err.strerror or err})")
            code = code or 1
        if outputs.stdout_broken() or code == 141:
            outputs.close_stdout_quietly()
            return 141
        return code


def _say(line: str) -> None:
    """One line on stderr, whatever it holds (a path with a line break stays one line) and
    whatever became of stderr (a terminal closed with SIGHUP)."""
    try:
        click.echo(line.replace("\r", "\\r").replace("\n", "\\n"), err=True)
    except (OSError, ValueError):
        pass


def _unquoted_glob(message: str) -> str | None:
    """Click's "Got unexpected extra arguments (a b c ...)", which the shell makes of an
    unquoted pattern with one argument per file, as a short message that leads with the fix."""
    m = re.fullmatch(r"Got unexpected extra arguments? \((.*)\)\.?", message, re.S)
    if m is None:
        return None
    extra = m[1].split()
    shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
    return (
        f"quote glob patterns, e.g. 'imgs/*.png': the shell gave {len(extra)} more "
        f"argument{'s' if len(extra) > 1 else ''} than expected ({shown})"
    )


#: What an interrupted command has to say, set as it goes: the whole line (``"line"``), or
#: what follows "interrupted: " (``"note"``).
_STOPPED: dict[str, str] = {}


@contextlib.contextmanager
def _warnings_logged() -> Iterator[None]:
    """Python warnings (NumPy's RuntimeWarning, say) go to the log at debug level (shown with
    -v) instead of stderr: the commands say what matters in their own words."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        log.debug("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="facefinder")
@_verbosity
def main() -> None:
    """Recover a face hidden at unknown positions in many noisy images.

    Every image shows the same background with the same face pasted somewhere, plus Gaussian
    noise. `facefinder fit` recovers the face, the background, the noise level and where the
    face is in each image, by expectation-maximisation (EM).

    \b
    Try it on the bundled sample (200 noisy 72x96 images hiding a 40x30 face):
      facefinder fit sample_data/noisy --face-size 40x30 -o run     # face.png, elbo.png, ...
      facefinder fit sample_data/noisy --face-size 40x30 --method hard -o run-hard
      facefinder plot-elbo run run-hard --quantity log-likelihood -o compare.png
    \b
    Make your own data with a known truth, and fit it:
      facefinder generate -n 500 --noise 120 -o data
      facefinder fit data --face-size 40x30 --truth data/truth.npz -o run2
    \b
    Find the face in new images with a fitted model:
      facefinder detect run new_images/ > positions.csv
    \b
    Many images? Pack them once into one .npy that fit streams from disk:
      facefinder pack shots/ shots.npy
      facefinder fit shots.npy --face-size 36x30 --dtype float32 -o run

    Run `facefinder COMMAND --help` for each command's options.
    """


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def _parse_prior(value: str, face_shape: tuple[int, int], image_shape: tuple[int, int]):
    shape = (image_shape[0] - face_shape[0] + 1, image_shape[1] - face_shape[1] + 1)
    if value == "uniform":
        return None
    if value in ("centred", "centered"):
        return synthetic.centred_prior(face_shape, image_shape)
    if Path(value).suffix != ".npy":
        raise click.BadParameter(
            f"expected uniform, centred or a .npy file; got {value!r}", param_hint="'--prior'"
        )
    need = (
        f"the positions of a {face_shape[0]}x{face_shape[1]} face in "
        f"{image_shape[0]}x{image_shape[1]} images need {shape}"
    )
    return _prior_file(value, shape, need)


def _prior_file(value: str, shape: tuple[int, int], need: str) -> np.ndarray:
    """The prior table in the .npy file ``value`` (for --prior): of ``shape``, non-negative,
    with a positive sum; else a usage error saying what it holds and that ``need``."""
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"{value}: no such file", param_hint="'--prior'")
    try:
        prior = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise click.BadParameter(
            f"{value}: not a readable .npy file ({err})", param_hint="'--prior'"
        ) from None
    if prior.shape != shape:
        raise click.BadParameter(f"{value}: shape {prior.shape}; {need}", param_hint="'--prior'")
    good = prior.dtype.kind in "biuf" and np.isfinite(prior).all()
    if not good or (prior < 0).any() or not prior.sum() > 0:
        raise click.BadParameter(
            f"{value}: not a distribution (values must be finite, non-negative, not all zero)",
            param_hint="'--prior'",
        )
    return prior.astype(np.float64)


@main.command(context_settings=CONTEXT)
@click.option(
    "-o",
    "--out",
    required=True,
    type=OUTPUT,
    metavar="PATH",
    help="A folder (one image per file), or a .npz / .npy / .tif stack file.",
)
@click.option(
    "--face",
    type=click.Path(dir_okay=False),
    metavar="IMAGE",
    help="Face image [default: the bundled sample face, 40x30].",
)
@click.option(
    "--background",
    type=click.Path(dir_okay=False),
    metavar="IMAGE",
    help="Background image [default: the bundled bricks, 72x96].",
)
@click.option("--face-size", type=SHAPE, help="Resize the face to HxW pixels.")
@click.option("--size", type=SHAPE, help="Resize the background (so the images) to HxW pixels.")
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Number of images.",
)
@click.option(
    "--noise",
    type=FiniteFloatType(0.0),
    default=60.0,
    show_default=True,
    help="Noise standard deviation, in pixel units (0..255 for 8-bit images; the "
    "study used 200, 400 and 1000).",
)
@click.option(
    "--prior",
    default="uniform",
    show_default=True,
    metavar="uniform|centred|FILE.npy",
    help="Distribution of face positions: uniform, centred (a Gaussian bump), or a "
    ".npy table of shape (H-h+1, W-w+1).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed: the same seed gives the same images.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tiff", "png"]),
    help="Image files in a folder: exact 32-bit float TIFF (the default), or 8-bit "
    "PNG (clips to 0..255 and rounds).",
)
@overwrite_opt
@_verbosity
@_reports_errors
def generate(out, face, background, face_size, size, count, noise, prior, seed, fmt, overwrite):
    """Make noisy images of a face on a background, with the truth.

    Each image is the background with the face pasted at a random position, plus Gaussian
    noise. The truth (face, background, noise, prior and every position) goes to
    truth.npz inside an output folder, or to NAME.truth.npz beside a stack file: pass it to
    `facefinder fit --truth` to measure the fit.

    \b
    Examples:
      facefinder generate -o data                       # 300 images, noise 60, TIFF folder
      facefinder generate -n 1500 --noise 400 --face-size 16x16 --size 20x30 -o study.npz
      facefinder generate --face me.png --background wall.jpg --prior centred -o mine
    """
    try:
        fmt, stack_file = images.stack_target(out, fmt)
    except InputError as err:
        raise click.BadParameter(str(err), param_hint="'--out/--format'") from None
    face_img = images.read_image(face or SAMPLE_FACE)
    bg_img = images.read_image(background or SAMPLE_BACKGROUND)
    if face_size:
        face_img = synthetic.resize(face_img, face_size)
    if size:
        bg_img = synthetic.resize(bg_img, size)
    fh, fw = face_img.shape
    bh, bw = bg_img.shape
    if fh > bh or fw > bw:
        raise click.BadParameter(
            f"the face ({fh}x{fw}) is larger than the background ({bh}x{bw})",
            param_hint="'--face-size'" if face_size else "'--face'",
        )
    prior_table = _parse_prior(prior, (fh, fw), (bh, bw))
    out_path = Path(out)
    truth_path = (
        out_path.with_name(out_path.stem + ".truth.npz") if stack_file else out_path / "truth.npz"
    )
    keep = [p for p in (face, background, prior) if p and os.path.lexists(p)]
    _STOPPED["note"] = f"{out} was not written"
    with outputs.claim(out, truth_path if stack_file else None) as stale:
        _note_stale(stale)
        if stack_file:
            outputs.check_file_target(out, overwrite, keep=keep)
            outputs.check_file_target(truth_path, overwrite, keep=keep)
        else:
            outputs.check_folder_target(
                out,
                overwrite,
                keep=keep,
                kind=images.IMAGES_FOLDER,
            )
        data = synthetic.make_dataset(
            face_img, bg_img, count, noise, prior=prior_table, seed=seed, dtype=np.float32
        )
        if stack_file:  # the stack and its truth appear together, or neither changes
            clipped, batch = 0, None
            try:
                with outputs.atomic_files([out, truth_path], overwrite=overwrite) as batch:
                    images.encode_stack(batch.files[0], data.images, fmt)
                    runs.write_truth(batch.files[1], data.truth, data.positions)
            except Interrupted:
                if batch is not None and batch.installed:
                    _STOPPED["note"] = f"{out} and {truth_path} were written all the same"
                raise
        else:
            with outputs.atomic_folder(
                out,
                overwrite,
                keep=keep,
                kind=images.IMAGES_FOLDER,
            ) as tmp:
                clipped = images.write_image_files(tmp, data.images, fmt=fmt)
                runs.save_truth(Path(tmp) / "truth.npz", data.truth, data.positions)
    if clipped:
        log.warning(
            "%d of %d pixel values (%.2g%%) fell outside 0..255 and were clipped in "
            "the 8-bit PNGs; use the default TIFF format to keep them exactly",
            clipped,
            data.images.size,
            100 * clipped / data.images.size,
        )
    log.info(
        "wrote %d images of %dx%d with a %dx%d face (noise %g) to %s; truth in %s",
        count,
        bh,
        bw,
        fh,
        fw,
        noise,
        out,
        truth_path,
    )


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


class _ProgressBar:
    """The engine's progress callback as a tqdm bar on stderr (off when stderr is not a
    terminal); also collects per-iteration errors against a known truth."""

    def __init__(
        self,
        max_iter: int,
        truth: runs.Truth | None,
        saver=None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        self.on_start = on_start
        self._tqdm = tqdm
        self.max_iter = max_iter
        self.bar = None
        self.images = None  # a second bar: images through the current pass, if passes are slow
        self.truth = truth
        self.saver = saver
        self.restart = -1
        self.latest: engine.Checkpoint | None = None  # what Ctrl-C saves
        self.errors: dict[int, list[dict[str, float]]] = {}

    def __call__(self, p: engine.Progress) -> None:
        if self.on_start is not None:
            self.on_start()
            self.on_start = None
        self.track(p)
        self.latest = p.checkpoint
        if self.saver is not None:
            self.saver.maybe_save(p.checkpoint, self.errors)

    def track(self, p: engine.Progress) -> None:
        """Errors against the truth per iteration, and the bar."""
        if self.truth is not None:
            rows = self.errors.setdefault(p.restart, [])
            if p.positions is not None:  # the E-step of θ_{t-1}: its positions
                rows[-1]["positions_right"] = synthetic.errors(
                    p.params, p.positions, self.truth.params, self.truth.positions
                )["positions_right"]
            rows.append(synthetic.errors(p.params, None, self.truth.params, self.truth.positions))
        if p.iteration == 0 or p.restart != self.restart:  # a new restart, or a resumed one
            self.close()
            self.restart = p.restart
            desc = f"restart {p.restart + 1}/{p.n_restarts}" if p.n_restarts > 1 else "EM"
            self.bar = self._tqdm(
                total=p.max_iter,
                initial=max(p.iteration - 1, 0),
                desc=desc,
                unit="it",
                file=sys.stderr,
                disable=None,
                leave=False,
                dynamic_ncols=True,
            )
            if p.iteration == 0:
                return
        self.bar.set_postfix_str(f"ELBO {p.elbo:.6g}, gain {p.gain:.2g}/px", refresh=False)
        self.bar.update(1)
        log.debug(
            "restart %d, iteration %d: ELBO %.10g, log-likelihood of the previous %.10g, gain "
            "%.3g nats per image and pixel, noise std %.6g",
            p.restart + 1,
            p.iteration,
            p.elbo,
            p.log_likelihood,
            p.gain,
            p.params.noise_std,
        )

    def chunk(self, done: int, total: int) -> None:
        """The engine's per-chunk report: a bar of images through the current pass, shown
        only when a pass takes more than 2 seconds (large stacks)."""
        if self.images is None:
            self.images = self._tqdm(
                total=total,
                desc="images",
                unit="img",
                file=sys.stderr,
                disable=None,
                leave=False,
                dynamic_ncols=True,
                delay=2.0,
                position=1,
            )
        self.images.update(done - self.images.n)
        if done == total:  # a bar per pass, each shown only if that pass is slow
            self.images.close()
            self.images = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.images is not None:
            self.images.close()
            self.images = None


def _settings(**kw: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


@main.command(context_settings=CONTEXT)
@click.argument("input", metavar="INPUT", required=False)
@click.option(
    "--face-size",
    type=SHAPE,
    help="Size of the face in pixels, HxW (required unless --init-from gives it).",
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
    default="soft",
    show_default=True,
    help="soft: exact posteriors over positions; hard: each image's best position "
    "only (faster, rougher); mc: Monte-Carlo EM, positions drawn from the posteriors.",
)
@click.option(
    "--init",
    "init",
    type=click.Choice(engine.INIT_METHODS),
    default="median",
    show_default=True,
    help="Start: median (from the data; reliable) or the study's zeros, bright, random, smooth.",
)
@click.option(
    "--restarts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Independent starts; the one with the best log-likelihood is kept.",
)
@click.option(
    "--max-iter",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Most EM iterations per start (0: just the start).",
)
@click.option(
    "--tol",
    type=float,
    default=1e-7,
    show_default=True,
    help="Stop when an iteration raises the ELBO by less than this many nats per image and pixel; "
    "0 or less: run --max-iter iterations (the ELBO never falls), with no warning.",
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
    default="late",
    show_default=True,
    help="When the prior over positions is learnt: late (after the rest converges), "
    "always (every iteration, as in the study), never.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=engine.MC_SAMPLES,
    show_default=True,
    help="mc: positions drawn per image in the first iteration.",
)
@click.option(
    "--samples-growth",
    type=FiniteFloatType(1.0),
    default=engine.MC_GROWTH,
    show_default=True,
    help="mc: factor by which the draws grow every iteration.",
)
@click.option(
    "--max-samples",
    type=click.IntRange(min=1),
    default=engine.MC_MAX_SAMPLES,
    show_default=True,
    help="mc: most draws per image (raised to --samples if lower).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=engine.DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Images per chunk of the streaming pass. Each thread holds one chunk's temporaries "
    "(about 0.6 MB per image of 64x64).",
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
    default="float64",
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
    "truth.npz from generate (EM from the truth: a yardstick for the best fit).",
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
    "--checkpoint-every",
    type=click.IntRange(min=1),
    metavar="N",
    help="Save the fit every N iterations into DIR/checkpoint.npz (it is also saved on Ctrl-C "
    "or SIGTERM).",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
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
@skip_opt
@layout_opt
@overwrite_opt
@_verbosity
@_reports_errors
def fit(
    input,
    face_size,
    out,
    method,
    init,
    restarts,
    max_iter,
    tol,
    seed,
    prior_update,
    samples,
    samples_growth,
    max_samples,
    chunk_size,
    memory_limit,
    dtype,
    workers,
    init_from,
    truth,
    zoom,
    checkpoint_every,
    resume,
    as_json,
    skip_unreadable,
    layout,
    overwrite,
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
      elbo.png                   the ELBO per iteration
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
    """
    resumed: _Resumed | None = None
    if resume:
        _only_with_resume(
            click.get_current_context(), ("resume", "as_json", "memory_limit", "workers")
        )
        resumed = _Resumed.load(resume)
        if resumed.state.data is None:
            log.warning(
                "%s was saved by an older facefinder, without a record of its images: "
                "--resume cannot check that they are the same",
                resumed.path,
            )
        o = resumed.options
        input, out, overwrite = o["input_path"], resume, True
        face_size, method, init = tuple(o["face_size"]), o["method"], o["init"]
        restarts, max_iter, tol, seed = o["restarts"], o["max_iter"], o["tol"], o["seed"]
        prior_update, chunk_size, layout = o["prior_update"], o["chunk_size"], o["layout"]
        samples, samples_growth = o["samples"], o["samples_growth"]
        max_samples, init_from, truth = o["max_samples"], o["init_from"], o["truth"]
        zoom, checkpoint_every = o["zoom"], o["checkpoint_every"]
        skip_unreadable, dtype = o["skip_unreadable"], o["dtype"]
    elif input is None:
        raise click.MissingParameter(param_hint="'INPUT'", param_type="argument")
    elif out is None:
        raise click.MissingParameter(param_hint="'-o' / '--out'", param_type="option")
    elif outputs.is_stdout(out):
        out = "-"
    if as_json and out == "-":
        raise click.UsageError("--json and -o - both write to stdout; choose one")
    if (out == "-" or as_json) and outputs.stdout_closed():
        what = "the face" if out == "-" else "the --json summary"
        raise InputError(f"standard output is closed: there is nowhere to write {what}")
    if out == "-" and sys.stdout.isatty():
        raise click.UsageError(
            "-o - writes a PNG to stdout, which is a terminal: pipe it to a viewer or a file"
        )
    if checkpoint_every and outputs.is_stream(out):
        raise click.UsageError(f"--checkpoint-every needs an output folder, not -o {out}")
    if math.isnan(tol):
        raise click.BadParameter("must be a number, not nan", param_hint="'--tol'")
    warm = runs.load_params(init_from) if init_from else None
    truth_data = runs.load_truth(truth) if truth else None
    if face_size is None and warm is None:
        raise click.MissingParameter(param_hint="'--face-size'", param_type="option")
    keep = images.input_paths(input) + [p for p in (init_from, truth) if p]
    folder = None if outputs.is_stream(out) else out  # else only the face, as a PNG, into it
    with outputs.claim(folder) as stale:  # (a running fit's folder: refused here, in one line)
        _note_stale(stale)
        if folder is not None and resumed is None:
            _check_run_folder_name(folder, overwrite)
        if folder is not None:
            outputs.check_folder_target(
                folder,
                overwrite,
                keep=keep,
                kind=RUN_FOLDER,
            )
        stack = _load(input, layout, skip_unreadable, stream=True)
        K, H, W = stack.images.shape
        h, w = _fit_face_size(input, stack, face_size, warm, init_from, truth_data, truth)
        if resumed is not None:
            resumed.check_input(input, K, H, W)
        settings = _settings(
            input=str(input),
            input_path=_absolute_input(input),
            face_size=(h, w),
            method=method,
            init=init,
            restarts=restarts,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            prior_update=prior_update,
            samples=samples,
            samples_growth=samples_growth,
            max_samples=max_samples,
            chunk_size=chunk_size,
            dtype=dtype,
            init_from=os.path.abspath(init_from) if init_from else None,
            truth=os.path.abspath(truth) if truth else None,
            layout=layout,
            zoom=zoom,
            checkpoint_every=checkpoint_every,
            skip_unreadable=skip_unreadable,
            n_images=K,
            image_size=(H, W),
            command=" ".join(sys.argv),
        )

        def announce() -> None:
            if resumed is not None:
                log.info(
                    "resuming %s at iteration %d of restart %d",
                    resume,
                    resumed.state.iteration,
                    resumed.state.restart + 1,
                )
            _log_notes(stack, truth_given=truth is not None)
            log.info(
                "fitting a %dx%d face in %d image%s of %dx%d (%s) by %s EM",
                h,
                w,
                K,
                "" if K == 1 else "s",
                H,
                W,
                input,
                method,
            )

        saver = None
        if folder is not None:
            saver = _CheckpointSaver(folder, settings, keep, checkpoint_every, overwrite)
            saver.wrote = resumed is not None  # the folder holds our checkpoint already
        # Announced once the engine has read the data: a streamed stack is checked in that first
        # pass (and compared with a checkpoint's), and an error there stays the only line.
        bar = _ProgressBar(max_iter, truth_data, saver, on_start=announce)
        if resumed is not None:
            bar.errors = resumed.extra.get("errors", {})
        _STOPPED["line"] = "interrupted before the first iteration: nothing was written"
        in_place = False  # whether the finished run folder is in place
        try:
            t0 = time.perf_counter()
            result, caught = _run_engine(
                stack,
                input,
                (h, w),
                bar,
                resumed,
                method=method,
                init=init,
                n_init=restarts,
                max_iter=max_iter,
                tol=tol,
                seed=seed,
                init_params=warm,
                prior_update=prior_update,
                samples=samples,
                samples_growth=samples_growth,
                max_samples=max(max_samples, samples),
                chunk_size=chunk_size,
                memory_limit=memory_limit,
                dtype=dtype,
                workers=workers,
            )
            seconds = time.perf_counter() - t0
            _report_engine(result, caught, K, H, W, max_iter, tol, method)
            errors = _truth_errors(bar, result, truth_data)
            zoom = zoom or runs.view_zoom((H, W))
            written: list[str] = []
            if folder is None:
                lo, hi = runs.display_range(result.face, result.background)
                images.write_png(out, result.face, lo, hi, zoom=zoom)
            else:
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
                            settings=settings,
                            errors=errors,
                            zoom=zoom,
                        )
                except Interrupted as stop:  # raised once the folder was renamed into place?
                    in_place = bool(written) and stop.after == "install"
                    raise
                in_place = True
        except Interrupted:
            bar.close()
            if in_place:
                _STOPPED["line"] = f"interrupted after the run was written to {folder}"
            else:
                _STOPPED["line"] = _save_when_interrupted(saver, bar, restarts)
            raise
        if in_place:
            _STOPPED["line"] = f"interrupted after the run was written to {folder}"
        elif folder is None:
            _STOPPED["line"] = f"interrupted after the face was written to {out}"
    summary = _summary(result, K, H, W, seconds, out, errors)
    if as_json:
        with outputs.atomic_write("-", "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
    _report(summary, result, written, tol, resumed is not None)


#: The files fit writes into a run folder: --overwrite replaces one holding only these.
RUN_FILES = frozenset(
    {runs.RESULT, runs.CHECKPOINT, runs.HISTORY, runs.POSITIONS}
    | {"face.png", "background.png", "prior.png", "elbo.png"}
)
#: A run folder; those of versions before the marker are known by a result or checkpoint.
RUN_FOLDER = outputs.FolderKind(
    "fit", legacy=(runs.RESULT, runs.CHECKPOINT), expected=RUN_FILES.__contains__
)


#: Extensions of files, not folders: `fit -o out.npz` would make a folder named out.npz.
FILE_EXTENSIONS = (".npz", ".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".csv", ".json")


def _check_run_folder_name(folder: str, overwrite: bool) -> None:
    """Refuse a file-like name for fit's output folder, and point a fit into the folder of an
    interrupted one at --resume."""
    if Path(folder).suffix.lower() in FILE_EXTENSIONS and not os.path.isdir(folder):
        raise click.BadParameter(
            f"{folder}: fit writes a folder of files (result.npz, face.png, ...); give a folder "
            f"name without {Path(folder).suffix}, or -o - for the face alone",
            param_hint="'-o' / '--out'",
        )
    if not overwrite and os.path.isfile(os.path.join(folder, runs.CHECKPOINT)):
        raise InputError(
            f"{folder}: holds an interrupted fit: carry on with `facefinder fit --resume "
            f"{folder}`, or pass --overwrite to start afresh"
        )


def _absolute_input(source: str) -> str:
    """``source`` as --resume finds it from any folder: an absolute path, or for a pattern the
    pattern under the current folder (whose name is escaped: it may hold * ? [)."""
    if os.path.lexists(source) or not any(c in source for c in "*?["):
        return os.path.abspath(source)
    if os.path.isabs(source):
        return source
    return os.path.join(glob.escape(os.getcwd()), source)


def _fit_face_size(input, stack, face_size, warm, init_from, truth_data, truth) -> tuple[int, int]:
    """The face size of a fit of ``stack`` (given, or that of ``warm``), checked against the
    images, the start and the truth, each error naming the option at fault."""
    K, H, W = stack.images.shape
    if warm is not None and warm.background.shape != (H, W):
        bh, bw = warm.background.shape
        raise click.BadParameter(
            f"{init_from}: made for {bh}x{bw} images, these are {H}x{W}",
            param_hint="'--init-from'",
        )
    h, w = face_size if face_size is not None else warm.face.shape
    if h > H or w > W:
        guess = [n for n in map(_said, stack.notes) if "--layout" in n]  # misread axes?
        raise click.BadParameter(
            f"{h}x{w} is larger than the images ({H}x{W}) of {input}"
            + (f" ({guess[0]})" if guess else ""),
            param_hint="'--face-size'",
        )
    if warm is not None and warm.face.shape != (h, w):
        raise click.BadParameter(
            f"{init_from}: its face is {warm.face.shape[0]}x{warm.face.shape[1]}, not {h}x{w}",
            param_hint="'--init-from'",
        )
    if truth_data is not None:
        tb = truth_data.params.background.shape
        if tb != (H, W) or len(truth_data.positions) != K:
            raise click.BadParameter(
                f"{truth}: describes {len(truth_data.positions)} images of {tb[0]}x{tb[1]}, "
                f"the input has {K} of {H}x{W}",
                param_hint="'--truth'",
            )
        if truth_data.params.face.shape != (h, w):
            tf = truth_data.params.face.shape
            raise click.BadParameter(
                f"{truth}: its face is {tf[0]}x{tf[1]}, not {h}x{w}", param_hint="'--truth'"
            )
    return int(h), int(w)


def _run_engine(stack, input, face_shape, bar, resumed, **kw) -> tuple[engine.FitResult, list]:
    """``engine.fit`` on the stack with the progress bar; its warnings are returned, to be said
    in the command's words."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", engine.ConvergenceWarning)
        warnings.simplefilter("always", engine.NoiseFloorWarning)
        try:
            result = engine.fit(
                stack.images,
                face_shape,
                callback=bar,
                on_chunk=bar.chunk,
                resume=None if resumed is None else resumed.state,
                **kw,
            )
        except engine.NonFiniteError as err:  # a streamed .npy is checked as it is read
            raise _non_finite(input, stack, err) from None
        except engine.CheckpointError as err:
            raise InputError(f"{resumed.path}: {err}") from None
        except engine.ValueRangeError as err:
            raise InputError(f"{input}: {err}") from None
        finally:
            bar.close()
    return result, list(caught)


def _report_engine(result, caught, K, H, W, max_iter, tol, method) -> None:
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
            kept = result.restarts[result.best_restart]
            series = kept.log_likelihood if method == "mc" else kept.elbo
            gain = (series[-1] - series[-2]) / (K * H * W)
            log.warning(
                "stopped at --max-iter %d before converging (the last iteration gained %.2g "
                "nats per image and pixel; --tol is %g): raise --max-iter, or --tol",
                max_iter,
                gain,
                tol,
            )
        elif issubclass(w_.category, UserWarning):  # the engine's: noise floor, restarts
            log.warning("%s", w_.message)
        else:
            log.debug("%s: %s", w_.category.__name__, w_.message)


def _truth_errors(bar, result, truth_data) -> dict[str, np.ndarray] | None:
    """Errors against the truth per iteration of the kept restart (with the final positions)."""
    if truth_data is None:
        return None
    rows = bar.errors[result.best_restart]
    rows[-1]["positions_right"] = synthetic.errors(
        result.params, result.positions, truth_data.params, truth_data.positions
    )["positions_right"]
    return {k: np.array([r[k] for r in rows]) for k in runs.ERROR_COLUMNS}


def _save_when_interrupted(saver, bar, restarts: int) -> str:
    """Save the last completed iteration of an interrupted fit; the line that says so.
    (Further signals are ignored meanwhile: see ``interrupts``.)"""
    state = bar.latest
    if state is None:
        return "interrupted before the first iteration: nothing was written"
    if saver is None:
        return "interrupted: a fit into a stream (-o -, a device) keeps no checkpoint"
    saver.save(state, bar.errors)
    return (
        f"interrupted after iteration {state.iteration} of restart {state.restart + 1} of "
        f"{restarts}; saved in {saver.out}: carry on with `facefinder fit --resume {saver.out}`"
    )


class _Resumed:
    """The checkpoint an interrupted fit left, and the command-line options it was run with."""

    #: The options a checkpoint must record, and their types.
    OPTIONS: dict[str, tuple[type, ...]] = {
        "input_path": (str,),
        "face_size": (list,),
        "method": (str,),
        "init": (str,),
        "restarts": (int,),
        "max_iter": (int,),
        "tol": (float, int),
        "seed": (int,),
        "prior_update": (str,),
        "samples": (int,),
        "samples_growth": (float, int),
        "max_samples": (int,),
        "chunk_size": (int,),
        "dtype": (str,),
        "layout": (str,),
        "init_from": (str, type(None)),
        "truth": (str, type(None)),
        "zoom": (int, type(None)),
        "checkpoint_every": (int, type(None)),
        "skip_unreadable": (bool,),
        "n_images": (int,),
        "image_size": (list,),
    }

    def __init__(self, path: str, state: engine.Checkpoint, options: dict, extra: dict) -> None:
        self.path, self.state, self.options, self.extra = path, state, options, extra

    @classmethod
    def load(cls, folder: str) -> _Resumed:
        """Read and check ``folder``'s checkpoint: a damaged one is one line naming it."""
        state, saved, extra = runs.load_checkpoint(folder)
        path = os.path.join(folder, runs.CHECKPOINT)
        saved.setdefault("dtype", "float64")  # checkpoints of versions before --dtype
        missing = [k for k in cls.OPTIONS if k not in saved]
        if missing:
            raise InputError(
                f"{path}: not a complete facefinder checkpoint (its settings lack "
                f"{', '.join(missing)})"
            )
        choices = {
            "method": engine.METHODS,
            "init": engine.INIT_METHODS,
            "prior_update": engine.PRIOR_UPDATES,
            "dtype": engine.DTYPES,
            "layout": ("auto", "khw", "hwk"),
        }
        for key, types in cls.OPTIONS.items():
            value = saved[key]
            bad = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
            bad = bad or (key in choices and value not in choices[key])
            if key in ("face_size", "image_size") and not bad:
                bad = len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value)
            if bad:
                raise InputError(f"{path}: not a valid facefinder checkpoint (setting {key})")
        errors = extra.get("errors", {})
        if not isinstance(errors, dict) or not all(
            isinstance(rows, list) and all(isinstance(row, dict) for row in rows)
            for rows in errors.values()
        ):
            raise InputError(f"{path}: not a valid facefinder checkpoint (its errors record)")
        try:
            extra["errors"] = {int(r): rows for r, rows in errors.items()}
        except ValueError:
            raise InputError(
                f"{path}: not a valid facefinder checkpoint (its errors record)"
            ) from None
        return cls(path, state, saved, extra)

    def check_input(self, input: str, K: int, H: int, W: int) -> None:
        """Refuse images of another number or size than the checkpoint's, before any work (the
        engine compares their values, in the pass that reads them)."""
        n, (h, w) = self.options["n_images"], self.options["image_size"]
        if (K, H, W) != (n, h, w):
            raise InputError(
                f"{self.path}: the fit was made from {n} images of {h}x{w}; {input} now holds "
                f"{K} images of {H}x{W}"
            )


def _only_with_resume(ctx: click.Context, allowed: tuple[str, ...]) -> None:
    """--resume takes everything from the checkpoint: other options would be ignored."""
    from click.core import ParameterSource

    given = [
        p.opts[0] if p.opts else p.name
        for p in ctx.command.params
        if p.name not in allowed + ("verbose", "quiet")
        and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
    ]
    if given:
        raise click.UsageError(
            f"--resume takes the input and settings from the checkpoint; drop {', '.join(given)}"
        )


class _CheckpointSaver:
    """Writes a fit's checkpoints into its output folder: the folder is created (or an earlier
    run in it replaced, with --overwrite) at the first save; later saves replace
    checkpoint.npz atomically."""

    def __init__(
        self, out: str, settings: dict, keep: list[str], every: int | None, overwrite: bool
    ) -> None:
        self.out, self.settings, self.keep, self.every = out, settings, keep, every
        self.overwrite = overwrite
        self.wrote = False

    def maybe_save(self, state: engine.Checkpoint, errors: dict) -> None:
        if self.every and state.iteration and state.iteration % self.every == 0:
            self.save(state, errors)

    def save(self, state: engine.Checkpoint, errors: dict) -> None:
        extra = {"errors": {str(r): rows for r, rows in errors.items()}}
        if self.wrote:
            runs.save_checkpoint(Path(self.out) / runs.CHECKPOINT, state, self.settings, extra)
        else:
            try:
                with outputs.atomic_folder(
                    self.out, self.overwrite, keep=self.keep, kind=RUN_FOLDER
                ) as tmp:
                    runs.save_checkpoint(
                        Path(tmp) / runs.CHECKPOINT, state, self.settings, extra, overwrite=False
                    )
            except Interrupted as stop:
                self.wrote = stop.after == "install"  # in place all the same
                raise
        self.wrote = True


def _summary(result, K, H, W, seconds, out, errors) -> dict[str, Any]:
    n = K * H * W
    s = {
        "n_images": K,
        "image_size": [H, W],
        "face_size": list(result.face.shape),
        "method": result.method,
        "init": result.init,
        "restarts": len(result.restarts),
        "best_restart": result.best_restart,
        "n_iter": result.n_iter,
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


def _report(
    s: dict[str, Any], result: engine.FitResult, written: list[str], tol: float, resumed: bool
) -> None:
    n = s["n_iter"]
    state = f"converged after {n} iterations"
    if not s["converged"]:  # (tol <= 0: as many iterations as asked for)
        state = f"ran {n} iterations" if tol <= 0 else f"stopped at --max-iter after {n} iterations"
    took = f"{s['seconds']:.1f} s"
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
            "note: the prior over %d positions was fitted to %d images (%.2g per position): it "
            "is barely determined and favours the positions seen; positions.csv and detect use "
            "it smoothed (see detect --prior)",
            D,
            K,
            K / D,
        )
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


# ---------------------------------------------------------------------------------------------
# plot-elbo
# ---------------------------------------------------------------------------------------------


@main.command("plot-elbo", context_settings=CONTEXT)
@click.argument("runs_", metavar="RUN...", nargs=-1, required=True)
@click.option(
    "-o",
    "--out",
    required=True,
    type=OUTPUT,
    metavar="FILE|-",
    help="Figure file: .png, .svg or .pdf; '-' writes a PNG to stdout.",
)
@click.option(
    "--quantity",
    type=click.Choice(["elbo", "log-likelihood", "log_likelihood"]),
    default="elbo",
    show_default=True,
    help="elbo: the bound L(q, θ) EM maximises; log-likelihood: log p(X | θ), the "
    "number that compares soft, hard and Monte-Carlo EM.",
)
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["iteration", "seconds"]),
    default="iteration",
    show_default=True,
    help="Horizontal axis.",
)
@click.option(
    "--per-pixel",
    is_flag=True,
    help="Divide by images x pixels, so runs on different data compare.",
)
@click.option(
    "--gap",
    is_flag=True,
    help="Plot, on a log scale, how far each point is below the best value of the runs on the "
    "same data (runs of several data sets each compare with their own best).",
)
@click.option(
    "-l",
    "--label",
    "labels",
    multiple=True,
    help="Legend label, once per RUN in order [default: the run's folder, method, init].",
)
@click.option("--title", help="Figure title.")
@overwrite_opt
@_verbosity
@_reports_errors
def plot_elbo(runs_, out, quantity, x_axis, per_pixel, gap, labels, title, overwrite):
    """Plot ELBO or log-likelihood curves of runs on one figure.

    RUN is a run folder written by `facefinder fit`, its result.npz or its history.csv.
    A circle marks where a run started learning the prior.

    \b
    Examples:
      facefinder plot-elbo run -o elbo.png
      facefinder plot-elbo soft hard --quantity log-likelihood --x seconds -o compare.svg
      facefinder plot-elbo runs/* --gap --per-pixel -o - | display -
    """
    if labels and len(labels) != len(runs_):
        raise click.BadParameter(
            f"{len(labels)} labels for {len(runs_)} runs", param_hint="'--label'"
        )
    fmt = "png" if outputs.is_stream(out) else Path(out).suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise click.BadParameter(
            f"{out}: the figure format comes from the extension: .png, .svg or .pdf",
            param_hint="'--out'",
        )
    if outputs.is_stdout(out) and outputs.stdout_closed():
        raise InputError("standard output is closed: there is nowhere to write the figure")
    loaded = [runs.load_run(r) for r in runs_]
    from facefinder_cli.plotting import Curve, plot_curves

    curves = []
    for i, (arg, run) in enumerate(zip(runs_, loaded)):
        if labels:
            label = labels[i]
        else:
            name = Path(arg).name if Path(arg).is_dir() else Path(arg).parent.name or arg
            label = ", ".join(v for v in (name, run.method, run.init) if v)
        curves.append(
            Curve(
                label,
                run.elbo,
                run.log_likelihood,
                run.seconds,
                run.n_values,
                run.prior_fixed_until,
                run.data,
            )
        )
    keep = list(runs_)
    with outputs.claim(out) as stale:
        _note_stale(stale)
        outputs.check_file_target(out, overwrite, keep=keep)
        with outputs.atomic_write(out, overwrite=overwrite) as f:
            plot_curves(
                curves,
                f,
                quantity=quantity.replace("-", "_"),
                x=x_axis,
                per_pixel=per_pixel,
                gap=gap,
                fmt=fmt,
                title=title,
            )
    if out != "-" and not outputs.stdout_broken():
        log.info("wrote %s", out)


# ---------------------------------------------------------------------------------------------
# detect
# ---------------------------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
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
    help="Also write each image as a PNG with the found face boxed in red.",
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
@skip_opt
@layout_opt
@overwrite_opt
@_verbosity
@_reports_errors
def detect(model, input, out, draw, zoom, prior_choice, skip_unreadable, layout, overwrite):
    """Find the face in new images with a fitted model.

    MODEL is a run folder or result.npz from `facefinder fit`; INPUT as for `fit`, with images
    of the size the model was fitted on. Prints, for each image, the most probable position of
    the face's top-left corner (row, column, from 0) and its posterior probability.

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
    run = runs.load_run(model)
    if run.params is None:
        raise click.BadParameter(
            f"{model}: has no fitted parameters (a history.csv alone)", param_hint="MODEL"
        )
    params = _detect_params(run, prior_choice)
    keep = [model, *images.input_paths(input)]
    if Path(prior_choice).suffix == ".npy":
        keep.append(prior_choice)
    if draw and not outputs.is_stream(out) and outputs.inside(out, draw):
        raise click.BadParameter(
            f"{out} is inside the --draw folder {draw}, which is replaced whole: write it "
            "elsewhere",
            param_hint="'-o' / '--out'",
        )
    with outputs.claim(out, draw) as stale:
        _note_stale(stale)
        outputs.check_file_target(out, overwrite, keep=keep)
        if draw:
            outputs.check_folder_target(draw, overwrite, keep=keep, kind=DRAW_FOLDER)
        stack = _load(input, layout, skip_unreadable, stream=True)
        K, H, W = stack.images.shape
        if (H, W) != run.params.background.shape:
            bh, bw = run.params.background.shape
            raise InputError(f"{input}: images are {H}x{W}, the model was fitted on {bh}x{bw}")
        try:
            found = engine.detect(stack.images, params)
        except engine.NonFiniteError as err:  # a streamed .npy is checked as it is read
            raise _non_finite(input, stack, err) from None
        except engine.ValueRangeError as err:  # values beyond what float64 computes with
            raise InputError(f"{input}: {err}") from None
        except ValueError as err:  # the model's, likewise
            raise InputError(f"{run.source}: {err}") from None
        positions, probability = found.positions, found.probability
        _log_notes(stack)
        _warn_if_mismatched(found, run.params.noise_std, input)
        if draw:
            _STOPPED["installed"] = f"{out} was written, the boxed images in {draw} were not"
        with outputs.atomic_write(out, "w", overwrite=overwrite) as f:
            rows = names.csv_writer(f)
            rows.writerow(["image", "row", "column", "probability"])
            for name, (r, c), p in zip(stack.names, positions, probability):
                rows.writerow([printable(name), int(r), int(c), f"{p:.6g}"])
        if draw:  # one image at a time: a streamed stack is never held in memory
            if not outputs.is_stream(out):
                _STOPPED["note"] = f"{out} was written, the boxed images in {draw} were not"
            _STOPPED["installed"] = (
                f"{out} and the boxed images in {draw} were written all the same"
            )
            h, w = run.params.face.shape
            zoom = zoom or runs.view_zoom((H, W))
            with outputs.atomic_folder(draw, overwrite, keep=keep, kind=DRAW_FOLDER) as tmp:
                for k, stem in enumerate(images.file_stems(stack.names, K)):
                    r, c = positions[k]
                    rgb = _boxed(np.asarray(stack.images[k]), r, c, h, w)
                    images.write_png(Path(tmp) / (stem + ".png"), rgb, zoom=zoom)
    log.info(
        "located the face in %d images (mean probability %.3f)%s",
        K,
        float(np.mean(probability)),
        f"; boxed images in {draw}" if draw else "",
    )


#: A folder of boxed images that detect --draw writes.
DRAW_FOLDER = outputs.FolderKind(
    "detect --draw", expected=lambda name: name.lower().endswith(".png")
)


#: detect warns when the images' typical residual around the model is further than this factor
#: from the model's noise std (images that fit give a ratio within a few per cent of 1).
MISMATCH_FACTOR = 1.5


def _detect_params(run: runs.Run, choice: str) -> engine.Params:
    """The model's parameters with the prior ``--prior`` asks for."""
    p = run.params
    if choice == "fitted":
        return p
    if choice == "uniform":
        return engine.Params(p.face, p.background, p.noise_std, np.ones_like(p.prior))
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
    return engine.Params(
        p.face, p.background, p.noise_std, _prior_file(choice, p.prior.shape, need)
    )


def _warn_if_mismatched(found: engine.Detection, noise_std: float, input: str) -> None:
    """Warn when the images do not look like the model's: their residuals around it are far
    from its noise (another value scale, such as 8-bit images for a 16-bit model, or another
    scene); the positions and probabilities assume they fit."""
    typical = float(np.median(found.residual_std))
    ratio = typical / noise_std
    if 1 / MISMATCH_FACTOR <= ratio <= MISMATCH_FACTOR:
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


def _boxed(image: np.ndarray, r: int, c: int, h: int, w: int) -> np.ndarray:
    """The image as 8-bit RGB with a one-pixel red rectangle around the ``h x w`` box."""
    grey = images.to_uint8(image)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    red = np.array([255, 0, 0], dtype=np.uint8)
    rgb[r, c : c + w] = rgb[r + h - 1, c : c + w] = red
    rgb[r : r + h, c] = rgb[r : r + h, c + w - 1] = red
    return rgb


# ---------------------------------------------------------------------------------------------
# pack
# ---------------------------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.argument("input", metavar="INPUT")
@click.argument("target", metavar="STACK.npy")
@click.option(
    "--dtype",
    type=click.Choice(engine.DTYPES),
    default="float32",
    show_default=True,
    help="Pixel type of the stack. float32 holds 8- and 16-bit grey images exactly in half the "
    "space; colour and float images are rounded to 7 significant digits (with a note).",
)
@skip_opt
@layout_opt
@overwrite_opt
@_verbosity
@_reports_errors
def pack(input, target, dtype, skip_unreadable, layout, overwrite):
    """Pack images into one .npy stack that fit and detect stream from disk.

    INPUT as for `fit`. A folder, a pattern, a .npy stack or an .npz stack is read one image at
    a time, so any number of images packs in little memory (.mat and TIFF files are read
    whole). The image names go to STACK.names.txt beside the stack (one per line; line breaks,
    backslashes and bytes that are not UTF-8 escaped as \\n, \\\\ and \\xNN), which fit uses
    for positions.csv. Both files appear complete or not at all.

    `fit STACK.npy` then reads the images chunk by chunk in every iteration instead of holding
    them in memory, so its memory does not grow with the number of images (see --memory-limit).
    Ctrl-C or SIGTERM leaves no file behind (exit status 130 or 143).

    \b
    Examples:
      facefinder pack shots/ shots.npy
      facefinder pack 'cam/**/*.png' cam.npy --skip-unreadable
      facefinder fit shots.npy --face-size 36x30 -o run
    """
    from tqdm.auto import tqdm

    bar = tqdm(
        desc="packing", unit="img", file=sys.stderr, disable=None, leave=False, dynamic_ncols=True
    )

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    _STOPPED["note"] = f"{target} was not written"
    try:
        with outputs.claim(target, images.names_path(target)) as stale:
            _note_stale(stale)
            stack = images.pack_stack(
                input,
                target,
                dtype=np.dtype(dtype),
                overwrite=overwrite,
                skip_unreadable=skip_unreadable,
                layout=None if layout == "auto" else layout,
                progress=progress,
            )
    finally:
        bar.close()
    _log_notes(stack)
    K, H, W = stack.images.shape
    size = os.path.getsize(target)
    log.info(
        "packed %d image%s of %dx%d into %s (%s, %.1f MB)",
        K,
        "" if K == 1 else "s",
        H,
        W,
        target,
        dtype,
        size / 1e6,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
