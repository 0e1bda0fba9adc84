"""Writing images and stacks: 8-bit PNGs (:func:`write_png`, :func:`to_uint8`), stacks as a
``.npy``, ``.npz`` or multi-page TIFF file or as a folder of TIFF or PNG files
(:func:`write_stack`, :func:`encode_stack`, :func:`write_image_files`). PNG and TIFF files are
encoded by Pillow (PNG) and imageio's tifffile plugin, ``.npy``/``.npz`` by NumPy.

Writers go through :mod:`facefinder_cli.outputs`, whose rules keep a user's files safe: a file
or folder appears complete or not at all, and only what facefinder made is ever replaced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from facefinder_cli.errors import InputError
from facefinder_cli.images.common import FILE_LIKE_EXTENSIONS, IMAGE_EXTENSIONS, natural_sort_key
from facefinder_cli.outputs import (
    FolderKind,
    atomic_folder,
    atomic_write,
    check_file_target,
)

__all__ = [
    "IMAGES_FOLDER",
    "encode_stack",
    "file_stems",
    "stack_target",
    "to_uint8",
    "write_image_files",
    "write_png",
    "write_stack",
]

#: A folder of images as :func:`write_stack` and ``facefinder generate`` write it.
IMAGES_FOLDER = FolderKind(
    "images",
    legacy=("truth.npz",),
    expected=lambda name: name == "truth.npz" or name.lower().endswith((".tif", ".png")),
)


def to_uint8(array: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map values linearly from [vmin, vmax] to [0, 255], clipping and rounding (halves up,
    robustly: see the code).

    Parameters
    ----------
    array : array_like of any shape
    vmin, vmax : float, optional
        Defaults: 0 and 255 when all finite values lie in [0, 255] (pixel-scale data keep their
        true brightness), else the finite minimum and maximum. A constant array outside
        [0, 255] therefore maps to mid-grey 128; with ``vmin == vmax`` values below map to 0,
        above to 255, equal to 128. NaN maps to 0, +inf to 255, -inf to 0.

    Returns
    -------
    ndarray of uint8, same shape as ``array``

    Raises
    ------
    InputError
        ``vmin`` or ``vmax`` not finite, or ``vmin > vmax``.
    """
    a = np.asarray(array, dtype=np.float64)
    for name, v in (("vmin", vmin), ("vmax", vmax)):
        if v is not None and not np.isfinite(v):
            raise InputError(f"{name}: must be a finite number, got {v}")
    if vmin is not None and vmax is not None and vmin > vmax:
        raise InputError(f"vmin ({vmin:g}) must not be greater than vmax ({vmax:g})")
    finite = np.isfinite(a)
    if finite.all():
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    elif finite.any():
        lo, hi = float(a[finite].min()), float(a[finite].max())
    else:
        lo, hi = 0.0, 0.0
    if lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    lo = float(vmin) if vmin is not None else lo
    hi = float(vmax) if vmax is not None else hi
    hi = max(hi, lo)
    if hi > lo:
        half = not np.isfinite(hi - lo)  # e.g. -1e308..1e308: work in halves
        with np.errstate(over="ignore", invalid="ignore"):
            if half:
                scaled = (a * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5) * 255.0
            else:
                scaled = (a - lo) / (hi - lo) * 255.0
        scaled = np.clip(scaled, 0.0, 255.0)
        scaled[np.isnan(scaled)] = 0.0
        # Halves round up, and so do values within 1e-6 below one: averages of whole grey
        # levels often end in exactly .5, and a last-bit difference between machines (their
        # FFTs) must not flip them (PNGs made by `make -C docs` are the same everywhere).
        return np.minimum(np.floor(scaled + (0.5 + 1e-6)), 255.0).astype(np.uint8)
    out = np.full(a.shape, 128, dtype=np.uint8)
    out[a < lo] = 0
    out[a > hi] = 255
    out[np.isnan(a)] = 0
    return out


#: The colours of the boxes ``detect --draw`` draws, by face (face 1 first; after the last,
#: from the first again): names and 8-bit RGB, saturated so that they stand out of grey
#: images, and ordered so that the first few differ in brightness as well as hue (red and
#: green, which many cannot tell apart, are not neighbours).
BOX_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (255, 0, 0)),
    ("blue", (0, 112, 255)),
    ("yellow", (255, 255, 0)),
    ("magenta", (255, 0, 255)),
    ("cyan", (0, 220, 220)),
    ("orange", (255, 160, 0)),
    ("green", (0, 200, 0)),
    ("purple", (140, 60, 255)),
    ("pink", (255, 140, 200)),
    ("lime", (170, 255, 0)),
)


def box_colour(face: int) -> tuple[str, tuple[int, int, int]]:
    """The name and RGB of the box of face ``face`` (0 for the first)."""
    return BOX_COLOURS[face % len(BOX_COLOURS)]


def boxed(image: np.ndarray, r: int, c: int, h: int, w: int, face: int = 0) -> np.ndarray:
    """The image as 8-bit RGB with a one-pixel rectangle around the ``h x w`` box whose
    top-left corner is ``(r, c)``, in face ``face``'s colour (red for the first:
    :func:`box_colour`): shape (H, W, 3), uint8."""
    grey = to_uint8(image)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    colour = np.array(box_colour(face)[1], dtype=np.uint8)
    rgb[r, c : c + w] = rgb[r + h - 1, c : c + w] = colour
    rgb[r : r + h, c] = rgb[r : r + h, c + w - 1] = colour
    return rgb


def _encode_png(f: IO[bytes], u8: np.ndarray) -> None:
    """Write a uint8 (H, W), (H, W, 3) or (H, W, 4) array as PNG to a binary file object.

    By Pillow itself: the same bytes as imageio's Pillow plugin writes, without importing
    imageio and every Pillow plugin (80 ms of each command's start-up)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(u8)).save(f, format="PNG")


class _NamedStream:
    """A binary file seen with a string ``name``: tifffile (2026.3) splits a stream's name as
    a path, and one opened by ``os.fdopen`` (as ``outputs.atomic_files`` opens them) has its
    descriptor, an int, for a name."""

    def __init__(self, f: IO[bytes], name: str) -> None:
        self._f, self.name = f, name

    def __getattr__(self, attr: str):
        return getattr(self._f, attr)


def _encode_tiff(f: IO[bytes], images: np.ndarray) -> None:
    """Write float32 (H, W) or (K, H, W) data as a grayscale (multi-page) TIFF."""
    import imageio.v3 as iio

    if not isinstance(getattr(f, "name", ""), str):
        f = _NamedStream(f, "stack.tif")

    # BigTIFF past 4 GiB, as tifffile.imwrite decides it: the writer takes it when opened.
    big = images.nbytes > 2**32 - 2**25
    with iio.imopen(f, "w", plugin="tifffile", extension=".tif", bigtiff=big) as tiff:
        # planarconfig given (None: tifffile's choice), else the plugin takes 3 or 4 images
        # for the colour planes of one page
        tiff.write(images, photometric="minisblack", planarconfig=None)


def _check_zoom(zoom: int) -> int:
    if isinstance(zoom, bool) or not isinstance(zoom, (int, np.integer)) or zoom < 1:
        raise InputError(f"zoom: must be a positive integer, got {zoom!r}")
    return int(zoom)


def write_png(
    path: str | os.PathLike | IO[bytes],
    array: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    zoom: int = 1,
) -> None:
    """Write an image as an 8-bit PNG, atomically.

    Parameters
    ----------
    path : str, path or binary file object
        ``"-"`` writes to standard output.
    array : ndarray of shape (height, width), or uint8 of shape (height, width, 3 or 4)
        A 2-D array is mapped to grayscale by :func:`to_uint8` with ``vmin``/``vmax``; a uint8
        colour array (e.g. a heat map) is written as is.
    vmin, vmax : float, optional
        See :func:`to_uint8`; ignored for colour arrays.
    zoom : int
        Enlarge by this integer factor (nearest neighbour) so small faces are visible.

    Raises
    ------
    InputError
        Bad ``zoom``/``vmin``/``vmax``, or the file cannot be written.
    ValueError
        ``array`` has an unsupported shape or dtype.
    """
    zoom = _check_zoom(zoom)
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8:
        u8 = arr
    elif arr.ndim == 2 and arr.dtype.kind in "biuf":
        u8 = to_uint8(arr, vmin, vmax)
    else:
        raise ValueError(
            "write_png expects a real 2-D array or a uint8 (H, W, 3) array, got shape "
            f"{arr.shape} and dtype {arr.dtype}"
        )
    if u8.size == 0:
        raise ValueError(f"write_png: the array of shape {arr.shape} is empty")
    if zoom > 1:
        u8 = np.repeat(np.repeat(u8, zoom, axis=0), zoom, axis=1)
    if hasattr(path, "write"):
        _encode_png(path, u8)  # type: ignore[arg-type]
        return
    with atomic_write(path, "wb") as f:  # type: ignore[arg-type]
        _encode_png(f, u8)


def file_stems(names: Sequence[str] | None, n: int) -> list[str]:
    """File stems for a folder of n images: the given names' stems when they are plain, unique
    and already in natural order; else ``img1``..``imgN`` zero-padded to the width of n."""
    if names is not None:
        stems = [Path(str(nm)).stem for nm in names]
        plain = all(re.fullmatch(r"[\w][\w .+-]*", s) for s in stems)
        unique = len({s.casefold() for s in stems}) == n
        if plain and unique and sorted(stems, key=natural_sort_key) == stems:
            return stems
    width = len(str(n))
    return [f"img{k + 1:0{width}d}" for k in range(n)]


_STACK_FORMATS = ("tiff", "png", "npy", "npz")


def stack_target(p: str, fmt: str | None) -> tuple[str, bool]:
    """``(format, single file?)`` of a stack written to ``p``, as :func:`write_stack` does it;
    raises :class:`InputError` for an image file name or a format that does not fit ``p``."""
    if fmt is not None and fmt not in _STACK_FORMATS:
        raise InputError(f"format: must be one of {', '.join(_STACK_FORMATS)}, got {fmt!r}")
    ext = os.path.splitext(p)[1].lower()
    if p == "-":
        if fmt not in ("npy", "npz"):
            raise InputError("-: a stack goes to standard output only as npy or npz")
        return fmt, True
    by_ext = {".npy": "npy", ".npz": "npz", ".tif": "tiff", ".tiff": "tiff"}.get(ext)
    if by_ext is not None:
        if fmt is not None and fmt != by_ext:
            raise InputError(f"{p}: the extension {ext} does not match format {fmt!r}")
        return by_ext, True
    if ext in IMAGE_EXTENSIONS or ext in FILE_LIKE_EXTENSIONS:
        raise InputError(
            f"{p}: a stack is written to a folder of images or to one .tif, .npy or .npz file; "
            f"give a folder name without {ext}"
        )
    if fmt in ("npy", "npz"):
        raise InputError(f"{p}: format {fmt!r} needs a file name ending in .{fmt}")
    return fmt or "tiff", False


def write_stack(
    path: str | os.PathLike,
    images: np.ndarray,
    names: Sequence[str] | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
) -> int:
    """Write a stack of images, atomically.

    Parameters
    ----------
    path : str or path
        - a ``.npy`` file (the array as is, dtype kept), a ``.npz`` file (key ``images``, dtype
          kept; plus ``names`` when given) or a ``.tif``/``.tiff`` file (multi-page 32-bit
          float TIFF); ``"-"`` writes npy/npz to standard output;
        - otherwise a folder with one file per image: ``img1.tif`` .. ``imgK.tif`` zero-padded
          to the width of K (``img0001.tif`` for K = 1000), or the stems of ``names`` when they
          are plain, unique and in natural order. It is built as a hidden sibling folder and
          renamed into place.
    images : ndarray of shape (n_images, height, width) or (height, width)
    names : sequence of str, optional
        One per image.
    fmt : {None, "tiff", "png", "npy", "npz"}
        Folder format: ``"tiff"`` (default: 32-bit float, values kept up to float32 precision,
        negatives and values above 255 included) or ``"png"`` (8-bit: values clipped to 0..255
        and rounded). For files, None follows the extension and a different value is an error.
    overwrite : bool
        Replace an existing file, or a folder of images that facefinder wrote (see
        :mod:`facefinder_cli.outputs`). Without it an existing file or non-empty folder is
        refused (an empty folder is used).

    Returns
    -------
    int
        For ``fmt="png"``, the number of pixels that were outside 0..255 (or not finite) and
        were clipped, so the caller can warn; 0 otherwise.

    Raises
    ------
    InputError
        Target exists (without ``overwrite``), is of the wrong kind, its folder is missing, or
        ``fmt`` does not fit the path.
    """
    p = os.fspath(path)
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.dtype.kind not in "biuf":
        raise ValueError(
            f"write_stack expects a real 3-D array, got shape {arr.shape}, dtype {arr.dtype}"
        )
    if names is not None and len(names) != len(arr):
        raise ValueError(f"write_stack: {len(names)} names for {len(arr)} images")
    fmt, single = stack_target(p, fmt)
    if single:
        check_file_target(p, overwrite)
        with atomic_write(p, "wb", overwrite=overwrite) as f:
            encode_stack(f, arr, fmt, names)
        return 0
    return _write_folder(p, arr, names, fmt, overwrite)


def encode_stack(
    f: IO[bytes], images: np.ndarray, fmt: str, names: Sequence[str] | None = None
) -> None:
    """Write a (K, H, W) stack to the binary file ``f`` as ``fmt``: ``"npy"`` (dtype kept),
    ``"npz"`` (key ``images``, plus ``names`` when given) or ``"tiff"`` (32-bit float pages)."""
    if fmt == "npy":
        np.save(f, images)
    elif fmt == "npz":
        extra = {"names": np.array([str(n) for n in names])} if names is not None else {}
        np.savez(f, images=images, **extra)
    elif fmt == "tiff":
        with np.errstate(over="ignore"):
            _encode_tiff(f, np.asarray(images).astype(np.float32))
    else:
        raise ValueError(f"fmt must be npy, npz or tiff, got {fmt!r}")


def _write_folder(
    p: str, arr: np.ndarray, names: Sequence[str] | None, fmt: str, overwrite: bool
) -> int:
    with atomic_folder(p, overwrite, kind=IMAGES_FOLDER) as tmp:
        return write_image_files(tmp, arr, names, fmt)


def write_image_files(
    folder: str | os.PathLike,
    images: np.ndarray,
    names: Sequence[str] | None = None,
    fmt: str = "tiff",
) -> int:
    """Write one file per image into an existing ``folder`` (not atomically: use it inside
    :func:`atomic_folder`). Names and formats as in :func:`write_stack`; returns the number of
    pixels clipped by ``fmt="png"``."""
    if fmt not in ("tiff", "png"):
        raise ValueError(f"fmt must be 'tiff' or 'png', got {fmt!r}")
    ext = ".tif" if fmt == "tiff" else ".png"
    clipped = 0
    for stem, img in zip(file_stems(names, len(images)), images):
        with open(os.path.join(folder, stem + ext), "wb") as f:
            if fmt == "tiff":
                with np.errstate(over="ignore"):
                    _encode_tiff(f, np.asarray(img, dtype=np.float32))
            else:
                img = np.asarray(img, dtype=np.float64)
                clipped += int(np.count_nonzero(~((img >= 0) & (img <= 255))))
                _encode_png(f, to_uint8(img, 0.0, 255.0))
    return clipped
