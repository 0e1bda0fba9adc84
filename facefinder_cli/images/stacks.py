"""Streaming ``.npy`` stacks: :class:`NpyReader` reads the images of a C-ordered (K, H, W)
``.npy`` file on demand with plain positioned reads, and the names file beside a stack
(``stack.names.txt`` for ``stack.npy``) gives the images their names."""

from __future__ import annotations

import functools
import math
import operator
import os
import threading
import weakref
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from facefinder_cli import names as _names
from facefinder_cli.errors import InputError
from facefinder_cli.images.common import _check_kind, _resolve_layout, plural

__all__ = ["NpyReader", "names_path"]

#: Most bytes asked of one ``os.pread`` where ``os.preadv`` is missing (Linux caps a read at
#: about 2 GiB anyway).
_READ_MAX = 2**30


def _npy_header_info(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order?, dtype) from a .npy header; leaves ``f`` at the first data byte."""
    fmt = np.lib.format
    major, _ = fmt.read_magic(f)
    reader = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype)


def _bad_npy(disp: str) -> str:
    return f"{disp}: cannot read .npy file (truncated or not a NumPy .npy file)"


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
        st = os.fstat(fd)
        self._version = (st.st_size, st.st_mtime_ns)  # the file as opened (see opener)

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

    @property
    def opener(self) -> functools.partial:
        """A picklable callable that opens this file again, in another process, and refuses it
        there if its size or time of last change differ from when this reader opened it: how
        the workers of a cluster read their chunks (``engine.fit(..., client=)``)."""
        return functools.partial(_reopen, os.path.abspath(self.path), *self._version)

    def changed(self) -> bool:
        """Whether the file was written to since this reader opened it (its size or time of
        last change differ), so that reads may mix its old and new images. A file replaced by
        renaming a new one onto its name is not: this reader goes on reading the one it
        opened."""
        if self._fd is None:
            return False
        st = os.fstat(self._fd)
        return (st.st_size, st.st_mtime_ns) != self._version

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
                if self.changed():  # cut short since it was opened
                    raise InputError(
                        f"{self.path}: written to while it was being read (it is shorter now)"
                    )
                raise InputError(_bad_npy(self.path))
        if self._swap:
            out.byteswap(inplace=True)
        return out


def _reopen(path: str, size: int, mtime_ns: int) -> NpyReader:
    """:class:`NpyReader` of ``path``, if it is still the file of that size and time."""
    reader = NpyReader(path)
    st = os.fstat(reader._fd)
    if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
        reader.close()
        raise InputError(
            f"{path}: not the file the fit was started on (its size or time of last change differ)"
        )
    return reader


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
            f"ignored {side}: it holds {plural(len(lines), 'name')} for "
            f"{plural(n, 'image')}; images are named {os.path.basename(npy_path)}[k]"
        )
        return None
    return tuple(lines)


def _stream_npy(path: str, disp: str, layout: str | None, notes: list[str]) -> NpyReader | None:
    """An NpyReader when the .npy file holds a C-ordered 3-D array in (K, H, W) layout (given or
    guessed); None when it must be read into memory instead."""
    shape, fortran, _, _ = _npy_layout(path, disp)
    if len(shape) != 3 or fortran:
        return None
    guessed: list[str] = []
    if _resolve_layout(shape, disp, layout, None, guessed) != "khw":
        return None
    reader = NpyReader(path)
    notes.extend(guessed)
    return reader
