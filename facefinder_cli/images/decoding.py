"""Reading single image files: PNG, JPEG, BMP and the other formats Pillow reads, and TIFF
files (every page), each image as float64 grey values in the file's own units.

Files are decoded by imageio's Pillow plugin (``imageio.v3.imopen(..., plugin="pillow")``),
TIFF files by tifffile (see :func:`_read_tifffile` for why not through imageio), with the
Pillow plugin again for the TIFF compressions tifffile cannot decode without imagecodecs.
Colour images become grey by luminance, palettes are expanded, alpha channels dropped, 1-bit
images read as 0 and 255; each conversion is counted and said in a note. A file no decoder can
read is an :class:`InputError` saying why as well as can be told (empty, text, truncated, too
many pixels for Pillow's decompression-bomb limit...).
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np

from facefinder_cli.errors import InputError
from facefinder_cli.images.common import plural

_TIFF_EXTENSIONS = (".tif", ".tiff")
_LUMA = (0.299, 0.587, 0.114)


class _Conversions:
    """Counts of the conversions done while reading, turned into notes at the end."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.depths: set[str] = set()
        # the range of values each of several integer depths holds, all values in it (set by
        # the reader of a folder, which checks that depths share a scale; None: not checked)
        self.shared_range: tuple[int, int] | None = None

    def update(self, other: _Conversions) -> None:
        self.counts.update(other.counts)
        self.depths |= other.depths

    def notes(self) -> list[str]:
        c = self.counts
        notes = []
        if c["colour"]:
            n = plural(c["colour"], "colour image")
            notes.append(f"converted {n} to grayscale (luminance)")
        if c["palette"]:
            notes.append(f"expanded the colour palette of {plural(c['palette'], 'image')}")
        if c["alpha"]:
            n = plural(c["alpha"], "image")
            notes.append(f"dropped the alpha (transparency) channel of {n}")
        if c["bilevel"]:
            n = plural(c["bilevel"], "black-and-white (1-bit) image")
            notes.append(f"read {n} as 0 and 255")
        if c["png16"]:
            notes.append(
                f"read {plural(c['png16'], '16-bit colour PNG image')} at 8-bit precision "
                "(0..255): Pillow cannot decode them at 16 bits"
            )
        if c["miniswhite"]:
            notes.append(f"inverted {plural(c['miniswhite'], 'white-is-zero TIFF image')}")
        int_depths = sorted(d for d in self.depths if d[0] in "ui")
        if len(int_depths) > 1 and self.shared_range is not None:
            lo, hi = self.shared_range
            notes.append(
                f"the images have different bit depths ({', '.join(int_depths)}), but all "
                f"their values lie in {lo}..{hi}, which each holds: read on one scale"
            )
        elif len(int_depths) > 1:
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


def _cause(exc: BaseException | None) -> BaseException | None:
    """The decoder's own exception behind ``exc``: imageio's ``imopen`` raises an OSError in
    place of whatever a plugin raised while opening the file, with that as its cause."""
    if isinstance(exc, OSError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def _unreadable(path: str, disp: str, exc: BaseException | None = None) -> InputError:
    """The InputError for an image file no decoder could read, saying why as well as we can."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return InputError(f"{disp}: cannot open ({err.strerror or err})")
    if not head:
        return InputError(f"{disp}: cannot read image (empty file, 0 bytes)")
    from imageio.core.request import InitializationError

    exc = _cause(exc)
    if isinstance(exc, InitializationError):  # the plugin does not know the file's format
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
    if name == "DecompressionBombError":  # Pillow's limit (Image.MAX_IMAGE_PIXELS), kept
        return InputError(f"{disp}: cannot read image (too many pixels: {exc})")
    return InputError(f"{disp}: cannot read image (truncated or corrupt file)")


def _png_is_16bit_colour(path: str) -> bool:
    """Whether the file is a PNG of 16-bit samples with colour or alpha (from its header)."""
    with suppress(OSError):
        with open(path, "rb") as f:
            head = f.read(26)
        return (
            len(head) == 26
            and head.startswith(b"\x89PNG\r\n\x1a\n")
            and head[24] == 16
            and head[25] in (2, 4, 6)
        )
    return False


def _pillow_frame(image: Any, k: int, conv: _Conversions) -> np.ndarray:
    """Frame ``k`` of a file open in imageio's Pillow plugin as a float64 (H, W) array; see
    :func:`~facefinder_cli.images.reading.load_stack` for the conversions. The frame is read
    in its own mode (or 1-bit as 8-bit, a palette as RGB or RGBA, other colour models as RGB):
    naming the mode keeps the plugin's own choices (a 16-bit PNG as uint16) out of it."""
    meta = image.metadata(index=k, exclude_applied=False)
    mode = meta["mode"]  # the frame's own mode, before any conversion
    if mode == "1":
        conv.counts["bilevel"] += 1
        conv.depths.add("uint8")
        return image.read(index=k, mode="L").astype(np.float64)
    if mode == "L" or mode == "F" or mode.startswith("I"):
        arr = image.read(index=k, mode=mode)
        conv.depths.add(arr.dtype.name if arr.dtype.isnative else arr.dtype.newbyteorder().name)
        return arr.astype(np.float64)
    conv.depths.add("uint8")
    if mode in ("LA", "La"):
        conv.counts["alpha"] += 1
        return image.read(index=k, mode=mode)[..., 0].astype(np.float64)
    if mode in ("P", "PA"):
        conv.counts["palette"] += 1
        mode = "RGBA" if mode == "PA" or "transparency" in meta else "RGB"
    if mode in ("RGBA", "RGBa"):
        conv.counts["alpha"] += 1
        rgb = image.read(index=k, mode=mode)[..., :3]
    elif mode == "RGBX":
        rgb = image.read(index=k, mode=mode)[..., :3]
    elif mode == "RGB":
        rgb = image.read(index=k, mode=mode)
    else:  # CMYK, YCbCr, LAB, HSV, ...
        rgb = image.read(index=k, mode="RGB")
    return _luminance(rgb[np.newaxis], conv)[0]


def _read_pillow(path: str, disp: str, all_frames: bool) -> tuple[list[np.ndarray], _Conversions]:
    """Decode with imageio's Pillow plugin: the first frame, or every frame (multi-page TIFF)."""
    import imageio.v3 as iio

    conv = _Conversions()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": not ours to print
        # An open file, not the path: imageio would take a path such as "http://..." or
        # "data.zip/img.png" for a URL or a zip member.
        with open(path, "rb") as f, iio.imopen(f, "r", plugin="pillow") as image:
            for k in itertools.count() if all_frames else (0,):
                try:
                    out.append(_pillow_frame(image, k, conv))
                except EOFError:  # past the last frame, as Pillow's ImageSequence ends
                    if k == 0:
                        raise
                    break
    if _png_is_16bit_colour(path):
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
        if cmap.max() > 255:  # 16-bit entries: 8-bit values times 257 (0..65535), or times
            # 256 as Pillow writes them (an 8-bit 219 became 218.15 when divided by 257)
            cmap = cmap / (256.0 if not np.any(cmap % 256) else 257.0)
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
    """Decode with tifffile: every series (pages of one shape) of the file.

    tifffile directly, not through imageio's tifffile plugin: the plugin gives a series'
    pixels but not its axes (which are pages, rows, columns, samples), which the conversion
    to grey needs, and its metadata fails on tags that tifffile reads past (a ResolutionUnit
    other than 1, 2 or 3), which would leave such files, float64 ones included, to Pillow."""
    import tifffile

    conv = _Conversions()
    out = []
    with _tifffile_log() as records:
        with tifffile.TiffFile(path) as tif:  # not through imageio: see above
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
    except Exception as exc:  # decoders raise many types for bad files; all mean "unreadable"
        raise _unreadable(path, disp, exc) from None
    return [frames[0][np.newaxis]], conv
