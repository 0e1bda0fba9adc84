"""Packing an image source into one ``.npy`` stack (:func:`pack_stack`), one image at a time
where the source allows, with the names file beside it, to read later with
``load_stack(target, stream=True)``. Image names that are not plain text are written as
:mod:`facefinder_cli.names` states."""

from __future__ import annotations

import math
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from facefinder_cli import names as _names
from facefinder_cli.errors import Hint, InputError, Note
from facefinder_cli.images.arrays import (
    _bad_npz,
    _npy_layout,
    _npz_key,
    _npz_names,
    _read_npy,
    _read_npz,
)
from facefinder_cli.images.common import (
    _CHUNK_BYTES,
    _check_finite,
    _check_layout,
    _image_k,
    _resolve_layout,
    _stack_names,
    plural,
)
from facefinder_cli.images.reading import (
    _GLOB_CHARS,
    Stack,
    _FileImages,
    _list_folder,
    _list_glob,
    input_paths,
    load_stack,
)
from facefinder_cli.images.stacks import NpyReader, _npy_header_info, _read_names, names_path
from facefinder_cli.images.zarrs import (
    ZarrReader,
    is_zarr,
    is_zarr_target,
    pack_zarr,
    zarr_stack_kind,
)
from facefinder_cli.outputs import (
    atomic_files,
    atomic_folder,
    check_file_target,
    check_folder_target,
    inside,
    written_as,
)

__all__ = ["pack_stack"]

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
            f"{where} holds values beyond the float32 range (about 3.4e38); pack with ",
            Hint("dtype", "float64"),
        )
    return out, dt != img.dtype and not np.array_equal(out, img)


def _rounding_note(n: int) -> list[str]:
    if not n:
        return []
    return [
        Note(
            f"rounded the values of {plural(n, 'image')} to float32 (about 7 significant "
            "digits: values that are not whole numbers, as in colour and float images, or "
            "beyond 16,777,216 lose some); pack with ",
            Hint("dtype", "float64"),
            " to keep them exactly",
        )
    ]


def _pack_files(
    f: IO[bytes],
    source: str,
    listing: tuple[list[str], list[str], list[str]],
    dt: np.dtype,
    skip_unreadable: bool,
    progress: Callable[[int, int], object] | None,
) -> tuple[tuple[str, ...], list[str]]:
    """Write the images of a folder or pattern listing as a .npy stack to ``f``, one file at a
    time; returns the names and notes of the images written."""
    paths, names, extra_notes = listing
    total = len(paths)
    files = _FileImages(paths, paths, skip_unreadable, source)
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
    f.write(_npy_header_bytes(dt, (len(images), *images.shape[1:])))
    rounded = [0]
    for out in _converted(images, dt, disp, progress, rounded):
        f.write(memoryview(out).cast("B"))
    return _rounding_note(rounded[0])


def _converted(
    images: Any,
    dt: np.dtype,
    disp: str,
    progress: Callable[[int, int], object] | None,
    rounded: list[int],
):
    """``images[k]`` in order, checked finite and in dtype ``dt`` (``rounded[0]`` counts
    those that rounding changed), with ``progress`` after each."""
    K = len(images)
    for k in range(K):
        img = np.asarray(images[k])
        where = _image_k(disp, k)
        _check_finite(img[np.newaxis], lambda _, where=where: where)
        out, lossy = _as_dtype(img, dt, where)
        rounded[0] += lossy
        yield out
        if progress is not None:
            progress(k + 1, K)


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


def _version(src: str) -> tuple[int, int] | None:
    """The size and time of last change of the file ``src`` (None for a folder or pattern)."""
    try:
        st = os.stat(src)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def _check_unchanged(src: str, version: tuple[int, int] | None, images: Any = None) -> None:
    """Refuse a stack packed from ``src`` if it was written to while it was read (the file's
    ``version`` as it was before; ``images``, a reader that can tell, such as a Zarr array's):
    the stack would mix its old and new images."""
    changed = getattr(images, "changed", None)
    if (version is not None and _version(src) != version) or (changed is not None and changed()):
        raise InputError(
            f"{src}: written to while it was being packed: the stack would mix old and new "
            "images and was not written; pack it again"
        )


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
            return _read_npy(src, disp, layout, [])[0], (base,), False, lambda: None
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
    to_zarr = is_zarr_target(p)
    if not (p.lower().endswith(".npy") or to_zarr):
        raise InputError(
            f"{p}: pack writes a .npy file or a .zarr folder; give a name ending in .npy or .zarr"
        )
    side = names_path(p)
    listing = None
    if is_zarr(src):
        if inside(p, src):
            raise InputError(f"{p}: is inside the source {src}; write the stack elsewhere")
    elif os.path.isdir(src):
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
    version = _version(src) if listing is None else None
    if to_zarr:
        return _pack_to_zarr(
            src, p, listing, dt, overwrite, skip_unreadable, layout, progress, version
        )
    # a stack carries no mark of its maker: pack knows its own by the record it leaves
    check_file_target(p, overwrite, keep=keep, ours=lambda _: written_as(p, "pack"))
    check_file_target(
        side, overwrite, keep=keep, ours=lambda _: written_as(side, "pack", p), companion=True
    )
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
            record="pack",
        ) as batch:
            f = batch.files[0]
            if listing is None:
                notes += _pack_array(f, images, dt, src, progress)
            else:
                names, notes = _pack_files(f, src, listing, dt, skip_unreadable, progress)
            if with_names:
                text = "".join(_names.to_line(n) + "\n" for n in names)
                batch.files[1].write(text.encode("utf-8"))
            _check_unchanged(src, version, None if listing is not None else images)
    finally:
        close()
    return Stack(NpyReader(p), names, tuple(notes), src)


def _pack_to_zarr(
    src: str,
    p: str,
    listing: tuple[list[str], list[str], list[str]] | None,
    dt: np.dtype,
    overwrite: bool,
    skip_unreadable: bool,
    layout: str | None,
    progress: Callable[[int, int], object] | None,
    version: tuple[int, int] | None = None,
) -> Stack:
    """:func:`pack_stack` into a Zarr folder (see :mod:`.zarrs`), built under a temporary name
    and renamed into place when complete; the names go into its attribute ``names``, escaped
    as in a names file."""
    keep = input_paths(src)
    kind = zarr_stack_kind(p)
    check_folder_target(p, overwrite, keep=keep, kind=kind)
    notes: list[str] = []
    rounded = [0]  # images that rounding to dt changed
    close: Callable[[], None] = lambda: None  # noqa: E731
    if listing is None:
        if src.lower().endswith((".npy", ".npz")):
            images, names, _, close = _array_source(src, layout, notes)
        else:  # .mat, TIFF, image files and Zarr arrays, as load_stack reads them
            stack = load_stack(src, layout)
            images, names, notes = stack.images, stack.names, list(stack.notes)
        total = len(images)
        converted = _converted(images, dt, src, progress, rounded)
    else:
        paths, listed, extra = listing
        files = _FileImages(paths, paths, skip_unreadable, src)
        total = len(paths)

        def read():
            for done, (disp, img) in enumerate(files, 1):
                if img is not None:
                    out, lossy = _as_dtype(img, dt, f"{disp}:")
                    rounded[0] += lossy
                    yield out
                if progress is not None:
                    progress(done, total)

        converted = read()

    def kept() -> tuple[str, ...]:
        return names if listing is None else tuple(listed[i] for i in files.kept)

    try:
        with atomic_folder(p, overwrite, keep=keep, kind=kind) as tmp:
            pack_zarr(tmp, total, dt, converted, lambda: [_names.to_line(n) for n in kept()])
            _check_unchanged(src, version, None if listing is not None else images)
    finally:
        close()
    if listing is not None:
        notes = files.notes() + extra
    return Stack(ZarrReader(p), kept(), tuple(notes + _rounding_note(rounded[0])), src)
