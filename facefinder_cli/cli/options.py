"""What the commands share: option types, option decorators and the error edge.

The error edge is :func:`reports_errors`, which turns the library's errors into one-line
messages, and :class:`Group`, the ``main`` group's class, which says every error in one line of
stderr and ends every command alike when it is interrupted; with them the logging on stderr,
:data:`STOPPED` (what an interrupted command has to say) and the small helpers that every
command reads its input and reports through (:func:`load`, :func:`log_notes`...).
"""

from __future__ import annotations

import contextlib
import decimal
import errno
import functools
import json
import logging
import math
import os
import re
import stat
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from facefinder_cli import engine, images, interrupts, outputs
from facefinder_cli.errors import Hint, InputError, worded
from facefinder_cli.images.stacks import _npy_header_info
from facefinder_cli.interrupts import Interrupted

log = logging.getLogger("facefinder")

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


@dataclass(frozen=True)
class AutoSize:
    """``--face-size auto`` (``lo``/``hi`` None: the default range) or ``HxW:HxW``."""

    lo: tuple[int, int] | None = None
    hi: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.lo is None:
            return "auto"
        return f"{self.lo[0]}x{self.lo[1]}:{self.hi[0]}x{self.hi[1]}"


class FaceSizeType(ShapeType):
    """``HxW``; ``auto`` to choose the size from the images; ``HxW:HxW`` to choose it in a
    range (smallest:largest)."""

    name = "HxW|auto|HxW:HxW"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int] | AutoSize:
        if isinstance(value, (tuple, AutoSize)):
            return value
        text = str(value).strip()
        if text.lower() == "auto":
            return AutoSize()
        if ":" in text:
            a, _, b = text.partition(":")
            try:
                lo, hi = super().convert(a, param, ctx), super().convert(b, param, ctx)
            except click.BadParameter:
                self.fail(f"expected a range SMALLEST:LARGEST like 8x8:40x40; got {value!r}",
                          param, ctx)  # fmt: skip
            if lo[0] > hi[0] or lo[1] > hi[1]:
                self.fail(f"the range {value!r} runs backwards: give SMALLEST:LARGEST", param, ctx)
            return AutoSize(lo, hi)
        return super().convert(value, param, ctx)


FACE_SIZE = FaceSizeType()


class FacesType(click.ParamType):
    """A number of faces (1 or more), or ``auto``: an int, or the string ``"auto"``."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if re.fullmatch(r"[0-9]+", text) and int(text) >= 1:
            return int(text)
        self.fail(f"expected a number of faces from 1, or auto; got {value!r}", param, ctx)


FACES = FacesType()


class RestartsType(click.ParamType):
    """A number of restarts (1 to ``MAX_RESTARTS``), or ``auto``: an int, or ``"auto"``."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        most = engine.settings.MAX_RESTARTS
        try:  # (as click's IntRange reads it: "+3", "1_0")
            number = int(text)
        except ValueError:
            number = 0
        if 1 <= number <= most:
            return number
        self.fail(f"expected a number of restarts from 1 to {most}, or auto; got {value!r}",
                  param, ctx)  # fmt: skip


RESTARTS = RestartsType()


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
        return number + 0.0  # (-0 as 0: NumPy refused a noise std of -0.0 in its own words)

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        return f"FLOAT>={self.minimum:g}"


class ToleranceType(click.ParamType):
    """A stopping tolerance: a number, not NaN or +inf (which would stop at once and call it
    converged); 0 or less, -inf included, means no tolerance."""

    name = "FLOAT"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if number != number or number == math.inf:
            self.fail(
                f"must be a number other than nan or +inf (0 or less: no tolerance), not {value!r}",
                param,
                ctx,
            )
        return number


class OutputType(click.ParamType):
    """An output path: any name but the empty one."""

    name = "PATH"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if str(value) == "":
            self.fail("must not be empty", param, ctx)
        return str(value)


OUTPUT = OutputType()


def verbosity(f: Callable) -> Callable:
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
    "--overwrite",
    is_flag=True,
    help="Replace existing outputs that facefinder wrote (refused without it; other files "
    "are never replaced).",
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

scheduler_opt = click.option(
    "--scheduler",
    metavar="ADDRESS|local:N",
    envvar="DASK_SCHEDULER_ADDRESS",
    show_envvar=True,
    help="Run every pass on the workers of a Dask cluster: its scheduler's address "
    "(HOST:PORT, tcp://HOST:PORT), or local:N for a new cluster of N worker processes on "
    "this machine (N up to its cores). INPUT must be a .npy stack or a Zarr array that every "
    "worker reads at the same path. The result is the same as without, bit for bit "
    "(docs/DISTRIBUTED.md). An empty value runs here. Needs pip install 'facefinder[dask]'.",
)


def _scheduler_hint() -> str:
    """How the user gave the scheduler: the option, or Dask's environment variable."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source("scheduler") == ParameterSource.ENVIRONMENT:
        return "DASK_SCHEDULER_ADDRESS"
    return "'--scheduler'"


#: The extra that brings Dask.
DASK_EXTRA = "pip install 'facefinder[dask]'"


def check_cluster_input(scheduler: str | None, input: str) -> None:
    """Refuse, before reading anything, a malformed --scheduler and an input that its workers
    cannot read themselves (one that does not exist is left to the reader to name)."""
    if not scheduler:
        return
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError(f"--scheduler needs Dask's distributed scheduler: {DASK_EXTRA}") from None
    from facefinder_cli.engine import cluster

    try:
        cluster.check_address(scheduler)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=_scheduler_hint()) from None
    source = str(input)
    readable = source.lower().endswith(".npy") or images.is_zarr(source)
    if not readable and (os.path.exists(source) or any(c in source for c in "*?[")):
        raise click.BadParameter(
            f"{input}: the workers read the images themselves, from a file they share: give a "
            ".npy stack or a Zarr array (`facefinder pack` makes either)",
            param_hint=_scheduler_hint(),
        )


@contextlib.contextmanager
def cluster_client(scheduler: str | None, stack: images.Stack, input: str) -> Iterator[Any]:
    """A Dask client for ``--scheduler`` (None without it) with at least one worker, closed
    on the way out (see :func:`check_cluster_input`, called before)."""
    if not scheduler:
        yield None
        return
    if not callable(getattr(stack.images, "opener", None)):  # e.g. a .npy in Fortran order
        raise click.BadParameter(
            f"{input}: the workers read the images themselves, and cannot read this file in "
            "parts: repack it with `facefinder pack`",
            param_hint=_scheduler_hint(),
        )
    import dask.config
    from dask.utils import parse_timedelta

    from facefinder_cli.engine import cluster

    if log.getEffectiveLevel() > logging.DEBUG:  # (-v shows Dask's logs too)
        cluster.quiet_logs()
    timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    client = cluster.connect(scheduler, timeout=timeout)
    try:
        n = cluster.wait_for_workers(
            client,
            timeout,
            lambda: log.info("waiting up to %g s for workers to join the scheduler", timeout),
        )
        log.debug("on the Dask cluster at %s: %d workers", scheduler, n)
        yield client
    finally:
        cluster.close_client(client)


def reports_errors(f: Callable) -> Callable:
    """Turn the library's errors into one-line messages (exit 1), never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (InputError, ValueError, engine.ClusterError) as err:
            log.debug("details", exc_info=True)
            raise click.ClickException(said(err)) from None
        except MemoryError:
            command = click.get_current_context().info_name
            hint = (
                ": try a smaller --chunk-size (for Monte-Carlo EM, fewer --samples or "
                "--max-samples), or fewer or smaller images"
            )
            raise click.ClickException(
                "out of memory" + (hint if command == "fit" else "")
            ) from None
        except BrokenPipeError:
            raise  # a reader closed standard output: a quiet end (see Group.main)
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


def load(
    source: str, layout: str, skip_unreadable: bool = False, stream: bool = False
) -> images.Stack:
    try:
        return images.load_stack(
            source,
            None if layout == "auto" else layout,
            skip_unreadable=skip_unreadable,
            stream=stream,
        )
    except images.InputError:
        # A fit's own outputs given as the images (its folder, its result.npz) failed on the
        # sizes of face.png and background.png, or on result.npz's keys: say what they are.
        if os.path.isdir(source) and outputs.marker_kind(source) == "fit":  # (RUN_FOLDER's)
            what = "a run folder that facefinder fit wrote"
        elif os.path.isfile(source) and outputs.is_facefinder_npz(source):
            what = "a file that facefinder wrote (a fit's result or checkpoint, or a truth)"
        else:
            raise
        raise images.InputError(
            f"{source}: {what}, not images: give the images (a folder, a pattern or a stack file)"
        ) from None


def check_unchanged(source: str, stack: images.Stack, outcome: str, again: str = "") -> None:
    """Refuse a result computed from ``stack`` if its file was written to while it was read
    (the result would mix its old and new images), saying ``outcome`` ("the run was not
    written") and how to run it ``again`` (" with --overwrite")."""
    if stack.changed():
        rename = " (to replace a .npy stack meanwhile, rename a new file onto its name)"
        raise images.InputError(
            f"{source}: written to while it was being read: {outcome}, since it would mix old "
            f"and new images; run the command again{again}"
            + (rename if isinstance(stack.images, images.NpyReader) else "")
        )


def non_finite(source: str, stack: images.Stack, err: engine.NonFiniteError) -> images.InputError:
    """The error for a non-finite image found by the engine in a streamed stack."""
    k, name = err.index, stack.names[err.index]
    named = "" if name == f"{os.path.basename(source)}[{k}]" else f", {name}"
    return images.InputError(f"{source}: image {k} (counting from 0{named}) contains {err.what}")


def note_stale(done: list[str]) -> None:
    """Say what was cleaned up after a killed earlier run (see ``outputs.claim``)."""
    if done:
        more = f"; and {len(done) - 3} more" if len(done) > 3 else ""
        log.info("note: after an interrupted earlier run, %s%s", "; ".join(done[:3]), more)


#: Below this mean probability the positions' probabilities may overstate how often they are
#: right: in docs/PROBABILITIES.md's table, 4 of the 7 cells below it do, by 0.07 to 0.29, and
#: none of those above it.
UNSURE_PROBABILITY = 0.9


def note_unsure(mean_probability: float, where: str) -> None:
    """Say, when the positions are unsure, that their probabilities may then overstate."""
    if mean_probability < UNSURE_PROBABILITY:
        log.info(
            "note: the positions are unsure (mean probability %.2f in %s); below %.1f the "
            "probabilities may overstate how often they are right, and more images help most "
            "(docs/PROBABILITIES.md)",
            mean_probability,
            where,
            UNSURE_PROBABILITY,
        )


def print_json(summary: dict[str, Any], folder: str | None) -> None:
    """``--json``'s summary on standard output; if that cannot take it, the error says that
    the run itself was written (to ``folder``, when there is one)."""
    try:
        with outputs.atomic_write("-", "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
    except InputError as err:
        if folder is None:
            raise
        raise InputError(f"{err}; the run was written to {folder} all the same") from None


def _flag(hint: Hint) -> str:
    """A library's hint in the command line's words: the option and its value."""
    flag = f"--{hint.option.replace('_', '-')}"
    if hint.value is not None:
        flag += f" {hint.value}"
    return f"{hint.command} {flag}" if hint.command else flag


def said(message: object) -> str:
    """A library's error or note as the command line says it: settings named as options."""
    return worded(message, _flag)


def log_notes(stack: images.Stack, truth_given: bool = False, fitting: bool = True) -> None:
    """How the input was read (after the checks, so that an error stays a single line);
    ``fitting``: the command is a fit, which can take a folder's truth.npz (``--truth``)."""
    for note in stack.notes:
        if note.startswith("not read: truth.npz"):
            if truth_given:
                continue  # the user gave it already
            if not fitting:  # (without the advice to fit with --truth)
                log.info("note: %s", str(note).split(" (", 1)[0])
                continue
        # data left out, or the axis of the images guessed from the shape (with -q, a wrong
        # guess fitted rows of pixels as images in silence): worth a warning
        layout = any(h.option == "layout" for h in getattr(note, "hints", ()))
        if note.startswith("skipped") or layout:
            log.warning("%s", said(note))
        else:
            log.info("note: %s", said(note))


def prior_file(value: str, shape: tuple[int, int], need: str) -> np.ndarray:
    """The prior table in the .npy file ``value`` (for --prior): of ``shape``, non-negative,
    with a positive sum; else a usage error saying what it holds and that ``need``."""
    path = Path(value)

    def refuse(why: str) -> click.BadParameter:
        return click.BadParameter(f"{value}: {why}", param_hint="'--prior'")

    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise refuse("a loop of symbolic links") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise refuse("no such file") from None
        raise refuse(f"cannot open ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise refuse("a folder, not a .npy file")
    if not stat.S_ISREG(mode):  # a FIFO or a device: not opened, which could wait forever
        raise refuse("not a regular file")
    # The header first: its dtype and shape are refused before anything is loaded (an object
    # array would need unpickling; a wrong or huge shape, memory).
    try:
        with open(path, "rb") as f:
            header_shape, _, dtype = _npy_header_info(f)
    except OSError as err:
        raise refuse(f"cannot open ({err.strerror or err})") from None
    except Exception:
        raise refuse("not a NumPy .npy file (or its header is damaged)") from None
    if dtype.hasobject:
        raise refuse("holds Python objects (dtype object), not numbers")
    if header_shape != tuple(shape):
        raise refuse(f"shape {header_shape}; {need}")
    try:
        prior = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, MemoryError, OverflowError):
        raise refuse("not a readable .npy file (truncated?)") from None
    if prior.shape != shape:
        raise click.BadParameter(f"{value}: shape {prior.shape}; {need}", param_hint="'--prior'")
    good = prior.dtype.kind in "biuf" and np.isfinite(prior).all()
    with np.errstate(over="ignore"):
        total = prior.sum(dtype=np.float64) if good else np.nan
    if not good or (prior < 0).any() or not total > 0:
        raise click.BadParameter(
            f"{value}: not a distribution (values must be finite, non-negative, not all zero)",
            param_hint="'--prior'",
        )
    if not np.isfinite(total):  # e.g. two entries of 1e308
        raise refuse("its values sum to more than the largest float; scale them down")
    return prior.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# The group's class: the error edge
# ---------------------------------------------------------------------------------------------


class Group(click.Group):
    """Click's group, with every error on one line of stderr (no usage block, no traceback),
    and the same end for every command when it is interrupted (Ctrl-C: 130, SIGTERM: 143) or
    its reader goes away (``| head``: 141, quietly)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        outputs.repair_std_streams()
        outputs.guard_stderr()  # a reader of messages that goes away ends nothing
        _setup_logging()
        sys.unraisablehook = _unraisable_logged
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        with interrupts.handled(), _warnings_logged():
            code = self._run(*args, **kwargs)
        sys.exit(code)

    def _run(self, *args: Any, **kwargs: Any) -> int:
        STOPPED.clear()
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
            line = STOPPED.get("line")
            if line is None and stop.after == "install":  # the signal came as it was put in place
                line = "interrupted: " + STOPPED.get(
                    "installed", "all the same, the output is complete"
                )
            if line is None:
                line = f"interrupted: {STOPPED.get('note', 'no output file was written')}"
            _say(line)
            return stop.exit_code
        except BrokenPipeError:
            return 141
        except SystemExit as done:  # Click's own end when --help or --version met a closed pipe
            if done.code != 1 or not outputs.stdout_reader_gone():
                raise
            outputs.close_stdout_quietly()
            return 141
        except OSError as err:  # Click's own output (--help, --version) not written: a full
            # device, say (the commands' own errors are said by reports_errors)
            _say(f"Error: standard output: cannot write ({err.strerror or err})")
            outputs.close_stdout_quietly()
            return 1

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


def _unraisable_logged(unraisable: Any) -> None:
    """An error Python could not raise (in a ``__del__``: imageio's half-built reader after
    a signal landed in its ``__init__`` printed "Exception ignored in ..." and a traceback
    after the command's one line) goes to the log at debug level (shown with -v)."""
    try:
        log.debug(
            "ignored %s: %s (in %r)",
            unraisable.exc_type.__name__,
            unraisable.exc_value,
            unraisable.object,
        )
    except Exception:  # (at exit, the log may be gone)
        pass


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
STOPPED: dict[str, str] = {}


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
