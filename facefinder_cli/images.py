"""All image and array file I/O of facefinder: reading stacks and single images, writing PNGs
and stacks, atomically.

Reading accepts a folder of images, a glob pattern, a ``.npy`` / ``.npz`` / MATLAB ``.mat``
array file, a (multi-page) TIFF or a single image file, and always returns float64 pixel values
in the file's own units (8-bit images give 0..255, 16-bit images 0..65535, float images their
values; nothing is rescaled). Colour images become grayscale by luminance.

Every problem a user can cause (missing, unreadable or inconsistent files, bad option values)
raises :class:`InputError` with a one-line message naming the file or option. Wrong arguments
from the calling code (e.g. an array of the wrong shape) raise ordinary ``ValueError`` /
``TypeError``.

Writers go through :mod:`facefinder_cli.outputs`, whose rules keep a user's files safe: a file
or folder appears complete or not at all, and only what facefinder made is ever replaced.
Image names that are not plain text are written as :mod:`facefinder_cli.names` states.
"""

from __future__ import annotations

import fnmatch
import glob as _glob
import logging
import math
import operator
import os
import re
import struct
import threading
import warnings
import weakref
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from facefinder_cli import names as _names
from facefinder_cli.errors import InputError
from facefinder_cli.outputs import (
    FolderKind,
    atomic_files,
    atomic_folder,
    atomic_write,
    check_file_target,
    inside,
    is_facefinder_npz,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "InputError",
    "NpyReader",
    "Stack",
    "glob_paths",
    "input_paths",
    "load_stack",
    "encode_stack",
    "file_stems",
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

#: File extensions (lower case) taken as images when reading a folder or a glob pattern.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF_EXTENSIONS = (".tif", ".tiff")
_LAYOUTS = ("khw", "hwk")
_GLOB_CHARS = ("*", "?", "[")
#: Largest block of images examined at once by the finite-values check (bytes).
_CHUNK_BYTES = 64 * 2**20
#: A folder of images as :func:`write_stack` and ``facefinder generate`` write it.
IMAGES_FOLDER = FolderKind(
    "images",
    legacy=("truth.npz",),
    expected=lambda name: name == "truth.npz" or name.lower().endswith((".tif", ".png")),
)
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Stack:
    """A stack of grayscale images read from disk.

    Attributes
    ----------
    images : ndarray of shape (n_images, height, width)
        C-contiguous float64 pixel values in the file's own units; or, only when
        ``load_stack(..., mmap=True)`` returned a ``.npy`` file's data without copying, a
        read-only float32 or float64 ``np.memmap``; or, from ``load_stack(..., stream=True)``
        and :func:`pack_stack`, an :class:`NpyReader` that reads images from the file on demand
        (index it: ``images[k]``, ``images[a:b]``).
    names : tuple of str, one per image
        File names for a folder or glob pattern; ``"<file>[k]"`` (k from 0) for the images of a
        stack file, unless it stores names (``.npz``) or has a names file beside it (``.npy``);
        the file name alone for a file holding a single 2-D image.
    notes : tuple of str
        Human-readable notes on what was done while reading (conversions, guessed layout...).
    source : str
        The source as given.
    """

    images: np.ndarray | NpyReader
    names: tuple[str, ...]
    notes: tuple[str, ...] = ()
    source: str = ""


# ------------------------------------------------------------------------------------------
# small helpers


def natural_sort_key(name: str) -> tuple:
    """Sort key putting ``img2`` before ``img10``: runs of digits compare as numbers, the rest
    case-insensitively; ties are broken by the exact name so the order is total.

    Parameters
    ----------
    name : str

    Returns
    -------
    tuple
        Compare keys of several names with ``<`` or use as ``sorted(names, key=natural_sort_key)``.
    """
    parts = re.split(r"([0-9]+)", name)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return (key, name)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _size(shape: Sequence[int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class _Conversions:
    """Counts of the conversions done while reading, turned into notes at the end."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.depths: set[str] = set()

    def update(self, other: _Conversions) -> None:
        self.counts.update(other.counts)
        self.depths |= other.depths

    def notes(self) -> list[str]:
        c = self.counts
        notes = []
        if c["colour"]:
            n = _plural(c["colour"], "colour image")
            notes.append(f"converted {n} to grayscale (luminance)")
        if c["palette"]:
            notes.append(f"expanded the colour palette of {_plural(c['palette'], 'image')}")
        if c["alpha"]:
            n = _plural(c["alpha"], "image")
            notes.append(f"dropped the alpha (transparency) channel of {n}")
        if c["bilevel"]:
            n = _plural(c["bilevel"], "black-and-white (1-bit) image")
            notes.append(f"read {n} as 0 and 255")
        if c["png16"]:
            notes.append(
                f"read {_plural(c['png16'], '16-bit colour PNG image')} at 8-bit precision "
                "(0..255): Pillow cannot decode them at 16 bits"
            )
        if c["miniswhite"]:
            notes.append(f"inverted {_plural(c['miniswhite'], 'white-is-zero TIFF image')}")
        int_depths = sorted(d for d in self.depths if d[0] in "ui")
        if len(int_depths) > 1:
            notes.append(
                f"the images have different bit depths ({', '.join(int_depths)}); "
                "values are not rescaled"
            )
        return notes


def _luminance(rgb: np.ndarray, conv: _Conversions) -> np.ndarray:
    """Grayscale of colour images by luminance; images whose channels are all equal keep their
    values exactly and are not counted as colour.

    Parameters
    ----------
    rgb : ndarray of shape (n_images, height, width, 3)

    Returns
    -------
    ndarray of shape (n_images, height, width), float64
    """
    out = np.empty(rgb.shape[:3], dtype=np.float64)
    for k, img in enumerate(rgb):
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        if np.array_equal(r, g) and np.array_equal(g, b):
            out[k] = r
        else:
            conv.counts["colour"] += 1
            out[k] = _LUMA[0] * r.astype(np.float64) + _LUMA[1] * g + _LUMA[2] * b
    return out


def _check_finite(images: np.ndarray, where: Any) -> None:
    """Raise InputError at the first image holding NaN or infinity; ``where(k)`` names image k.
    Works through the stack in chunks so a memory-mapped stack is never loaded whole."""
    if images.dtype.kind != "f" or images.shape[0] == 0:
        return
    per = max(1, _CHUNK_BYTES // max(1, images[0].nbytes))
    for start in range(0, images.shape[0], per):
        chunk = np.asarray(images[start : start + per])
        ok = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not ok.all():
            k = start + int(np.argmin(ok))
            what = "NaN" if np.isnan(images[k]).any() else "infinite values"
            raise InputError(f"{where(k)} contains {what}")


def _check_kind(dtype: np.dtype, shape: tuple[int, ...], disp: str, what: str) -> None:
    """Refuse arrays that are not real numbers or not 2-D/3-D or empty (from the array or from a
    .npy header, before loading: object arrays would need unpickling)."""
    kind = dtype.kind
    if kind == "O" or dtype.hasobject:
        raise InputError(f"{disp}: {what} holds Python objects (dtype object), not numbers")
    if kind == "c":
        raise InputError(f"{disp}: {what} holds complex numbers; expected real pixel values")
    if kind not in "biuf":
        raise InputError(f"{disp}: {what} of dtype {dtype} does not hold numbers")
    if len(shape) not in (2, 3):
        raise InputError(
            f"{disp}: {what} of shape {tuple(shape)} is not 2-D (one image) or 3-D (a stack)"
        )
    if 0 in shape:
        raise InputError(f"{disp}: {what} of shape {tuple(shape)} holds no pixels")


def _check_numeric(arr: np.ndarray, disp: str, what: str) -> None:
    _check_kind(arr.dtype, arr.shape, disp, what)


def _check_layout(layout: str | None) -> str | None:
    if layout is None:
        return None
    if not isinstance(layout, str) or layout.lower() not in _LAYOUTS:
        raise InputError(f"layout: must be 'khw' or 'hwk', got {layout!r}")
    return layout.lower()


def _guess_layout(shape: tuple[int, ...]) -> str:
    """``"hwk"`` when the last axis is more than twice as long as each of the first two (e.g.
    (20, 30, 500)), else ``"khw"``. A plain "last axis is the longest" rule would misread an
    ordinary small stack such as 20 images of 30x40 pixels, saved (20, 30, 40)."""
    a, b, c = shape
    return "hwk" if c > 2 * max(a, b) else "khw"


def _stack_from_array(
    arr: np.ndarray,
    disp: str,
    layout: str | None,
    default: str | None,
    notes: list[str],
) -> np.ndarray:
    """An array of shape (K, H, W) or (H, W, K) or (H, W) as float64 (K, H, W), C-contiguous.

    ``layout`` is the user's choice, ``default`` the file type's (None: guess from the shape)."""
    if arr.ndim == 2:
        return np.ascontiguousarray(arr[np.newaxis], dtype=np.float64)
    lay = _resolve_layout(arr.shape, disp, layout, default, notes)
    if lay == "hwk":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float64)


def _resolve_layout(
    shape: tuple[int, ...], disp: str, layout: str | None, default: str | None, notes: list[str]
) -> str:
    if layout is not None:
        return layout
    if default is not None:
        return default
    lay = _guess_layout(tuple(shape))
    a, b, c = shape
    if lay == "hwk":
        notes.append(
            f"read {disp} as {c} images of {a}x{b} (H, W, K) from its shape; "
            "pass --layout khw if the images are along the first axis"
        )
    else:
        notes.append(
            f"read {disp} as {a} images of {b}x{c} (K, H, W); "
            "pass --layout hwk if the images are along the last axis"
        )
    return lay


def _image_k(disp: str, k: int) -> str:
    return f"{disp}: image {k} (counting from 0)"


def _stack_names(base: str, n: int, two_d: bool) -> tuple[str, ...]:
    return (base,) if two_d else tuple(f"{base}[{k}]" for k in range(n))


# ------------------------------------------------------------------------------------------
# reading single image files (Pillow, tifffile)


def _unreadable(path: str, disp: str, exc: BaseException | None = None) -> InputError:
    """The InputError for an image file no decoder could read, saying why as well as we can."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return InputError(f"{disp}: cannot open ({err.strerror or err})")
    if not head:
        return InputError(f"{disp}: cannot read image (empty file, 0 bytes)")
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        looks_text = b"\0" not in head
        if looks_text:
            with suppress(UnicodeDecodeError):
                head.decode("utf-8")
                return InputError(f"{disp}: cannot read image (not an image file: it holds text)")
        return InputError(
            f"{disp}: cannot read image (not an image file, or an unsupported format)"
        )
    if isinstance(exc, MemoryError):
        return InputError(f"{disp}: cannot read image (not enough memory)")
    name = type(exc).__name__ if exc is not None else ""
    if name == "DecompressionBombError":
        return InputError(f"{disp}: cannot read image (too many pixels: {exc})")
    return InputError(f"{disp}: cannot read image (truncated or corrupt file)")


def _png_is_16bit_colour(path: str) -> bool:
    with suppress(OSError):
        with open(path, "rb") as f:
            head = f.read(26)
        return len(head) == 26 and head[24] == 16 and head[25] in (2, 4, 6)
    return False


def _pil_to_gray(im: Any, conv: _Conversions) -> np.ndarray:
    """One Pillow frame as a float64 (H, W) array; see :func:`load_stack` for the conversions."""
    mode = im.mode
    if mode == "1":
        conv.counts["bilevel"] += 1
        conv.depths.add("uint8")
        return np.asarray(im.convert("L"), dtype=np.float64)
    if mode == "L" or mode == "F" or mode.startswith("I"):
        arr = np.asarray(im)
        conv.depths.add(arr.dtype.name if arr.dtype.isnative else arr.dtype.newbyteorder().name)
        return arr.astype(np.float64)
    conv.depths.add("uint8")
    if mode in ("LA", "La"):
        conv.counts["alpha"] += 1
        return np.asarray(im)[..., 0].astype(np.float64)
    if mode in ("P", "PA"):
        conv.counts["palette"] += 1
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "RGBa"):
        conv.counts["alpha"] += 1
        rgb = np.asarray(im)[..., :3]
    elif mode == "RGBX":
        rgb = np.asarray(im)[..., :3]
    elif mode == "RGB":
        rgb = np.asarray(im)
    else:  # CMYK, YCbCr, LAB, HSV, ...
        rgb = np.asarray(im.convert("RGB"))
    return _luminance(rgb[np.newaxis], conv)[0]


def _read_pillow(path: str, disp: str, all_frames: bool) -> tuple[list[np.ndarray], _Conversions]:
    """Decode with Pillow: the first frame, or every frame (multi-page TIFF)."""
    from PIL import Image, ImageSequence

    conv = _Conversions()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": not ours to print
        with Image.open(path) as im:
            frames = ImageSequence.Iterator(im) if all_frames else [im]
            for frame in frames:
                frame.load()
                out.append(_pil_to_gray(frame, conv))
            if im.format == "PNG" and _png_is_16bit_colour(path):
                conv.counts["png16"] += 1
    return out, conv


class _TiffFallback(Exception):
    """tifffile cannot handle this TIFF; let Pillow try."""


@contextmanager
def _tifffile_log() -> Iterator[list[logging.LogRecord]]:
    """Capture (and silence) what tifffile logs while reading: it reports damaged files there."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tifffile")
    handler = _Keep(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


_TIFF_DAMAGE_WORDS = ("offset", "corrupt", "bytecounts", "stripoffsets", "missing", "truncat")


def _tiff_series_to_gray(
    arr: np.ndarray, axes: str, page: Any, disp: str, conv: _Conversions
) -> np.ndarray:
    """A tifffile series (any axes containing Y and X) as float64 (n, H, W)."""
    if "Y" not in axes or "X" not in axes or len(axes) != arr.ndim:
        raise _TiffFallback(f"axes {axes}")
    if arr.dtype.kind == "c":
        raise InputError(f"{disp}: TIFF holds complex numbers; expected real pixel values")
    if arr.dtype.kind not in "biuf":
        raise _TiffFallback(f"dtype {arr.dtype}")
    has_s = "S" in axes
    order = [i for i, a in enumerate(axes) if a not in "YXS"]
    order += [axes.index("Y"), axes.index("X")] + ([axes.index("S")] if has_s else [])
    arr = arr.transpose(order)
    tail = arr.shape[len(order) - (3 if has_s else 2) :]
    arr = arr.reshape((-1,) + tail)
    n = arr.shape[0]
    photometric = getattr(page, "photometric", None)
    photometric = 1 if photometric is None else int(photometric)
    conv.depths.add("bool" if arr.dtype.kind == "b" else arr.dtype.newbyteorder("=").name)
    if has_s:
        samples = arr.shape[-1]
        if photometric == 2 and samples >= 3:  # RGB
            if samples > 3:
                conv.counts["alpha"] += n
            return _luminance(arr[..., :3], conv)
        if photometric in (0, 1):  # grayscale with extra samples
            conv.counts["alpha"] += n
            arr = arr[..., 0]
        else:
            raise _TiffFallback(f"photometric {photometric} with {samples} samples")
    if photometric == 3:  # palette
        cmap = getattr(page, "colormap", None)
        if cmap is None or arr.dtype.kind not in "bu":
            raise _TiffFallback("palette")
        cmap = np.asarray(cmap, dtype=np.float64)
        if cmap.max() > 255:
            cmap = cmap / 257.0
        conv.counts["palette"] += n
        return _luminance(cmap.T[arr.astype(np.intp)], conv)
    if photometric not in (0, 1):
        raise _TiffFallback(f"photometric {photometric}")
    if arr.dtype.kind == "b":
        conv.counts["bilevel"] += n
        arr = np.where(arr, 255.0, 0.0)
        if photometric == 0:
            arr = 255.0 - arr
        return arr
    if photometric == 0 and arr.dtype.kind in "ui":
        conv.counts["miniswhite"] += n
        if arr.dtype.kind in "ui":
            return np.iinfo(arr.dtype).max - arr.astype(np.float64)
    return arr.astype(np.float64)


def _read_tifffile(path: str, disp: str) -> tuple[list[np.ndarray], _Conversions]:
    import tifffile

    conv = _Conversions()
    out = []
    with _tifffile_log() as records:
        with tifffile.TiffFile(path) as tif:
            for series in tif.series:
                arr = series.asarray()
                out.append(_tiff_series_to_gray(arr, str(series.axes), series.keyframe, disp, conv))
    for record in records:
        if record.levelno >= logging.ERROR:
            message = record.getMessage().lower()
            if any(word in message for word in _TIFF_DAMAGE_WORDS):
                raise InputError(f"{disp}: cannot read image (truncated or corrupt TIFF file)")
    if not out:
        raise InputError(f"{disp}: cannot read image (the TIFF file holds no images)")
    return out, conv


def _read_tiff(path: str, disp: str) -> tuple[list[np.ndarray], _Conversions]:
    """All images of a TIFF file as a list of float64 (n, H, W) blocks (one per page shape).

    tifffile first (exact dtypes, float64, planar, 16-bit colour); Pillow for what it cannot
    decode without the optional imagecodecs package (LZW, JPEG...)."""
    try:
        return _read_tifffile(path, disp)
    except InputError:
        raise
    except Exception as exc:  # any decoder failure: let Pillow try before giving up
        first = exc
    try:
        frames, conv = _read_pillow(path, disp, all_frames=True)
    except Exception as exc:
        if "imagecodecs" in str(first):
            raise InputError(
                f"{disp}: cannot read image (its TIFF compression needs the 'imagecodecs' "
                "package: pip install imagecodecs)"
            ) from None
        raise _unreadable(path, disp, exc) from None
    blocks: list[np.ndarray] = []
    for frame in frames:
        if blocks and blocks[-1].shape[1:] == frame.shape:
            blocks[-1] = np.concatenate([blocks[-1], frame[np.newaxis]])
        else:
            blocks.append(frame[np.newaxis])
    return blocks, conv


def _read_image_file(path: str, disp: str) -> tuple[list[np.ndarray], _Conversions]:
    """Any image file as a list of float64 (n, H, W) blocks (TIFF pages) or one (1, H, W)."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise InputError(f"{disp}: cannot open ({err.strerror or err})") from None
    if size == 0:
        raise InputError(f"{disp}: cannot read image (empty file, 0 bytes)")
    if path.lower().endswith(_TIFF_EXTENSIONS):
        return _read_tiff(path, disp)
    try:
        frames, conv = _read_pillow(path, disp, all_frames=False)
    except Exception as exc:  # Pillow raises many types for bad files; all mean "unreadable"
        raise _unreadable(path, disp, exc) from None
    return [frames[0][np.newaxis]], conv


# ------------------------------------------------------------------------------------------
# reading array files


def _npy_header_info(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order?, dtype) from a .npy header; leaves ``f`` at the first data byte."""
    fmt = np.lib.format
    major, _ = fmt.read_magic(f)
    reader = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype)


def _bad_npy(disp: str) -> str:
    return f"{disp}: cannot read .npy file (truncated or not a NumPy .npy file)"


def _bad_npz(disp: str) -> str:
    return f"{disp}: cannot read .npz file (truncated or not a NumPy .npz file)"


def _npy_layout(path: str, disp: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, Fortran order?, dtype, offset of the data) of a .npy file holding real numbers
    in 2 or 3 dimensions, and long enough for its header's shape; else InputError."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _npy_header_info(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise InputError(f"{disp}: cannot open ({err.strerror or err})") from None
    except Exception:
        raise InputError(_bad_npy(disp)) from None
    _check_kind(dtype, shape, disp, "array")
    if size < offset + math.prod(shape) * dtype.itemsize:
        raise InputError(_bad_npy(disp))
    return shape, fortran, dtype, offset


def _read_npy(
    path: str, disp: str, layout: str | None, mmap: bool, notes: list[str]
) -> tuple[np.ndarray, bool]:
    """Returns (images as (K, H, W), whether the file held a single 2-D image)."""
    _npy_layout(path, disp)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except MemoryError:
        raise
    except Exception:
        raise InputError(_bad_npy(disp)) from None
    two_d = arr.ndim == 2
    if mmap and arr.dtype in (np.float32, np.float64) and arr.dtype.isnative:
        lay = "khw" if two_d else _resolve_layout(arr.shape, disp, layout, None, notes)
        if lay == "khw" and arr.flags.c_contiguous:
            images = arr[np.newaxis] if two_d else arr
            return images, two_d
        return _stack_from_array(arr, disp, lay, None, []), two_d
    return _stack_from_array(arr, disp, layout, None, notes), two_d


def _npz_key(path: str, disp: str) -> tuple[str, dict[str, tuple[tuple[int, ...], bool, np.dtype]]]:
    """The key of the images in an .npz file (``images``, else ``X``, else its only array
    besides ``names``) and the headers (shape, Fortran order?, dtype) of all its arrays."""
    try:
        with zipfile.ZipFile(path) as z:
            keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            headers = {}
            for key in keys:
                with z.open(key + ".npy") as f:
                    headers[key] = _npy_header_info(f)
    except (PermissionError, FileNotFoundError) as err:
        raise InputError(f"{disp}: cannot open ({err.strerror or err})") from None
    except Exception:
        raise InputError(_bad_npz(disp)) from None
    if not keys:
        raise InputError(f"{disp}: the .npz file holds no arrays")
    candidates = [k for k in keys if not (k == "names" and headers[k][2].kind == "U")]
    if "images" in keys:
        key = "images"
    elif "X" in keys:
        key = "X"
    elif len(candidates) == 1:
        key = candidates[0]
    else:
        raise InputError(
            f"{disp}: no array named 'images' or 'X' among {_listing(keys)}; "
            "save the images under the key 'images'"
        )
    shape, _, dtype = headers[key]
    _check_kind(dtype, shape, disp, f"array '{key}'")
    return key, headers


def _npz_names(path: str, disp: str, key: str, headers: dict, n: int) -> tuple[str, ...] | None:
    """The names stored beside the images of an .npz file (a string array ``names`` with one
    entry per image), or None."""
    if key == "names" or "names" not in headers or headers["names"][2].kind != "U":
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = npz["names"]
    except Exception:
        raise InputError(_bad_npz(disp)) from None
    if stored.ndim != 1 or len(stored) != n:
        return None
    return tuple(str(s) for s in stored)


def _read_npz(
    path: str, disp: str, layout: str | None, notes: list[str]
) -> tuple[np.ndarray, bool, Any]:
    """Returns (images (K, H, W), single 2-D image?, stored names or None)."""
    key, headers = _npz_key(path, disp)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arr = npz[key]
            has_names = key != "names" and "names" in headers and headers["names"][2].kind == "U"
            names = npz["names"] if has_names else None
    except MemoryError:
        raise
    except Exception:
        raise InputError(_bad_npz(disp)) from None
    # Under 'images' (facefinder's own key) the stack is (K, H, W); otherwise guess.
    default = "khw" if key == "images" else None
    return _stack_from_array(arr, f"{disp}", layout, default, notes), arr.ndim == 2, names


def _read_mat(
    path: str, disp: str, layout: str | None, notes: list[str]
) -> tuple[np.ndarray, bool]:
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:
        raise InputError(
            f"{disp}: MATLAB v7.3 (HDF5) .mat files cannot be read; in MATLAB save it with "
            "save(..., '-v7') or convert the images to .npy"
        ) from None
    except (PermissionError, FileNotFoundError) as err:
        raise InputError(f"{disp}: cannot open ({err.strerror or err})") from None
    except MemoryError:
        raise
    except Exception:
        raise InputError(
            f"{disp}: cannot read .mat file (truncated or not a MATLAB file)"
        ) from None
    variables = [k for k in data if not k.startswith("__")]
    if "X" in variables:
        key = "X"
    elif len(variables) == 1:
        key = variables[0]
    elif not variables:
        raise InputError(f"{disp}: the .mat file holds no variables")
    else:
        raise InputError(
            f"{disp}: no variable X among {_listing(variables)}; save the images as X "
            "(height x width x number of images)"
        )
    value = data[key]
    if hasattr(value, "toarray"):  # scipy.sparse matrix
        value = value.toarray()
    if not isinstance(value, np.ndarray):
        raise InputError(f"{disp}: variable {key} is not a numeric array")
    _check_numeric(value, disp, f"variable {key}")
    return _stack_from_array(value, disp, layout, "hwk", notes), value.ndim == 2


# ------------------------------------------------------------------------------------------
# streaming .npy stacks

#: Most bytes asked of one ``os.pread`` where ``os.preadv`` is missing (Linux caps a read at
#: about 2 GiB anyway).
_READ_MAX = 2**30


def _read_at(fd: int, buf: memoryview, offset: int, lock: threading.Lock | None) -> bool:
    """Fill the byte buffer ``buf`` from ``offset`` of ``fd``, looping over short reads; False
    when the file ends first. ``lock`` (platforms without ``os.pread``) guards seek-and-read."""
    done = 0
    while done < len(buf):
        if lock is None and hasattr(os, "preadv"):
            n = os.preadv(fd, [buf[done:]], offset + done)
        else:
            size = min(len(buf) - done, _READ_MAX)
            if lock is None:
                chunk = os.pread(fd, size, offset + done)
            else:
                with lock:
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    chunk = os.read(fd, size)
            n = len(chunk)
            buf[done : done + n] = chunk
        if n == 0:
            return False
        done += n
    return True


class NpyReader:
    """A read-only stack of images in a ``.npy`` file, read on demand.

    The file must hold a C-ordered 3-D array (n_images, height, width) of real numbers (bool,
    integer or float, either byte order). Indexing reads only the images asked for, with
    ``os.pread`` on one file descriptor: no memory map (the resident memory of the process stays
    flat however large the file) and no shared file position, so several threads may read at
    once. Use it as ``with NpyReader(path) as stack: ...``, or call :meth:`close`; the file is
    also closed when the reader is garbage-collected.

    There is deliberately no ``__array__``: ``np.asarray(reader)`` would read the whole file.
    Read slices instead.

    Parameters
    ----------
    path : str or path

    Attributes
    ----------
    path : str
    shape : tuple of int
        (n_images, height, width).
    ndim : int
        3.
    dtype : numpy.dtype
        The file's dtype in native byte order: the dtype of every array returned.
    nbytes : int
        Bytes of pixel data in the file.

    Raises
    ------
    InputError
        The file cannot be opened, is not a .npy file, is shorter than its header says, or does
        not hold a C-ordered 3-D array of real numbers.

    Examples
    --------
    ``reader[k]`` is image k (negative k counts from the end), of shape (height, width);
    ``reader[a:b:s]`` and ``reader[[k1, k2, ...]]`` are (n, height, width) in that order. Every
    result is a new, writable, C-contiguous array; a step-1 slice is one read.
    """

    ndim = 3

    def __init__(self, path: str | os.PathLike) -> None:
        p = os.fspath(path)
        self.path = p
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as err:
            raise InputError(f"{p}: cannot open ({err.strerror or err})") from None
        try:
            try:
                with open(fd, "rb", closefd=False) as f:
                    shape, fortran, dtype = _npy_header_info(f)
                    offset = f.tell()
                size = os.fstat(fd).st_size
            except OSError as err:
                raise InputError(f"{p}: cannot read ({err.strerror or err})") from None
            except Exception:
                raise InputError(_bad_npy(p)) from None
            _check_kind(dtype, shape, p, "array")
            if len(shape) != 3:
                raise InputError(f"{p}: array of shape {shape} is not a 3-D stack (K, H, W)")
            if fortran:
                raise InputError(f"{p}: array is stored in Fortran order; expected C order")
            nbytes = math.prod(shape) * dtype.itemsize
            if size < offset + nbytes:
                raise InputError(_bad_npy(p))
        except BaseException:
            os.close(fd)
            raise
        self.shape: tuple[int, int, int] = (shape[0], shape[1], shape[2])
        self.dtype = dtype.newbyteorder("=")
        self.nbytes = nbytes
        self._swap = not dtype.isnative
        self._offset = offset
        self._frame = shape[1] * shape[2] * dtype.itemsize
        self._lock = None if hasattr(os, "pread") else threading.Lock()
        self._fd: int | None = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"NpyReader({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __enter__(self) -> NpyReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; reading afterwards raises ValueError. Closing twice is harmless."""
        self._fd = None
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self[k]

    def __getitem__(self, key: Any) -> np.ndarray:
        """Image ``key`` (an int) as (H, W), or the images of a slice or of a 1-D sequence of
        ints as (n, H, W); IndexError for an index out of range."""
        n = len(self)
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(n), dtype=np.int64))
        if isinstance(key, (bool, np.bool_, tuple)):
            raise TypeError(
                f"NpyReader indices are ints, slices or 1-D sequences of ints, got {key!r}"
            )
        try:
            k = operator.index(key)
        except TypeError:
            pass
        else:
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of range for {n} images")
            return self._read(np.array([k % n], dtype=np.int64))[0]
        try:
            idx = np.asarray(key)
        except Exception:
            idx = np.asarray(None)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(
                f"NpyReader indices are ints, slices or 1-D sequences of ints, got {key!r}"
            )
        if idx.size and (bool((idx >= n).any()) or bool((idx < -n).any())):
            bad = idx[(idx >= n) | (idx < -n)][0]
            raise IndexError(f"index {int(bad)} is out of range for {n} images")
        idx = idx.astype(np.int64)
        return self._read(np.where(idx < 0, idx + n, idx))

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """Images ``idx`` (valid, non-negative) with one read per run of consecutive images."""
        fd = self._fd
        if fd is None:
            raise ValueError(f"I/O operation on a closed NpyReader ({self.path})")
        out = np.empty((len(idx),) + self.shape[1:], dtype=self.dtype)
        if out.size == 0:
            return out
        raw = memoryview(out.reshape(-1).view(np.uint8))
        cuts = [0, *(np.flatnonzero(np.diff(idx) != 1) + 1).tolist(), len(idx)]
        frame = self._frame
        for a, b in zip(cuts[:-1], cuts[1:]):
            start = self._offset + int(idx[a]) * frame
            if not _read_at(fd, raw[a * frame : b * frame], start, self._lock):
                raise InputError(_bad_npy(self.path))
        if self._swap:
            out.byteswap(inplace=True)
        return out


def names_path(npy_path: str | os.PathLike) -> str:
    """The names file beside a .npy stack: ``stack.npy`` -> ``stack.names.txt``."""
    return os.path.splitext(os.fspath(npy_path))[0] + ".names.txt"


def _read_names(npy_path: str, n: int, notes: list[str]) -> tuple[str, ...] | None:
    """The image names from the names file beside a .npy stack of n images, if there is one
    with exactly n lines; else None (with a note when the file is there but does not fit)."""
    side = names_path(npy_path)
    if not os.path.isfile(side):
        return None
    try:
        with open(side, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else err.strerror or err
        notes.append(f"ignored {side} ({why}); images are named {os.path.basename(npy_path)}[k]")
        return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    lines = [_names.from_line(line[:-1] if line.endswith("\r") else line) for line in lines]
    if len(lines) != n:
        notes.append(
            f"ignored {side}: it holds {_plural(len(lines), 'name')} for "
            f"{_plural(n, 'image')}; images are named {os.path.basename(npy_path)}[k]"
        )
        return None
    return tuple(lines)


def _stream_npy(path: str, disp: str, layout: str | None, notes: list[str]) -> NpyReader | None:
    """An NpyReader when the .npy file holds a C-ordered 3-D array in (K, H, W) layout (given or
    guessed); None when it must be read into memory instead."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _npy_header_info(f)
    except OSError as err:
        raise InputError(f"{disp}: cannot open ({err.strerror or err})") from None
    except Exception:
        raise InputError(_bad_npy(disp)) from None
    _check_kind(dtype, shape, disp, "array")
    if len(shape) != 3 or fortran:
        return None
    guessed: list[str] = []
    if _resolve_layout(shape, disp, layout, None, guessed) != "khw":
        return None
    reader = NpyReader(path)
    notes.extend(guessed)
    return reader


# ------------------------------------------------------------------------------------------
# load_stack


class _FileImages:
    """The images of a list of files, one per file, read one at a time with the checks of
    :func:`load_stack`: each file holds one image, all of the same size, finite values.

    Iterating yields ``(display name, image)`` per file, the image float64 (H, W), or None for a
    file that ``skip_unreadable`` skipped; the conversions done and the files read accumulate in
    ``conv`` and ``kept`` (indices into ``paths``)."""

    def __init__(self, paths: list[str], displays: list[str], skip_unreadable: bool) -> None:
        self.paths = paths
        self.displays = displays
        self.skip_unreadable = skip_unreadable
        self.conv = _Conversions()
        self.kept: list[int] = []
        self.skipped: list[str] = []

    def __iter__(self) -> Iterator[tuple[str, np.ndarray | None]]:
        shape: tuple[int, ...] | None = None
        for i, (path, disp) in enumerate(zip(self.paths, self.displays)):
            try:
                blocks, c = _read_image_file(path, disp)
            except InputError as err:
                if not self.skip_unreadable:
                    raise
                self.skipped.append(str(err))
                yield disp, None
                continue
            n = sum(len(b) for b in blocks)
            if n != 1:
                raise InputError(
                    f"{disp}: holds {n} images (a multi-page file); in a folder or pattern each "
                    "file must hold one image (pass the file itself to read its pages)"
                )
            self.conv.update(c)
            img = blocks[0][0]
            if shape is None:
                shape = img.shape
            elif img.shape != shape:
                raise InputError(
                    f"{disp}: size {_size(img.shape)} differs from {_size(shape)} "
                    f"of {self.displays[self.kept[0]]}"
                )
            _check_finite(img[np.newaxis], lambda k, disp=disp: f"{disp}:")
            self.kept.append(i)
            yield disp, img
        if not self.kept:
            raise InputError(
                f"{self.displays[0]} and the other {len(self.paths) - 1} files: none is readable"
            )

    def notes(self) -> list[str]:
        notes = self.conv.notes()
        if self.skipped:
            n = _plural(len(self.skipped), "unreadable file")
            notes.append(f"skipped {n}: {_listing(self.skipped, 3)}")
        return notes


def _images_from_files(
    paths: list[str], displays: list[str], skip_unreadable: bool = False
) -> tuple[np.ndarray, list[str], list[int]]:
    """Read one image per file into a (K, H, W) float64 stack; returns it, the notes and the
    indices of the files read (all of them unless ``skip_unreadable`` skipped some)."""
    files = _FileImages(paths, displays, skip_unreadable)
    images: np.ndarray | None = None
    for _, img in files:
        if img is None:
            continue
        if images is None:
            images = np.empty((len(paths),) + img.shape, dtype=np.float64)
        images[len(files.kept) - 1] = img
    assert images is not None  # _FileImages raised otherwise
    return images[: len(files.kept)], files.notes(), files.kept


def _load_listing(
    source: str, paths: list[str], names: list[str], extra_notes: list[str], skip: bool
) -> Stack:
    images, notes, kept = _images_from_files(paths, paths, skip)
    return Stack(images, tuple(names[i] for i in kept), tuple(notes + extra_notes), source)


def _list_folder(source: str) -> tuple[list[str], list[str], list[str]]:
    """The image files of a folder as :func:`load_stack` reads them: (paths, names, notes)."""
    files: list[str] = []
    others: list[str] = []
    try:
        entries = list(os.scandir(source))
    except OSError as err:
        raise InputError(f"{source}: cannot list folder ({err.strerror or err})") from None
    for entry in entries:
        with suppress(OSError):
            if not entry.is_file():
                continue
            if entry.name.startswith("."):  # hidden, e.g. macOS "._img1.png" resource files
                continue
            if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(entry.name)
            else:
                others.append(entry.name)
    if not files:
        raise InputError(
            f"{source}: no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) "
            "in this folder"
        )
    files.sort(key=natural_sort_key)
    notes = []
    if "truth.npz" in others and is_facefinder_npz(os.path.join(source, "truth.npz")):
        others.remove("truth.npz")  # facefinder's own file: said apart, not as junk
        notes.append(
            "not read: truth.npz, the truth of data made by facefinder generate (fit --truth "
            f"{os.path.join(source, 'truth.npz')} measures the fit against it)"
        )
    if others:
        others.sort(key=natural_sort_key)
        n = _plural(len(others), "non-image file")
        notes.append(f"ignored {n}: {_listing(others, 3)}")
    paths = [os.path.join(source, f) for f in files]
    return paths, files, notes


def _subfolders(folder: str) -> Iterator[str]:
    """Every folder below ``folder`` (not hidden ones), depth first, without descending into
    symbolic links to folders: a link loop can neither repeat paths nor recurse forever."""
    try:
        entries = sorted(os.scandir(folder or "."), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        with suppress(OSError):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            path = os.path.join(folder, entry.name)
            yield path
            yield from _subfolders(path)


def glob_paths(pattern: str) -> list[str]:
    """The paths a glob pattern matches, as ``glob.glob(pattern, recursive=True)`` finds them
    (``**`` is any number of folders; names starting with a dot match only a pattern starting
    with one), except that ``**`` does not follow symbolic links to folders. A link loop
    (``sub/loop -> ..``) would otherwise list every file again through it, and two loops make
    the listing grow without end. Links to files, and links named by the other parts of the
    pattern, are followed as usual."""
    if "**" not in pattern:
        return _glob.glob(pattern)
    root = os.sep if pattern.startswith(os.sep) else ""
    parts = [part for part in pattern.split(os.sep) if part]
    found: dict[str, None] = {}

    def walk(base: str, i: int) -> None:
        if i == len(parts):
            found[base] = None
            return
        part = parts[i]
        last = i == len(parts) - 1
        if part == "**":
            for folder in [base, *_subfolders(base)]:
                if last:  # everything below, files and folders
                    with suppress(OSError):
                        for entry in sorted(os.scandir(folder or "."), key=lambda e: e.name):
                            if not entry.name.startswith("."):
                                found[os.path.join(folder, entry.name)] = None
                else:
                    walk(folder, i + 1)
            return
        if not _glob.has_magic(part):
            path = os.path.join(base, part)
            if os.path.lexists(path) if last else os.path.isdir(path):
                walk(path, i + 1)
            return
        try:
            entries = sorted(os.scandir(base or "."), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") and not part.startswith("."):
                continue
            if not fnmatch.fnmatchcase(entry.name, part):
                continue
            path = os.path.join(base, entry.name)
            with suppress(OSError):
                if last or entry.is_dir():
                    walk(path, i + 1)

    walk(root, 0)
    return list(found)


def input_paths(source: str | os.PathLike) -> list[str]:
    """The files and folders that reading ``source`` reads, for the writers to keep them safe:
    the folder or file itself (and the names file beside a ``.npy`` stack), or every path a glob
    pattern matches."""
    src = os.fspath(source)
    if os.path.lexists(src) or not any(ch in src for ch in _GLOB_CHARS):
        return [src, names_path(src)] if src.lower().endswith(".npy") else [src]
    return glob_paths(src)


def _list_glob(source: str) -> tuple[list[str], list[str], list[str]]:
    """The image files a glob pattern matches as :func:`load_stack` reads them: (paths, names,
    notes)."""
    matches = glob_paths(source)
    files = [m for m in matches if os.path.isfile(m) and m.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        extra = f" ({_plural(len(matches), 'path')} matched, none an image file)" if matches else ""
        raise InputError(f"{source}: no image files match this pattern{extra}")
    files.sort(key=natural_sort_key)
    base = [os.path.basename(f) for f in files]
    names = base if len(set(base)) == len(base) else files
    return files, names, []


def _load_folder(source: str, skip: bool = False) -> Stack:
    return _load_listing(source, *_list_folder(source), skip)


def _load_glob(source: str, skip: bool = False) -> Stack:
    return _load_listing(source, *_list_glob(source), skip)


def _load_file(source: str, layout: str | None, mmap: bool, stream: bool = False) -> Stack:
    path, disp = source, source
    base = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    notes: list[str] = []
    names = None
    if ext in (".npy", ".npz", ".mat"):
        try:
            empty = os.path.getsize(path) == 0
        except OSError as err:
            raise InputError(f"{disp}: cannot open ({err.strerror or err})") from None
        if empty:
            raise InputError(f"{disp}: empty file (0 bytes)")
        if ext == ".npy":
            guess: list[str] = []  # the layout guessed from the shape, if it was
            reader = _stream_npy(path, disp, layout, guess) if stream else None
            if reader is not None:
                names = _read_names(path, len(reader), notes)
                if names is None:  # (a names file from pack_stack vouches for (K, H, W))
                    names = _stack_names(base, len(reader), False)
                    notes[:0] = guess
                return Stack(reader, names, tuple(notes), source)
            images, two_d = _read_npy(path, disp, layout, mmap, guess)
            if not two_d:
                if stream:
                    notes.append(
                        f"read {disp} into memory: a .npy stack streams only in (K, H, W) C order"
                    )
                names = _read_names(path, len(images), notes)
            # a names file with one name per image vouches for a (K, H, W) guess
            notes[:0] = [n for n in guess if names is None or "(K, H, W)" not in n]
        elif ext == ".npz":
            images, two_d, names = _read_npz(path, disp, layout, notes)
        else:
            images, two_d = _read_mat(path, disp, layout, notes)
        _check_finite(images, lambda k: f"{disp}:" if two_d else _image_k(disp, k))
        if isinstance(names, tuple):
            pass  # from the names file of a .npy stack
        elif names is not None and names.ndim == 1 and len(names) == len(images) and not two_d:
            names = tuple(str(n) for n in names)
        else:
            names = _stack_names(base, len(images), two_d)
        return Stack(images, names, tuple(notes), source)

    blocks, conv = _read_image_file(path, disp)
    n = sum(len(b) for b in blocks)
    names_list = _stack_names(base, n, n == 1)
    first = blocks[0].shape[1:]
    start = 0
    for block in blocks:
        if block.shape[1:] != first:
            raise InputError(
                f"{disp}[{start}]: size {_size(block.shape[1:])} differs "
                f"from {_size(first)} of {disp}[0]"
            )
        start += len(block)
    images = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    if layout == "hwk" and n > 1:
        images = images.transpose(2, 0, 1)
        names_list = _stack_names(base, len(images), False)
    images = np.ascontiguousarray(images, dtype=np.float64)
    _check_finite(images, lambda k: f"{disp}:" if n == 1 else _image_k(disp, k))
    return Stack(images, tuple(names_list), tuple(conv.notes()), source)


def load_stack(
    source: str | os.PathLike,
    layout: str | None = None,
    mmap: bool = False,
    skip_unreadable: bool = False,
    *,
    stream: bool = False,
) -> Stack:
    """Read a stack of grayscale images.

    Parameters
    ----------
    source : str or path
        One of

        - a folder: its files with extension png, jpg, jpeg, tif, tiff or bmp (any case; not
          recursive; hidden files skipped), in natural order (``img2`` before ``img10``), one
          image per file; other files are ignored (with a note);
        - a glob pattern (contains ``*``, ``?`` or ``[``; ``**`` recurses): the image files it
          matches, likewise;
        - a ``.npy`` file holding a 3-D array, or a 2-D array (one image); a names file beside
          a 3-D one (``stack.names.txt`` for ``stack.npy``, one name a line in UTF-8, as
          :func:`pack_stack` writes) gives the names when it has one line per image (else it is
          ignored, with a note);
        - a ``.npz`` file: the array under key ``images``, else ``X``, else its only array (a
          string array under ``names``, as :func:`write_stack` stores, gives the names);
        - a MATLAB ``.mat`` file (up to v7; not v7.3/HDF5): variable ``X`` of shape
          (H, W, K), else its only variable;
        - a TIFF file: every page is an image (pages of several sizes are an error);
        - any other image file: one image.
    layout : {None, "khw", "hwk"}
        Axis order of a 3-D array: images first (K, H, W) or last (H, W, K). None: ``.mat``
        files are (H, W, K), other files (K, H, W), except a ``.npy``/``.npz`` array whose last
        axis is more than twice as long as each of the other two (e.g. (20, 30, 500)), read as
        (H, W, K) with a note. TIFF pages are always (K, H, W) unless ``"hwk"`` is given.
        Ignored for folders, patterns and 2-D arrays.
    mmap : bool
        Memory-map a ``.npy`` file instead of reading it. When it holds native float32 or
        float64 data, C-ordered, in (K, H, W) layout (or one 2-D image), ``images`` is then the
        read-only ``np.memmap`` itself (float32 stays float32); otherwise the data are copied as
        usual. The finite-values check reads the map in chunks. Ignored for other sources.
    stream : bool
        Read no pixel data of a ``.npy`` file holding a C-ordered 3-D array in (K, H, W) layout
        (given, or guessed as above): ``images`` is then an :class:`NpyReader` that reads images
        on demand, in the file's dtype (native byte order; not converted to float64). Nor are
        the values checked: the caller must check that they are finite, as
        :mod:`facefinder_cli.engine` does in its first pass. Any other ``.npy`` array is read
        as usual (a 3-D one with a note); other sources ignore ``stream``. Takes precedence
        over ``mmap``.
    skip_unreadable : bool
        For folders and patterns: leave out files that cannot be read as an image (with a note
        naming them) instead of stopping at the first. Images of another size are still an
        error.

    Returns
    -------
    Stack
        ``images`` of shape (n_images, height, width), float64 in the file's own units (except
        with ``mmap`` or ``stream``, see above; no rescaling of 16-bit or float images). Colour
        (RGB) images become grayscale by luminance 0.299 R + 0.587 G + 0.114 B (images whose
        channels are all equal keep their values);
        alpha channels are dropped, palette images expanded, 1-bit images read as 0 and 255;
        16-bit colour PNGs come at 8-bit precision (a Pillow limit). Each conversion is counted
        in ``notes``.

    Raises
    ------
    InputError
        Missing path, empty folder or pattern without images, unreadable or corrupt file, images
        of different sizes (sizes given as height x width), NaN or infinite values, arrays that
        are not 2-D or 3-D or not real numbers, bad ``layout``.
    """
    src = os.fspath(source)
    layout = _check_layout(layout)
    if os.path.isdir(src):
        return _load_folder(src, skip_unreadable)
    if os.path.lexists(src) and not os.path.exists(src):
        raise InputError(f"{src}: broken symbolic link")
    if os.path.exists(src):
        if not os.path.isfile(src):
            raise InputError(f"{src}: not a regular file or folder")
        return _load_file(src, layout, mmap, stream)
    if any(ch in src for ch in _GLOB_CHARS):
        return _load_glob(src, skip_unreadable)
    raise InputError(f"{src}: no such file or folder")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image (a face or a background) from an image, TIFF, ``.npy``, ``.npz`` or
    ``.mat`` file, with the conversions of :func:`load_stack`.

    Returns
    -------
    ndarray of shape (height, width), float64, C-contiguous

    Raises
    ------
    InputError
        As :func:`load_stack`; also when the path is a folder or the file holds several images.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        raise InputError(f"{p}: is a folder; expected a single image file")
    if not os.path.lexists(p):
        raise InputError(f"{p}: no such file or folder")
    stack = load_stack(p)
    if len(stack.images) != 1:
        raise InputError(f"{p}: holds {len(stack.images)} images; expected a single image")
    return np.array(stack.images[0], dtype=np.float64, order="C")


# ------------------------------------------------------------------------------------------
# writing


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


def _encode_png(f: IO[bytes], u8: np.ndarray) -> None:
    """Write a uint8 (H, W), (H, W, 3) or (H, W, 4) array as PNG to a binary file object."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(u8)).save(f, format="PNG")


def _encode_tiff(f: IO[bytes], images: np.ndarray) -> None:
    """Write float32 (H, W) or (K, H, W) data as a grayscale (multi-page) TIFF."""
    import tifffile

    tifffile.imwrite(f, images, photometric="minisblack")


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
    if ext in IMAGE_EXTENSIONS:
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


# ------------------------------------------------------------------------------------------
# packing a source into one .npy stack

_NPY_MAGIC_1_0 = b"\x93NUMPY\x01\x00"


def _npy_header_bytes(dtype: np.dtype, shape: tuple[int, ...], length: int | None = None) -> bytes:
    """A version 1.0 .npy header (magic included) for a C-ordered array: its dict is padded with
    spaces before the final newline to ``length`` bytes in all, else to the next multiple of 64
    as NumPy aligns it. A smaller shape written later with the same length fits in place."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    dims = tuple(int(n) for n in shape)
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {dims!r}, }}"
    fixed = len(_NPY_MAGIC_1_0) + 2 + len(text) + 1
    if length is None:
        length = -(-fixed // 64) * 64
    if not fixed <= length <= len(_NPY_MAGIC_1_0) + 2 + 0xFFFF:
        raise ValueError(f"a .npy header for shape {dims} does not fit in {length} bytes")
    text += " " * (length - fixed) + "\n"
    return _NPY_MAGIC_1_0 + struct.pack("<H", length - 10) + text.encode("latin1")


def _pack_dtype(dtype: Any) -> np.dtype:
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"pack_stack: dtype must be float32 or float64, got {dtype!r}")
    return dt


def _as_dtype(img: np.ndarray, dt: np.dtype, where: str) -> tuple[np.ndarray, bool]:
    """A finite image in dtype ``dt``, C-contiguous, and whether that rounded any value;
    InputError (``where`` names the image) for values too large for float32."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(img, dtype=dt)
    if dt != np.float64 and not np.isfinite(out).all():
        raise InputError(
            f"{where} holds values beyond the float32 range (about 3.4e38); "
            "pack with --dtype float64"
        )
    return out, dt != img.dtype and not np.array_equal(out, img)


def _rounding_note(n: int) -> list[str]:
    if not n:
        return []
    return [
        f"rounded the values of {_plural(n, 'image')} to float32 (7 significant digits; colour "
        "and float images are not whole numbers); pack with --dtype float64 to keep them exactly"
    ]


def _pack_files(
    f: IO[bytes],
    listing: tuple[list[str], list[str], list[str]],
    dt: np.dtype,
    skip_unreadable: bool,
    progress: Callable[[int, int], object] | None,
) -> tuple[tuple[str, ...], list[str]]:
    """Write the images of a folder or pattern listing as a .npy stack to ``f``, one file at a
    time; returns the names and notes of the images written."""
    paths, names, extra_notes = listing
    total = len(paths)
    files = _FileImages(paths, paths, skip_unreadable)
    header = b""
    frame: tuple[int, ...] = ()
    rounded = 0
    for done, (disp, img) in enumerate(files, 1):
        if img is not None:
            out, lossy = _as_dtype(img, dt, f"{disp}:")
            rounded += lossy
            if not header:
                frame = out.shape
                header = _npy_header_bytes(dt, (total,) + frame)
                f.write(header)
            f.write(memoryview(out).cast("B"))
        if progress is not None:
            progress(done, total)
    k = len(files.kept)
    if k != total:  # files were skipped: the header must give the real count
        f.seek(0)
        f.write(_npy_header_bytes(dt, (k,) + frame, len(header)))
        f.truncate(len(header) + k * math.prod(frame) * dt.itemsize)
    kept = tuple(names[i] for i in files.kept)
    return kept, files.notes() + extra_notes + _rounding_note(rounded)


def _pack_array(
    f: IO[bytes],
    images: Any,
    dt: np.dtype,
    disp: str,
    progress: Callable[[int, int], object] | None,
) -> list[str]:
    """Write a (K, H, W) stack (anything that gives image k as ``images[k]``, read in order) as
    a .npy file to ``f``, image by image; returns notes."""
    K = len(images)
    f.write(_npy_header_bytes(dt, (K, *images.shape[1:])))
    rounded = 0
    for k in range(K):
        img = np.asarray(images[k])
        where = _image_k(disp, k)
        _check_finite(img[np.newaxis], lambda _, where=where: where)
        out, lossy = _as_dtype(img, dt, where)
        rounded += lossy
        f.write(memoryview(out).cast("B"))
        if progress is not None:
            progress(k + 1, K)
    return _rounding_note(rounded)


class _MappedFrames:
    """The images of a ``.npy`` stack whose images are not contiguous in the file (Fortran
    order, or (H, W, K) layout), for reading in order: ``frames[k]`` for k = 0, 1, 2, ...

    They are copied out in blocks of about ``_CHUNK_BYTES`` through a memory map made afresh
    for each block and dropped after it, so memory holds one block however large the file.
    Each block reads pages from all over the file: the file is read about once per block."""

    def __init__(self, path: str, layout: str) -> None:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        self.shape = arr.shape if layout == "khw" else (arr.shape[2], *arr.shape[:2])
        self.dtype = arr.dtype
        del arr
        self._path, self._layout = path, layout
        self._per = max(1, _CHUNK_BYTES // (self.shape[1] * self.shape[2] * self.dtype.itemsize))
        self._block: np.ndarray | None = None
        self._start = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> np.ndarray:
        if self._block is None or not self._start <= k < self._start + len(self._block):
            arr = np.load(self._path, mmap_mode="r", allow_pickle=False)
            stop = min(k + self._per, self.shape[0])
            part = arr[k:stop] if self._layout == "khw" else arr[:, :, k:stop].transpose(2, 0, 1)
            self._block, self._start = np.array(part), k
            del arr, part
        return self._block[k - self._start]

    def close(self) -> None:
        self._block = None


class _ZipFrames:
    """The images of a C-ordered (K, H, W) array stored in an ``.npz`` file, decompressed one
    at a time, in order: ``frames[k]`` for k = 0, 1, 2, ..."""

    def __init__(self, path: str, key: str, disp: str) -> None:
        self._bad = _bad_npz(disp)
        self._zip = zipfile.ZipFile(path)
        try:
            self._f = self._zip.open(key + ".npy")
            self.shape, _, self.dtype = _npy_header_info(self._f)
        except BaseException:
            self._zip.close()
            raise
        self._bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        self._next = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> np.ndarray:
        if k != self._next:
            raise IndexError("the images of an .npz member are read in order")
        try:
            raw = self._f.read(self._bytes)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error):
            raise InputError(self._bad) from None
        if len(raw) != self._bytes:
            raise InputError(self._bad)
        self._next += 1
        return np.frombuffer(raw, self.dtype).reshape(self.shape[1:])

    def close(self) -> None:
        self._f.close()
        self._zip.close()


def _array_source(
    src: str, layout: str | None, notes: list[str]
) -> tuple[Any, tuple[str, ...], bool, Callable[[], None]]:
    """The images of a ``.npy`` or ``.npz`` stack for :func:`pack_stack`, read one at a time
    where the file allows: (images, names, whether the names are the ``file[k]`` defaults, a
    function that closes the file). A ``.npy`` file is memory-mapped in any layout; an
    ``.npz`` member is decompressed image by image when it is a C-ordered (K, H, W) array,
    else read whole."""
    disp, base = src, os.path.basename(src)
    if src.lower().endswith(".npy"):
        shape, fortran, _, _ = _npy_layout(src, disp)
        if len(shape) == 2:
            return _read_npy(src, disp, layout, False, [])[0], (base,), False, lambda: None
        guess: list[str] = []
        lay = _resolve_layout(shape, disp, layout, None, guess)
        arr: Any = NpyReader(src) if lay == "khw" and not fortran else _MappedFrames(src, lay)
        names = _read_names(src, len(arr), notes)
        # a names file with one name per image vouches for a (K, H, W) guess
        notes[:0] = [n for n in guess if names is None or "(K, H, W)" not in n]
        if names is None:
            return arr, _stack_names(base, len(arr), False), True, arr.close
        return arr, names, False, arr.close
    key, headers = _npz_key(src, disp)
    shape, fortran, _ = headers[key]
    lay = "khw" if key == "images" else None
    if len(shape) == 3 and not fortran:
        guess = []
        lay = _resolve_layout(shape, disp, layout, lay, guess)
        if lay == "khw":
            notes.extend(guess)
            stored = _npz_names(src, disp, key, headers, shape[0])
            try:
                frames = _ZipFrames(src, key, disp)
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error):
                raise InputError(_bad_npz(disp)) from None
            if stored is None:
                return frames, _stack_names(base, shape[0], False), True, frames.close
            return frames, stored, False, frames.close
    images, two_d, stored = _read_npz(src, disp, layout, notes)
    _check_finite(images, lambda k: f"{disp}:" if two_d else _image_k(disp, k))
    if two_d:
        return images, (base,), False, lambda: None
    if stored is not None and stored.ndim == 1 and len(stored) == len(images):
        return images, tuple(str(n) for n in stored), False, lambda: None
    return images, _stack_names(base, len(images), False), True, lambda: None


def pack_stack(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    dtype: Any = np.float32,
    overwrite: bool = False,
    skip_unreadable: bool = False,
    layout: str | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Stack:
    """Convert an image source into one ``.npy`` stack (K, H, W), to read later with
    ``load_stack(target, stream=True)``.

    A folder or glob pattern (listed as :func:`load_stack` lists it) is read one file at a time
    and each image written straight to the file, so memory holds one image whatever the number
    of images. So is a ``.npy`` stack (with plain reads when its images are contiguous, else in
    blocks of a memory map made afresh for each) and an ``.npz`` stack whose images are
    contiguous (decompressed one at a time). Any other source (another ``.npz``, a ``.mat`` or
    TIFF stack file, or a single image) is read whole with ``load_stack(source, layout)`` and
    then written. The images get the conversions and checks of :func:`load_stack` (colour to
    luminance, finite values, one size).

    The image names go to a names file beside the target (``stack.names.txt`` for
    ``stack.npy``): one name a line, UTF-8, in stack order, escaped as
    :func:`facefinder_cli.names.to_line` states (line breaks, backslashes and bytes that are
    not UTF-8), so that they are read back exactly. Only its line count is checked against the
    stack when it is read: whoever rewrites the ``.npy`` by other means should delete it. None
    is written when the names are only the ``file[k]`` defaults of a stack file (with
    ``overwrite``, an old names file is then removed).

    Both files are written atomically: on any error or interruption neither the target nor its
    names file is created or changed, and no temporary file is left.

    Parameters
    ----------
    source : str or path
        As for :func:`load_stack`.
    target : str or path
        The ``.npy`` file to write.
    dtype : {numpy.float32, numpy.float64}
        Pixel type of the file. float32 holds 8-bit and 16-bit values exactly and halves the
        size; other values (colour turned grey, float images) are rounded to float32's 7
        significant digits, with a note; values beyond the float32 range are an error.
    overwrite : bool
        Replace an existing target (and names file).
    skip_unreadable : bool
        For folders and patterns: leave out unreadable files (with a note) instead of stopping.
    layout : {None, "khw", "hwk"}
        Axis order of a 3-D array source, as for :func:`load_stack`.
    progress : callable, optional
        ``progress(done, total)`` after each image (for a folder or pattern, after each file,
        read or skipped).

    Returns
    -------
    Stack
        ``images`` an :class:`NpyReader` of the written file; ``names`` as written to the names
        file (the source's names); ``notes`` as :func:`load_stack` gives for the source;
        ``source`` the source.

    Raises
    ------
    InputError
        Any error of :func:`load_stack`; a target that does not end in ``.npy``, exists (or its
        names file exists) without ``overwrite``, is the source itself or lies in the source
        folder, or cannot be written; values beyond the float32 range.
    ValueError
        ``dtype`` is not float32 or float64.
    """
    dt = _pack_dtype(dtype)
    layout = _check_layout(layout)
    src, p = os.fspath(source), os.fspath(target)
    if not p.lower().endswith(".npy"):
        raise InputError(f"{p}: pack writes a .npy file; give a name ending in .npy")
    side = names_path(p)
    listing = None
    if os.path.isdir(src):
        if inside(p, src):
            raise InputError(f"{p}: is inside the source folder {src}; write the stack elsewhere")
        listing = _list_folder(src)
    elif not os.path.lexists(src) and any(ch in src for ch in _GLOB_CHARS):
        listing = _list_glob(src)
    elif not os.path.isfile(src):
        load_stack(src, layout)  # raises load_stack's error (missing path, broken link...)
    elif inside(p, src):
        raise InputError(f"{p}: is the source itself; write the stack to another file")
    keep = input_paths(src)
    check_file_target(p, overwrite, keep=keep)
    check_file_target(side, overwrite, keep=keep)
    notes: list[str] = []
    close: Callable[[], None] = lambda: None  # noqa: E731
    if listing is None:
        if src.lower().endswith((".npy", ".npz")):
            images, names, default, close = _array_source(src, layout, notes)
        else:  # .mat, TIFF and image files are read whole
            stack = load_stack(src, layout)
            images, names = stack.images, stack.names
            default = names == _stack_names(os.path.basename(src), len(images), False)
            notes = list(stack.notes)
    # The stack and its names file appear together or not at all; with the default names
    # (none to write), an old names file goes with the old stack.
    with_names = listing is not None or not default
    try:
        with atomic_files(
            [p, side] if with_names else [p],
            overwrite=overwrite,
            remove=[] if with_names else [side],
        ) as batch:
            f = batch.files[0]
            if listing is None:
                notes += _pack_array(f, images, dt, src, progress)
            else:
                names, notes = _pack_files(f, listing, dt, skip_unreadable, progress)
            if with_names:
                text = "".join(_names.to_line(n) + "\n" for n in names)
                batch.files[1].write(text.encode("utf-8"))
    finally:
        close()
    return Stack(NpyReader(p), names, tuple(notes), src)
