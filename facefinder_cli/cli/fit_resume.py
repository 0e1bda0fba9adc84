"""What a ``facefinder fit`` leaves behind to be carried on: its job, its checkpoint, its folder.

:class:`FitJob` is what one fit does (stored in result.npz and checkpoint.npz);
:class:`CheckpointSaver` writes checkpoint.npz while the fit runs, :class:`Resumed` reads it
back for ``--resume``, which :func:`only_with_resume` keeps from being mixed with other options;
:data:`RUN_FOLDER` is the folder a fit writes, its checkpoint included.

Apart from :mod:`.fit`, which imports them, because with them that module grew past 800
lines; they are one concern, the state that outlives a session, used by the command through a
few calls.
"""

from __future__ import annotations

import os
import re
import shlex
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click

from facefinder_cli import engine, outputs, runs
from facefinder_cli.errors import InputError
from facefinder_cli.images.common import FILE_LIKE_EXTENSIONS, IMAGE_EXTENSIONS
from facefinder_cli.interrupts import Interrupted

#: The files fit writes into a run folder: --overwrite replaces one holding only these.
RUN_FILES = frozenset(
    {runs.RESULT, runs.CHECKPOINT, runs.HISTORY, runs.POSITIONS, runs.SIZES}
    | {"face.png", "background.png", "prior.png", "elbo.png", "sizes.png", "faces.png"}
    | {"faces.csv"}
)


def _run_file(name: str) -> bool:
    """Whether fit writes a file of this name into a run folder (``face_N.png`` for --faces)."""
    return name in RUN_FILES or re.fullmatch(r"face_[1-9][0-9]*\.png", name) is not None


#: A run folder; those of versions before the marker are known by a result or checkpoint.
RUN_FOLDER = outputs.FolderKind("fit", legacy=(runs.RESULT, runs.CHECKPOINT), expected=_run_file)


@dataclass(frozen=True)
class FitJob:
    """What one `facefinder fit` does: the engine's settings and the command line's own
    options. Built once, from the options or (--resume) from the checkpoint; stored in
    result.npz and checkpoint.npz (as one JSON record: :meth:`to_dict`).

    A fit option whose name is a field of :class:`engine.FitSettings` goes there by that name;
    the others are fields here. Adding a setting touches its field, its option and its user.
    """

    settings: engine.FitSettings
    input: str  # as given
    input_path: str  # as --resume finds it from any folder (see _absolute_input)
    layout: str
    skip_unreadable: bool
    init_from: str | None
    truth: str | None
    zoom: int | None
    plots: bool
    checkpoint_every: int | None
    command: str
    # --restarts as given, where the command line resolved it (--faces: auto is 4), for --json
    restarts_asked: int | str | None = None

    def options(self) -> dict[str, Any]:
        """The command line's own fields (JSON-able), stored beside the settings."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings.to_dict(), **self.options()}

    @classmethod
    def restore(cls, settings: engine.FitSettings, options: dict, path: str) -> FitJob:
        """The job a checkpoint at ``path`` recorded; a damaged record is one line naming it."""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls) if f.name != "settings"]
        # checkpoints from before --no-plots drew them; those before restarts_asked lack it
        options = {"plots": True, "restarts_asked": None, **options}
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise InputError(
                f"{path}: made by another version of facefinder (with settings this one does "
                f"not know: {', '.join(unknown)}); fit again with --overwrite"
            )
        missing = [n for n in names if n not in options]
        if missing:
            raise InputError(
                f"{path}: not a complete facefinder checkpoint (its settings lack "
                f"{', '.join(missing)})"
            )
        for name in names:
            value = options[name]
            if not isinstance(value, hints[name]) or (
                isinstance(value, bool) and hints[name] is not bool
            ):
                raise InputError(f"{path}: not a valid facefinder checkpoint (setting {name})")
        if options["layout"] not in ("auto", "khw", "hwk"):
            raise InputError(f"{path}: not a valid facefinder checkpoint (setting layout)")
        for name, least, most in (("zoom", 1, 64), ("checkpoint_every", 1, None)):
            value = options[name]
            if value is not None and not (least <= value and (most is None or value <= most)):
                raise InputError(f"{path}: not a valid facefinder checkpoint (setting {name})")
        return cls(settings, **{n: options[n] for n in names})


class Resumed:
    """The checkpoint an interrupted fit left, and the job it was doing."""

    def __init__(
        self,
        path: str,
        state: engine.Checkpoint | engine.MixtureCheckpoint,
        job: FitJob,
        extra: dict,
    ) -> None:
        self.path, self.state, self.job, self.extra = path, state, job, extra

    @classmethod
    def load(cls, folder: str) -> Resumed:
        """Read and check ``folder``'s checkpoint: a damaged one is one line naming it."""
        state, options, extra = runs.load_checkpoint(folder)
        path = os.path.join(folder, runs.CHECKPOINT)
        job = FitJob.restore(state.settings, options, path)
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
        return cls(path, state, job, extra)

    def check_input(self, input: str, K: int, H: int, W: int) -> None:
        """Refuse images of another number or size than the checkpoint's, before any work (the
        engine compares their values, in the pass that reads them)."""
        try:
            n, (h, w) = int(self.state.data["n_images"]), self.state.data["image_size"]
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{self.path}: not a valid facefinder checkpoint (its record of the images)"
            ) from None
        if (K, H, W) != (n, h, w):
            raise InputError(
                f"{self.path}: the fit was made from {n} images of {h}x{w}; {input} now holds "
                f"{K} images of {H}x{W}"
            )


def only_with_resume(ctx: click.Context, allowed: tuple[str, ...]) -> None:
    """--resume takes everything from the checkpoint: other options would be ignored."""
    from click.core import ParameterSource

    def named(p: click.Parameter) -> str:  # a --flag/--no-flag by the half that was given
        if getattr(p, "secondary_opts", None) and ctx.params.get(p.name) is False:
            return p.secondary_opts[0]
        return p.opts[0] if p.opts else p.name

    given = [
        named(p)
        for p in ctx.command.params
        if p.name not in allowed + ("verbose", "quiet")
        and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
    ]
    if given:
        raise click.UsageError(
            f"--resume takes the input and settings from the checkpoint; drop {', '.join(given)}"
        )


class CheckpointSaver:
    """Writes a fit's checkpoints into its output folder: the folder is created at the first
    save, or, when it exists (an earlier run, replaced with --overwrite), the checkpoint goes
    into it beside the earlier run, which stays whole until the new run replaces the folder
    at the end; later saves replace checkpoint.npz atomically."""

    def __init__(
        self, out: str, options: dict, keep: list[str], every: int | None, overwrite: bool
    ) -> None:
        self.out, self.options, self.keep, self.every = out, options, keep, every
        self.overwrite = overwrite
        self.wrote = False
        self.beside_earlier = False  # whether the checkpoint went in beside an earlier run
        self.identity: tuple[int, int] | None = None  # of the folder, once it holds ours
        self.sizes: list[dict] | None = None  # the face-size search's table, if any

    def resuming(self) -> None:
        """The folder holds the checkpoint of the fit being resumed (and maybe an earlier run
        beside it)."""
        self.wrote = True
        self.beside_earlier = os.path.isfile(os.path.join(self.out, runs.RESULT))
        self.identity = outputs.folder_identity(self.out)

    def check_folder(self) -> None:
        """Refuse to write on, or put the run in place, if the folder that holds the fit's
        checkpoint is no longer the one there (moved away, another moved in its place: that
        one is a user's, never replaced)."""
        if self.wrote and outputs.folder_identity(self.out) != self.identity:
            gone = not os.path.lexists(self.out)
            raise InputError(
                f"{self.out}: the folder of this fit was moved away while it ran; the fit stops "
                "here"
                if gone
                else f"{self.out}: the folder of this fit was moved away or replaced while it "
                "ran; the folder there now is kept, and the fit stops here"
            )

    def maybe_save(self, state: engine.Checkpoint | engine.MixtureCheckpoint, errors: dict) -> None:
        if self.every and state.iteration and state.iteration % self.every == 0:
            had = self.has_checkpoint()
            try:
                self.save(state, errors)
            except InputError as err:  # a full disk, say: the earlier checkpoint is still there
                raise InputError(f"{err}{self.earlier(had)}") from None

    def has_checkpoint(self) -> bool:
        """Whether the folder holds a checkpoint of this fit."""
        return self.wrote and os.path.isfile(os.path.join(self.out, runs.CHECKPOINT))

    def earlier(self, had: bool) -> str:
        """After a save failed: where the checkpoint saved before it is, if it is still there
        (``had``: it was there before the save; the folder still this fit's)."""
        if (
            not (had and self.has_checkpoint())
            or outputs.folder_identity(self.out) != self.identity
        ):
            return ""
        return (
            f"; the checkpoint of an earlier iteration is still in {self.out}: `facefinder fit "
            f"--resume {_quoted(self.out)}` carries on from it"
        )

    def save(self, state: engine.Checkpoint | engine.MixtureCheckpoint, errors: dict) -> None:
        extra = {"errors": {str(r): rows for r, rows in errors.items()}}
        if self.sizes is not None:  # the face-size search's table
            extra["sizes"] = self.sizes
        if self.wrote:
            self.check_folder()
            runs.save_checkpoint(
                Path(self.out) / runs.CHECKPOINT, state, self.options, extra, in_run_folder=True
            )
            self.check_folder()  # (not swapped while it was written: else not ours to go on)
        elif os.path.isdir(self.out) and not os.path.islink(self.out):
            # an earlier run (or an empty folder): checked again, as it may have changed since
            outputs.check_folder_target(self.out, self.overwrite, keep=self.keep, kind=RUN_FOLDER)
            self.identity = outputs.folder_identity(self.out)
            self.beside_earlier = os.path.isfile(os.path.join(self.out, runs.RESULT))
            runs.save_checkpoint(
                Path(self.out) / runs.CHECKPOINT, state, self.options, extra, in_run_folder=True
            )
            self.wrote = True
            self.check_folder()
        else:
            try:
                with outputs.atomic_folder(
                    self.out, self.overwrite, keep=self.keep, kind=RUN_FOLDER
                ) as tmp:
                    runs.save_checkpoint(
                        Path(tmp) / runs.CHECKPOINT, state, self.options, extra, overwrite=False
                    )
                    self.identity = outputs.folder_identity(tmp)  # (a rename keeps it)
            except Interrupted as stop:
                self.wrote = stop.after == "install"  # in place all the same
                raise
            self.wrote = True


def kept_for_resume(line: str, saver: CheckpointSaver | None, state, errors: dict) -> str:
    """``line``, the error of a finished fit whose run could not be put in place (a file of
    the user's came into its folder, say), with the fit's last ``state`` saved in the folder's
    checkpoint, when it has one, so that nothing is lost."""
    if saver is None or not saver.wrote or state is None:
        return line
    try:
        saver.save(state, errors)
    except InputError:
        return line
    return (
        f"{line}; the finished fit is kept in its checkpoint: once that is mended, "
        f"`facefinder fit --resume {_quoted(saver.out)}` writes the run"
    )


def save_when_interrupted(
    saver, state, errors: dict, restarts: int | str, building: str | None = None
) -> str:
    """Save ``state``, the last completed iteration of an interrupted fit (None: none yet);
    the line that says so, and that the start ``building`` (in words; None: none) was under
    way, which a resumed fit builds again. (Further signals are ignored meanwhile: see
    ``interrupts``.)"""
    if state is None:
        return "interrupted before the first iteration: nothing was written"
    where = f"iteration {state.iteration} of restart {state.restart + 1} of {restarts}"
    if building is not None:  # (a start is not checkpointed: the seed makes it again)
        where = f"{building}, after {where}"
    if saver is None:
        return "interrupted: a fit into a stream (-o -, a device) keeps no checkpoint"
    again = "" if building is None else " (that start is built again from its beginning)"
    had = saver.has_checkpoint()
    try:
        saver.save(state, errors)
    except InputError as err:  # a full disk, say: the interrupt line says it all the same
        return (
            f"interrupted {'in' if building else 'after'} {where}, and its checkpoint could "
            f"not be saved: {err}{saver.earlier(had)}"
        )
    return (
        f"interrupted {'in' if building else 'after'} {where}; saved in {saver.out}"
        f"{_beside(saver)}: carry on with `facefinder fit --resume {_quoted(saver.out)}`{again}"
    )


def _beside(saver: CheckpointSaver) -> str:
    if not saver.beside_earlier:
        return ""
    return " (beside the earlier run, whole until the new one replaces it)"


def _quoted(path: str) -> str:
    """``path`` as a shell takes it (a name with spaces or quotes, pasted, stays one word).
    A name with bytes that are not UTF-8, or with characters a terminal does not show (a
    newline, say), is written in ANSI-C quotes, ``$'r\\xfe 1.3'`` (bash, zsh, ksh; POSIX sh
    since 2024): pasted, it is the name's own bytes (single quotes around ``r\\udcfe``, as
    Python shows such a byte, were not)."""
    raw = os.fsencode(path)
    try:
        if raw.decode("utf-8").isprintable():
            return shlex.quote(path)
    except UnicodeDecodeError:
        pass
    out = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        if "\udc80" <= ch <= "\udcff":  # a byte that is not UTF-8
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch in "\\'":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    return "$'" + "".join(out) + "'"


def save_when_lost(saver, state, errors: dict, restarts: int | str, err: Exception) -> str:
    """Save ``state``, the last completed iteration of a fit whose cluster was lost; the line
    that says so."""
    if state is None:  # (connecting, or the first pass: nothing to save)
        return str(err)
    if saver is None:
        return f"{err}; a fit into a stream (-o -, a device) keeps no checkpoint"
    saver.save(state, errors)
    return (
        f"{err}; saved iteration {state.iteration} of restart {state.restart + 1} of {restarts} "
        f"in {saver.out}{_beside(saver)}: carry on with `facefinder fit --resume "
        f"{_quoted(saver.out)}`, with or without --scheduler"
    )


#: Extensions of files, not folders: `fit -o out.npz` would make a folder named out.npz.
FILE_EXTENSIONS = IMAGE_EXTENSIONS + FILE_LIKE_EXTENSIONS


def check_run_folder_name(folder: str, overwrite: bool) -> None:
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
            f"{_quoted(folder)}`, or pass --overwrite to start afresh"
        )
