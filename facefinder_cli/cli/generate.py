"""``facefinder generate``: noisy images of a face on a background, with the truth."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click
import numpy as np

from facefinder_cli import images, outputs, runs, synthetic
from facefinder_cli.cli.options import (
    CONTEXT,
    OUTPUT,
    SHAPE,
    STOPPED,
    FiniteFloatType,
    note_stale,
    overwrite_opt,
    prior_file,
    reports_errors,
    verbosity,
)
from facefinder_cli.errors import InputError
from facefinder_cli.interrupts import Interrupted

log = logging.getLogger("facefinder")

SAMPLE_FACE = Path(__file__).parent.parent / "data" / "face.png"
SAMPLE_BACKGROUND = Path(__file__).parent.parent / "data" / "background.png"


def _face_list(faces: str, face: str | None) -> list[str]:
    """The images of --faces (comma-separated); an error naming the option if they are not
    at least two, or --face is given too."""
    if face is not None:
        raise click.UsageError("--face and --faces both give the face: give one of them")
    paths = [p.strip() for p in faces.split(",")]
    if len(paths) < 2 or not all(paths):
        raise click.BadParameter(
            f"expected two or more images separated by commas, got {faces!r}",
            param_hint="'--faces'",
        )
    return paths


def _refuse_others_truth(out: Path, truth: Path, ours) -> None:
    """Stacks of one name with other extensions share their truth file (``s.npy``, ``s.tif``:
    ``s.truth.npz``): when the one there is another stack's, say whose, rather than only that
    it is not this output's."""
    if not os.path.lexists(truth) or ours(str(truth)):
        return
    for ext in (".npy", ".npz", ".tif", ".tiff"):
        other = out.with_suffix(ext)
        if (
            other != out
            and os.path.lexists(other)
            and outputs.written_as(str(truth), "generate", str(other))
        ):
            raise InputError(
                f"{truth}: the truth of {other}, which generate wrote with it; give this "
                f"stack another name, or move {other} and its truth away"
            )


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
    return prior_file(value, shape, need)


def _check_memory(count: int, size: tuple[int, int]) -> None:
    """Refuse images that could not be held in this machine's memory, before trying: the
    stack is made whole, in float64 (a review: `--size 100000x100000` said only "out of
    memory", after trying)."""
    from facefinder_cli.engine.machine import _physical_memory

    H, W = size
    need = (count + 4) * H * W * 8  # the stack, the background and a few temporaries
    have = _physical_memory()
    if have and need > have:
        raise click.BadParameter(
            f"{count} images of {H}x{W} need {need / 2**30:.3g} GiB of memory to make, more than "
            f"this machine's {have / 2**30:.3g} GiB: ask for fewer (-n) or smaller (--size) "
            "images",
            param_hint="'--size' / '-n'",
        )


@click.command(context_settings=CONTEXT)
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
@click.option(
    "--faces",
    metavar="IMAGE,IMAGE,...",
    help="Several faces, one per image drawn at random (to test fit --faces N), separated by "
    "commas (a file whose name holds a comma: link or copy it under another name); they are "
    "resized to the first one's size, or to --face-size. Not with --face.",
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
@verbosity
@reports_errors
def generate(
    out, face, faces, background, face_size, size, count, noise, prior, seed, fmt, overwrite
):
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
    if outputs.is_stdout(out):  # the images and their truth are two outputs
        raise click.BadParameter(
            f"{out}: generate writes the images and their truth, so it needs a folder or a "
            "stack file (.npy, .npz, .tif), not standard output",
            param_hint="'-o' / '--out'",
        )
    if size:  # (before the background is resized to it: a typo of a size fills the memory)
        _check_memory(count, size)
    try:
        fmt, stack_file = images.stack_target(out, fmt)
    except InputError as err:
        raise click.BadParameter(str(err), param_hint="'--out/--format'") from None
    many = _face_list(faces, face) if faces is not None else None
    face_img = images.read_image(many[0] if many else (face or SAMPLE_FACE))
    bg_img = images.read_image(background or SAMPLE_BACKGROUND)
    if face_size:
        face_img = synthetic.resize(face_img, face_size)
    others = []
    for path in (many or [])[1:]:
        other = images.read_image(path)
        others.append(other if other.shape == face_img.shape else
                      synthetic.resize(other, face_img.shape))  # fmt: skip
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
    keep = [p for p in (face, background, prior, *(many or [])) if p and os.path.lexists(p)]
    STOPPED["note"] = f"{out} was not written" + (
        "; the one there is as it was" if os.path.lexists(out) else ""
    )
    STOPPED["installed"] = (  # (a signal as it was put in place)
        f"{out} and {truth_path} were written all the same"
        if stack_file
        else f"{out} was written all the same"
    )
    with outputs.claim(out, truth_path if stack_file else None) as stale:
        note_stale(stale)
        if stack_file:
            # a stack carries no mark of its maker: generate knows its own by its record
            def ours(path: str) -> bool:
                return outputs.written_as(path, "generate", out)

            outputs.check_file_target(out, overwrite, keep=keep, ours=ours)
            _refuse_others_truth(out_path, truth_path, ours)
            outputs.check_file_target(
                str(truth_path), overwrite, keep=keep, ours=ours, companion=True
            )
        else:
            outputs.check_folder_target(
                out,
                overwrite,
                keep=keep,
                kind=images.IMAGES_FOLDER,
            )
        all_faces = labels = None
        if others:
            data, all_faces, labels = synthetic.make_mixture(
                [face_img, *others], bg_img, count, noise, prior=prior_table, seed=seed,
                dtype=np.float32,
            )  # fmt: skip
        else:
            data = synthetic.make_dataset(
                face_img, bg_img, count, noise, prior=prior_table, seed=seed, dtype=np.float32
            )
        if stack_file:  # the stack and its truth appear together, or neither changes
            clipped, batch = 0, None
            try:
                with outputs.atomic_files(
                    [out, truth_path], overwrite=overwrite, record="generate"
                ) as batch:
                    images.encode_stack(batch.files[0], data.images, fmt)
                    runs.write_truth(batch.files[1], data.truth, data.positions,
                                     faces=all_faces, labels=labels)  # fmt: skip
            except Interrupted:
                if batch is not None and batch.installed:
                    STOPPED["note"] = f"{out} and {truth_path} were written all the same"
                raise
            STOPPED["note"] = f"{out} and {truth_path} were written all the same"
        else:
            with outputs.atomic_folder(
                out,
                overwrite,
                keep=keep,
                kind=images.IMAGES_FOLDER,
            ) as tmp:
                clipped = images.write_image_files(tmp, data.images, fmt=fmt)
                runs.save_truth(Path(tmp) / "truth.npz", data.truth, data.positions,
                                faces=all_faces, labels=labels)  # fmt: skip
            STOPPED["note"] = f"{out} was written all the same"
    if clipped:
        log.warning(
            "%d of %d pixel values (%.3g%%) fell outside 0..255 and were clipped in "
            "the 8-bit PNGs; use the default TIFF format to keep them exactly",
            clipped,
            data.images.size,
            100 * clipped / data.images.size,
        )
    log.info(
        "wrote %d image%s of %dx%d with %s %dx%d (noise %g) to %s; truth in %s",
        count,
        "" if count == 1 else "s",
        bh,
        bw,
        f"{len(others) + 1} faces of" if others else "a face of",
        fh,
        fw,
        noise,
        out,
        truth_path,
    )
