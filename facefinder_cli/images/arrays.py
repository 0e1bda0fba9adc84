"""Reading array files: NumPy ``.npy`` and ``.npz`` files and MATLAB ``.mat`` files (up to
v7), each as a float64 stack (K, H, W) in the file's own units, with the axis order given or
guessed (see :mod:`facefinder_cli.images.common`)."""

from __future__ import annotations

import zipfile
from typing import Any

import numpy as np

from facefinder_cli.errors import InputError
from facefinder_cli.images.common import (
    _check_kind,
    _check_numeric,
    _listing,
    _stack_from_array,
)
from facefinder_cli.images.stacks import _bad_npy, _npy_header_info, _npy_layout


def _bad_npz(disp: str) -> str:
    return f"{disp}: cannot read .npz file (truncated or not a NumPy .npz file)"


def _read_npy(
    path: str, disp: str, layout: str | None, notes: list[str]
) -> tuple[np.ndarray, bool]:
    """Returns (images as (K, H, W), whether the file held a single 2-D image)."""
    _npy_layout(path, disp)
    try:
        arr = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception:
        raise InputError(_bad_npy(disp)) from None
    two_d = arr.ndim == 2
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
