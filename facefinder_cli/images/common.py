"""What the readers of :mod:`facefinder_cli.images` share: the checks every stack passes (real
numbers, 2-D or 3-D, not empty, finite), the rules for the axis order (layout) of a 3-D array,
the natural sort of file names, and the small helpers their messages use."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from facefinder_cli.errors import Hint, InputError, Note

__all__ = ["IMAGE_EXTENSIONS", "natural_sort_key"]

#: File extensions (lower case) taken as images when reading a folder or a glob pattern.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Extensions of other files that a folder's name would be mistaken for: an output folder is
#: refused such a name (``generate -o data.mat`` made a folder named data.mat).
FILE_LIKE_EXTENSIONS = (".npy", ".npz", ".mat", ".txt", ".csv", ".json", ".zip", ".h5", ".hdf5")
_LAYOUTS = ("khw", "hwk")
#: Largest block of images examined at once by the finite-values check (bytes).
_CHUNK_BYTES = 64 * 2**20


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


def plural(n: int, word: str) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is 1 ("1 file", "3 files")."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _size(shape: Sequence[int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


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
            Note(
                f"read {disp} as {plural(c, 'image')} of {a}x{b} (H, W, K) from its shape; pass ",
                Hint("layout", "khw"),
                " if the images are along the first axis",
            )
        )
    elif 1 < a <= 2 * max(b, c):  # (many more along the first axis, or one: plainly images)
        notes.append(
            Note(
                f"read {disp} as {plural(a, 'image')} of {b}x{c} (K, H, W); pass ",
                Hint("layout", "hwk"),
                " if the images are along the last axis",
            )
        )
    return lay


def _image_k(disp: str, k: int) -> str:
    return f"{disp}: image {k} (counting from 0)"


def _stack_names(base: str, n: int, two_d: bool) -> tuple[str, ...]:
    return (base,) if two_d else tuple(f"{base}[{k}]" for k in range(n))
