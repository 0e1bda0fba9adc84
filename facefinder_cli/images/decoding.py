"""Reading single image files: PNG, JPEG, BMP and the other formats Pillow reads, and TIFF
files (every page), each image as float64 grey values in the file's own units.

Colour images become grey by luminance, palettes are expanded, alpha channels dropped, 1-bit
images read as 0 and 255; each conversion is counted and said in a note. A file no decoder can
read is an :class:`InputError` saying why as well as can be told (empty, text, truncated...).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np

from facefinder_cli.errors import InputError
from facefinder_cli.images.common import _plural

_TIFF_EXTENSIONS = (".tif", ".tiff")
_LUMA = (0.299, 0.587, 0.114)


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
