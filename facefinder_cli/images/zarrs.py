"""Zarr arrays of images: read on demand (:class:`ZarrReader`), as Dask users keep their image
stacks, and written by ``pack`` one block of images at a time (:func:`pack_zarr`).

A stack is a 3-D Zarr array (n_images, height, width) of real numbers: a local folder, or any
URL that the installed Zarr and fsspec open (``s3://...``, ``gs://...``), at the root of the
store or as the array ``images`` of a group. ``pack`` writes it in Zarr format 3 with chunk
files named ``k.0.0`` at the folder's top (no subfolders), the image names in the attribute
``names``. ``zarr`` is imported only when a Zarr array is read or written: it comes with
``pip install 'facefinder[dask]'``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from facefinder_cli import names as _names
from facefinder_cli.errors import InputError
from facefinder_cli.images.common import _check_kind, _stack_names
from facefinder_cli.outputs import FolderKind

__all__ = ["ZarrReader", "is_zarr", "is_zarr_target", "zarr_stack_kind"]

#: What ``pack`` writes a Zarr folder for (its marker file says so).
ZARR_PURPOSE = "a Zarr stack of images (facefinder pack)"


def zarr_stack_kind(folder: str | os.PathLike) -> FolderKind:
    """The files ``pack`` writes into the Zarr folder ``folder``, so that --overwrite replaces
    it only if it holds nothing else: its metadata and the chunk files its metadata calls for
    (``0.0.0`` to ``n-1.0.0``); any other file, a chunk file past the end included, is not
    ours."""
    chunks = 0
    try:
        with open(os.path.join(folder, "zarr.json"), encoding="utf-8") as f:
            meta = json.load(f)
        shape = meta["shape"]
        per = meta["chunk_grid"]["configuration"]["chunk_shape"]
        chunks = -(-int(shape[0]) // int(per[0]))
    except (OSError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError):
        pass

    def expected(name: str) -> bool:
        m = re.fullmatch(r"(0|[1-9][0-9]*)\.0\.0", name)
        return name == "zarr.json" or (m is not None and int(m[1]) < chunks)

    return FolderKind(ZARR_PURPOSE, expected=expected)


#: The extra that brings Zarr.
EXTRA = "pip install 'facefinder[dask]'"


def is_zarr(source: str) -> bool:
    """Whether ``source`` names a Zarr store: a URL (``scheme://``), or a folder holding Zarr's
    metadata (``zarr.json``, or ``.zarray``/``.zgroup`` of format 2)."""
    if "://" in source:
        return True
    return os.path.isdir(source) and any(
        os.path.isfile(os.path.join(source, m)) for m in ("zarr.json", ".zarray", ".zgroup")
    )


def is_zarr_target(target: str | os.PathLike) -> bool:
    """Whether ``pack`` writes ``target`` as a Zarr folder (its name ends in ``.zarr``)."""
    return os.fspath(target).rstrip("/" + os.sep).lower().endswith(".zarr")


def _zarr():
    try:
        import zarr
    except ImportError:
        raise InputError(f"reading or writing a Zarr array needs zarr: {EXTRA}") from None
    return zarr


def _open(url: str, disp: str | None = None) -> Any:
    """The (K, H, W) array of the store at ``url``; an :class:`InputError` naming it (as
    ``disp``, the path as the user gave it, if given) if none."""
    zarr = _zarr()
    disp = url if disp is None else disp
    try:
        node = zarr.open(url, mode="r")
    except Exception as err:  # missing store, unknown scheme, damaged metadata...
        raise InputError(f"{disp}: cannot open as Zarr ({type(err).__name__}: {err})") from None
    if isinstance(node, zarr.Group):
        arrays = dict(node.arrays())
        if "images" not in arrays:
            raise InputError(
                f"{disp}: a Zarr group without an array named images (it holds "
                f"{', '.join(sorted(arrays)) or 'no arrays'})"
            )
        node = arrays["images"]
    return node


class ZarrReader:
    """A read-only stack of images in a Zarr array, read on demand: ``reader[a:b]`` reads the
    chunks holding images ``a`` to ``b`` only, as a new (n, height, width) array in the
    array's dtype; ``reader[k]`` is image ``k``.

    Parameters
    ----------
    url : str
        A local folder or a URL Zarr opens (see the module's docstring).
    check : bool
        Refuse an array with missing chunks (Zarr would read them as zeros): one listing of
        the store. The readers of a cluster's workers skip it (the client checked).

    Attributes
    ----------
    url : str
    shape : tuple of int
    dtype : numpy.dtype
    names : tuple of str or None
        The attribute ``names`` when it has one string per image.
    """

    ndim = 3

    def __init__(self, url: str | os.PathLike, *, check: bool = True) -> None:
        u = os.fspath(url)
        self.url = u if "://" in u else os.path.abspath(u)
        self._array = _open(self.url, u)
        self.shape = tuple(int(n) for n in self._array.shape)
        self.dtype = np.dtype(self._array.dtype)
        _check_kind(self.dtype, self.shape, u, "array")
        if len(self.shape) != 3:
            raise InputError(
                f"{u}: a Zarr array of shape {self.shape}; expected (n_images, height, width)"
            )
        if check:  # Zarr reads a missing chunk as its fill value: images of zeros
            missing = self._array.nchunks - self._array.nchunks_initialized
            if missing:
                raise InputError(
                    f"{u}: {missing} of its {self._array.nchunks} chunks are missing (Zarr would "
                    f"read their images as the fill value {self._array.fill_value}; if that is "
                    "what they are, write them with Zarr's config write_empty_chunks=True)"
                )
        # the files as opened (a local store), for changed(); not for workers' readers
        self._version = self.fingerprint(0, self.shape[0]) if check else None
        names = self._array.attrs.get("names")  # escaped as lines of a names file
        ok = isinstance(names, list) and len(names) == self.shape[0]
        self.names = tuple(_names.from_line(str(n)) for n in names) if ok else None

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ZarrReader({self.url!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (list, np.ndarray)):  # reads image by image, in the order asked
            return np.stack([self[int(k)] for k in np.asarray(key).ravel()])
        try:
            return np.ascontiguousarray(self._array[key])
        except (IndexError, ValueError, TypeError):
            raise
        except Exception as err:  # the store failed (a missing chunk file, a network error)
            raise InputError(f"{self.url}: cannot read ({type(err).__name__}: {err})") from None

    @property
    def opener(self) -> functools.partial:
        """A picklable callable that opens this array again, in another process."""
        return functools.partial(ZarrReader, self.url, check=False)

    def fingerprint(self, a: int, b: int) -> tuple | None:
        """The size and modification time of the files that images ``a`` to ``b - 1`` are read
        from (the array's metadata and its chunk files), for a store in a local folder: two
        readers with the same fingerprint read the same values, as far as a file system can
        tell, so a cluster's worker can check that it reads the same files as the client
        (not a stale copy at the same path). None for other stores (object stores have one
        copy)."""
        from zarr.storage import LocalStore

        array = self._array
        if not isinstance(array.store, LocalStore):
            return None
        folder = os.path.join(str(array.store.root), array.path)
        per, grid = array.chunks[0], array.cdata_shape
        keys = [
            array.metadata.encode_chunk_key((i, j, k))
            for i in range(a // per, -(-b // per))
            for j in range(grid[1])
            for k in range(grid[2])
        ]
        out = []
        for name in ("zarr.json", ".zarray", *keys):
            try:
                st = os.stat(os.path.join(folder, name))
                out.append((name, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((name, None, None))
        return tuple(out)

    def changed(self) -> bool:
        """Whether a file of the array (its metadata, a chunk) was written, added or removed
        since this reader opened it, so that reads may mix old and new images; False for
        stores that are not local folders, which cannot tell."""
        return self._version is not None and self.fingerprint(0, self.shape[0]) != self._version

    def close(self) -> None:
        """Nothing to close: Zarr opens its files per read."""


def load_zarr(source: str, layout: str | None) -> tuple[ZarrReader, tuple[str, ...], list[str]]:
    """The reader, the image names and the notes of a Zarr stack (always (K, H, W))."""
    if layout == "hwk":
        raise InputError(
            f"{source}: a Zarr stack is read as (n_images, height, width); --layout hwk is "
            "for .npy, .npz and .mat files"
        )
    reader = ZarrReader(source)
    names = reader.names or tuple(_stack_names(os.path.basename(source), len(reader), False))
    return reader, names, []


#: Images per chunk of a packed Zarr array: as many pixels as the engine's default chunk, so
#: that a fit reads each Zarr chunk once per pass.
_PIXELS_PER_CHUNK = 64 * 64 * 64


def pack_zarr(
    folder: str, total: int, dtype: np.dtype, images: Iterable[np.ndarray], names: Callable
) -> int:
    """Write ``images`` (each (H, W), in order, ``total`` at most) as a Zarr array into the
    empty ``folder``, one chunk of images at a time; then ``names()`` as its attribute
    ``names``. Returns the number of images written (fewer than ``total`` when a source
    skipped some)."""
    zarr = _zarr()
    array = None
    per_chunk = done = 0
    buffer: list[np.ndarray] = []
    for img in images:
        if array is None:
            H, W = img.shape
            per_chunk = max(1, _PIXELS_PER_CHUNK // (H * W))
            array = zarr.create_array(
                folder,
                shape=(total, H, W),
                chunks=(per_chunk, H, W),
                dtype=dtype,
                chunk_key_encoding={"name": "v2", "separator": "."},
                zarr_format=3,
                overwrite=True,
                config={"write_empty_chunks": True},  # (a chunk of black images is data)
            )
        buffer.append(img)
        if len(buffer) == per_chunk:  # whole chunks: each chunk file is written once
            array[done : done + per_chunk] = np.stack(buffer)
            done, buffer = done + per_chunk, []
    if array is None:
        raise InputError("no images to pack")
    if buffer:
        array[done : done + len(buffer)] = np.stack(buffer)
        done += len(buffer)
    if done != total:
        array.resize((done, *array.shape[1:]))
    array.attrs["names"] = list(names())
    return done
