"""``facefinder pack``: pack images into one .npy stack, or a Zarr array, that fit and detect
stream from disk."""

from __future__ import annotations

import logging
import os
import sys

import click
import numpy as np

from facefinder_cli import engine, images, outputs
from facefinder_cli.cli.options import (
    CONTEXT,
    OUTPUT,
    STOPPED,
    layout_opt,
    log_notes,
    note_stale,
    overwrite_opt,
    reports_errors,
    skip_opt,
    verbosity,
)

log = logging.getLogger("facefinder")


@click.command(context_settings=CONTEXT)
@click.argument("input", metavar="INPUT")
@click.argument("target", metavar="STACK.npy|STACK.zarr", type=OUTPUT)
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
@verbosity
@reports_errors
def pack(input, target, dtype, skip_unreadable, layout, overwrite):
    """Pack images into one .npy stack that fit and detect stream from disk.

    INPUT as for `fit`. A folder, a pattern, a .npy stack or an .npz stack is read one image at
    a time, so any number of images packs in little memory (.mat and TIFF files are read
    whole). The image names go to STACK.names.txt beside the stack (one per line; line breaks,
    backslashes and bytes that are not UTF-8 escaped as \\n, \\\\ and \\xNN), which fit uses
    for positions.csv. Both files appear complete or not at all.

    A name ending in .zarr makes a Zarr array instead (a folder; the names in its attribute
    `names`), as Dask users keep image stacks: `fit --scheduler` reads it on the workers.
    Needs pip install 'facefinder[dask]'.

    `fit STACK.npy` then reads the images chunk by chunk in every iteration instead of holding
    them in memory, so its memory does not grow with the number of images (see --memory-limit).
    Ctrl-C or SIGTERM leaves no file behind (exit status 130 or 143).

    \b
    Examples:
      facefinder pack shots/ shots.npy
      facefinder pack 'cam/**/*.png' cam.npy --skip-unreadable
      facefinder fit shots.npy --face-size 36x30 -o run
    """
    from tqdm import tqdm

    bar = tqdm(
        desc="packing", unit="img", file=sys.stderr, disable=None, leave=False, dynamic_ncols=True
    )

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    STOPPED["note"] = f"{target} was not written" + (
        "; the one there is as it was" if os.path.lexists(target) else ""
    )
    STOPPED["installed"] = f"{target} was written all the same"  # (a signal as it was put in place)
    try:
        side = None if images.is_zarr_target(target) else images.names_path(target)
        with outputs.claim(target, side) as stale:
            note_stale(stale)
            stack = images.pack_stack(
                input,
                target,
                dtype=np.dtype(dtype),
                overwrite=overwrite,
                skip_unreadable=skip_unreadable,
                layout=None if layout == "auto" else layout,
                progress=progress,
            )
            STOPPED["note"] = f"{target} was written all the same"
    finally:
        bar.close()
    log_notes(stack, fitting=False)
    K, H, W = stack.images.shape
    if os.path.isdir(target):  # a Zarr folder
        size = sum(e.stat().st_size for e in os.scandir(target) if e.is_file())
    else:
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
