"""All image and array file I/O of facefinder: reading stacks and single images, streaming and
packing ``.npy`` stacks, writing PNGs and stacks, atomically.

Reading accepts a folder of images, a glob pattern, a ``.npy`` / ``.npz`` / MATLAB ``.mat``
array file, a (multi-page) TIFF or a single image file, and always returns float64 pixel values
in the file's own units (8-bit images give 0..255, 16-bit images 0..65535, float images their
values; nothing is rescaled). Colour images become grayscale by luminance.

Every problem a user can cause (missing, unreadable or inconsistent files, bad option values)
raises :class:`InputError` with a one-line message naming the file or option. Wrong arguments
from the calling code (e.g. an array of the wrong shape) raise ordinary ``ValueError`` /
``TypeError``. A message or note that names a setting (the layout to give, the dtype to pack
with) holds it as a :class:`~facefinder_cli.errors.Hint`, for the caller to word: as text it
reads ``layout='khw'``, the command line says ``--layout khw``.

One module per concern; the names below are the package's interface:

- :mod:`~facefinder_cli.images.reading`: sources (folders, glob patterns, files) into a
  :class:`Stack`: :func:`load_stack`, :func:`read_image`;
- :mod:`~facefinder_cli.images.decoding`: single image files (PNG, JPEG, BMP, TIFF...) as grey,
  through imageio (TIFF through tifffile itself);
- :mod:`~facefinder_cli.images.arrays`: ``.npy``, ``.npz`` and ``.mat`` files;
- :mod:`~facefinder_cli.images.stacks`: :class:`NpyReader`, reading a ``.npy`` stack on demand,
  and the names file beside it;
- :mod:`~facefinder_cli.images.packing`: :func:`pack_stack`, any source into one ``.npy`` stack;
- :mod:`~facefinder_cli.images.writing`: PNGs and stacks (image files through imageio), by
  :mod:`facefinder_cli.outputs`' rules (a file or folder appears complete or not at all, and
  only what facefinder made is replaced);
- :mod:`~facefinder_cli.images.common`: the checks and axis-order rules the readers share.
"""

from __future__ import annotations

from facefinder_cli.errors import InputError
from facefinder_cli.images.common import IMAGE_EXTENSIONS, natural_sort_key
from facefinder_cli.images.packing import pack_stack
from facefinder_cli.images.reading import Stack, glob_paths, input_paths, load_stack, read_image
from facefinder_cli.images.stacks import NpyReader, names_path
from facefinder_cli.images.writing import (
    BOX_COLOURS,
    IMAGES_FOLDER,
    box_colour,
    boxed,
    encode_stack,
    file_stems,
    stack_target,
    to_uint8,
    write_image_files,
    write_png,
    write_stack,
)
from facefinder_cli.images.zarrs import ZarrReader, is_zarr, is_zarr_target

__all__ = [
    "BOX_COLOURS",
    "IMAGES_FOLDER",
    "IMAGE_EXTENSIONS",
    "InputError",
    "NpyReader",
    "Stack",
    "ZarrReader",
    "box_colour",
    "boxed",
    "encode_stack",
    "file_stems",
    "glob_paths",
    "input_paths",
    "is_zarr",
    "is_zarr_target",
    "load_stack",
    "names_path",
    "natural_sort_key",
    "pack_stack",
    "read_image",
    "stack_target",
    "to_uint8",
    "write_image_files",
    "write_png",
    "write_stack",
]
