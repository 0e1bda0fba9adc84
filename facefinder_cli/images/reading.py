"""Reading a stack of grey images from a folder, a glob pattern, an array file or an image
file: :func:`load_stack` and :func:`read_image`, the :class:`Stack` they return, and the
listing of folders and glob patterns (natural order, hidden and non-image files left out).

Every source gives float64 pixel values in the file's own units (8-bit images 0..255, 16-bit
images 0..65535, float images their values; nothing is rescaled), unless a ``.npy`` stack is
memory-mapped or streamed. Every problem a user can cause raises :class:`InputError` with a
one-line message naming the file or option.
"""

from __future__ import annotations

import fnmatch
import glob as _glob
import os
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass

import numpy as np

from facefinder_cli.errors import Hint, InputError, Note
from facefinder_cli.images.arrays import _read_mat, _read_npy, _read_npz
from facefinder_cli.images.common import (
    IMAGE_EXTENSIONS,
    _check_finite,
    _check_layout,
    _image_k,
    _listing,
    _size,
    _stack_names,
    natural_sort_key,
    plural,
)
from facefinder_cli.images.decoding import _Conversions, _read_image_file
from facefinder_cli.images.stacks import NpyReader, _read_names, _stream_npy, names_path
from facefinder_cli.images.zarrs import is_zarr, load_zarr
from facefinder_cli.outputs import folder_identity, is_facefinder_npz, written_as

__all__ = ["Stack", "glob_paths", "input_paths", "load_stack", "read_image"]

_GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class Stack:
    """A stack of grayscale images read from disk.

    Attributes
    ----------
    images : ndarray of shape (n_images, height, width)
        C-contiguous float64 pixel values in the file's own units; or, from
        ``load_stack(..., stream=True)``
        and :func:`pack_stack`, an :class:`NpyReader` that reads images from the file on demand
        (index it: ``images[k]``, ``images[a:b]``).
    names : tuple of str, one per image
        File names for a folder or glob pattern; ``"<file>[k]"`` (k from 0) for the images of a
        stack file, unless it stores names (``.npz``) or has a names file beside it (``.npy``);
        the file name alone for a file holding a single 2-D image.
    notes : tuple of str
        Human-readable notes on what was done while reading (conversions, guessed layout...).
        One that names a setting (the layout to give, the truth file of generated data) is a
        :class:`~facefinder_cli.errors.Note`, whose hints say which, for the caller to word.
    source : str
        The source as given.
    """

    images: np.ndarray | NpyReader
    names: tuple[str, ...]
    notes: tuple[str, ...] = ()
    source: str = ""

    def changed(self) -> bool:
        """Whether the file that the images are read from on demand was written to since it
        was opened (:meth:`NpyReader.changed`, :meth:`ZarrReader.changed`); images read into
        memory never are."""
        changed = getattr(self.images, "changed", None)
        return bool(changed()) if changed is not None else False


def _ours(path: str) -> bool:
    """Whether ``path`` is a stack that facefinder generate or pack wrote, as it left it: its
    images are along the first axis, (K, H, W), whatever its shape suggests."""
    return written_as(path, "generate") or written_as(path, "pack")


def _same_folder(seen: dict[str, tuple[int, int] | None], folder: str) -> None:
    """Note ``folder``'s identity in ``seen``, or raise if it is not the one noted before."""
    now = folder_identity(folder, follow=True)  # (a folder read through a link: the folder)
    if seen.setdefault(folder, now) != now:
        raise InputError(
            f"{folder}: the folder was replaced while its images were read (by another process "
            "writing it?); read it again once that is done"
        )


class _FileImages:
    """The images of a list of files, one per file, read one at a time with the checks of
    :func:`load_stack`: each file holds one image, all of the same size, finite values.

    Iterating yields ``(display name, image)`` per file, the image float64 (H, W), or None for a
    file that ``skip_unreadable`` skipped; the conversions done and the files read accumulate in
    ``conv`` and ``kept`` (indices into ``paths``)."""

    def __init__(
        self, paths: list[str], displays: list[str], skip_unreadable: bool, source: str = ""
    ) -> None:
        self.paths = paths
        self.displays = displays
        self.skip_unreadable = skip_unreadable
        self.source = source or os.path.dirname(paths[0]) or os.curdir
        self.conv = _Conversions()
        self.kept: list[int] = []
        self.skipped: list[str] = []
        # integer bit depth -> [images, an example's display name, least and greatest value]
        self.depths: dict[str, list] = {}
        # the same for the float images, all depths together: [images, example, least, greatest]
        self.floats: list | None = None
        # values at either end of their integer bit depth, of all the values of such images
        self.at_ends: dict[str, list[int]] = {}

    def __iter__(self) -> Iterator[tuple[str, np.ndarray | None]]:
        shape: tuple[int, ...] | None = None
        # The files are opened one by one by path: a folder replaced meanwhile as a whole (by
        # `generate --overwrite`, with two quick renames) would give images of both. Each
        # file's folder must be the same folder from the first file to the end.
        folders: dict[str, tuple[int, int] | None] = {}
        for i, (path, disp) in enumerate(zip(self.paths, self.displays)):
            _same_folder(folders, os.path.dirname(path) or os.curdir)
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
            for depth in c.depths:
                if depth[0] in "ui":
                    seen = self.depths.setdefault(depth, [0, disp, np.inf, -np.inf])
                    seen[0] += 1
                    seen[2] = min(seen[2], float(img.min()))
                    seen[3] = max(seen[3], float(img.max()))
                elif depth[0] == "f":
                    seen = self.floats = self.floats or [0, disp, np.inf, -np.inf]
                    seen[0] += 1
                    seen[2] = min(seen[2], float(img.min()))
                    seen[3] = max(seen[3], float(img.max()))
            ints = sorted(d for d in c.depths if d[0] in "ui")
            if ints:
                info = np.iinfo(ints[0])
                ends = self.at_ends.setdefault(ints[0], [0, 0])
                ends[0] += int(np.count_nonzero((img <= info.min) | (img >= info.max)))
                ends[1] += img.size
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
        for folder in list(folders):
            _same_folder(folders, folder)
        if not self.kept:
            raise InputError(
                f"{self.displays[0]} and the other {plural(len(self.paths) - 1, 'file')}: none "
                "is readable"
            )
        self._check_depths()

    def _check_depths(self) -> None:
        """Refuse files of several integer bit depths whose values are on different scales.

        Values are read in each file's own units, never rescaled: an 8-bit image's 200 and a
        16-bit image's 200 are the same number but, as a rule, not the same brightness (16-bit
        images span 0..65535; an 8-bit image saved as 16 bits is its values times 257). Fitted
        together they make a garbage model with nothing to show for it, so this is an error,
        unless the values plainly share one scale: every value of every image lies in the
        range that each of the depths present holds (e.g. 16-bit files whose values are all
        in 0..255, among 8-bit ones). Then every file could have been saved at any of the
        depths with the same values: they are 8-bit values in a wider file, as some tools save
        them (a true 16-bit image using 0.4% of its range is too dark to be likely), and are
        read as they are, with a note.

        Float images among integer ones (a TIFF of values in 0..1 among 8-bit PNGs, say) are
        refused where the two plainly differ in scale: value ranges (over all the images of
        each kind) whose widths differ more than ``SCALE_RATIO`` times, or that overlap in
        less than half the narrower one. Images of one scene under one noise span alike.
        """
        self._check_floats()
        if len(self.depths) < 2:
            return
        lo = max(int(np.iinfo(d).min) for d in self.depths)
        hi = min(int(np.iinfo(d).max) for d in self.depths)
        if all(lo <= seen[2] and seen[3] <= hi for seen in self.depths.values()):
            self.conv.shared_range = (lo, hi)
            return
        order = sorted(self.depths, key=lambda d: (np.iinfo(d).max, d))
        each = ", ".join(
            f"{self.depths[d][0]} {d} (e.g. {self.depths[d][1]}; values "
            f"{self.depths[d][2]:.0f}..{self.depths[d][3]:.0f})"
            for d in order
        )
        raise InputError(
            f"{self.source}: images of different bit depths, whose values are on different "
            f"scales: {each}; convert them to one bit depth (8-bit values x 257 make 16-bit "
            "ones)"
        )

    def _check_floats(self) -> None:
        if self.floats is None or not self.depths:
            return
        ints = [self.depths[d] for d in sorted(self.depths)]
        lo_i, hi_i = min(v[2] for v in ints), max(v[3] for v in ints)
        lo_f, hi_f = self.floats[2], self.floats[3]
        narrow, wide = sorted((hi_i - lo_i, hi_f - lo_f))
        overlap = min(hi_i, hi_f) - max(lo_i, lo_f)
        if wide <= SCALE_RATIO * narrow and overlap >= 0.5 * narrow:
            return
        each = ", ".join(
            f"{v[0]} {d} (e.g. {v[1]}; values {v[2]:.0f}..{v[3]:.0f})"
            for d, v in zip(sorted(self.depths), ints)
        )
        n, example = self.floats[:2]
        raise InputError(
            f"{self.source}: float images among integer ones, whose values are on different "
            f"scales: {each}, {n} float (e.g. {example}; values {lo_f:.3g}..{hi_f:.3g}); "
            "convert them to one scale (float values in 0..1 x 255 are on the 8-bit one)"
        )

    def notes(self) -> list[str]:
        notes = self.conv.notes()
        for depth, (ends, values) in sorted(self.at_ends.items()):
            if ends >= CLIPPED_SHARE * values:
                info = np.iinfo(depth)
                notes.append(
                    f"{ends / values:.0%} of the values of the {depth} images are "
                    f"{info.min} or {info.max}, the ends of their bit depth: where noise was cut "
                    "off there, the fit's noise std comes out low and its face and background "
                    "flattened; images that keep the whole range (16-bit, or float .npy) fit "
                    "better"
                )
        if self.skipped:
            n = plural(len(self.skipped), "unreadable file")
            notes.append(f"skipped {n}: {_listing(self.skipped, 3)}")
        return notes


#: How many times wider the value range of a folder's float images may be than that of its
#: integer images, or the other way round, before they are said to be on different scales
#: (8-bit values against floats in 0..1: 255 times).
SCALE_RATIO = 4.0

#: The share of an integer bit depth's values at its ends (0 or 255 for 8 bits) from which a
#: folder's images are said to be clipped. Measured on scenes made from photographs with
#: noise cut off at 0 and 255: 9-11% at the ends left the fitted noise std 8-10% low, 31%
#: 27% low, 56% half the true one (the bundled sample: 1.3%).
CLIPPED_SHARE = 0.05


def _images_from_files(
    paths: list[str], displays: list[str], skip_unreadable: bool = False, source: str = ""
) -> tuple[np.ndarray, list[str], list[int]]:
    """Read one image per file into a (K, H, W) float64 stack; returns it, the notes and the
    indices of the files read (all of them unless ``skip_unreadable`` skipped some). ``source``
    (the folder or pattern) names the files as a whole in errors."""
    files = _FileImages(paths, displays, skip_unreadable, source)
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
    images, notes, kept = _images_from_files(paths, paths, skip, source)
    return Stack(images, tuple(names[i] for i in kept), tuple(notes + extra_notes), source)


def _list_folder(source: str) -> tuple[list[str], list[str], list[str]]:
    """The image files of a folder as :func:`load_stack` reads them: (paths, names, notes)."""
    files: list[str] = []
    others: list[str] = []
    try:
        entries = list(os.scandir(source))
    except OSError as err:
        raise InputError(f"{source}: cannot list folder ({err.strerror or err})") from None
    stacks: list[str] = []  # what the user may have meant: a stack file in the folder
    for entry in entries:
        with suppress(OSError):
            if entry.name.startswith("."):  # hidden, e.g. macOS "._img1.png" resource files
                continue
            if entry.is_dir() and entry.name.lower().endswith(".zarr"):
                stacks.append(entry.name)
            if not entry.is_file():
                continue
            if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(entry.name)
            else:
                others.append(entry.name)
                if _may_be_stack(entry.name):
                    stacks.append(entry.name)
    if not files:
        hint = ""
        if stacks:
            stacks.sort(key=natural_sort_key)
            some = ", ".join(os.path.join(source, f) for f in stacks[:3])
            hint = (
                f"; it holds an image stack: give the file itself, {some}"
                if len(stacks) == 1
                else f"; it holds {len(stacks)} image stacks: give one itself, e.g. {some}"
            )
        raise InputError(
            f"{source}: no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) "
            f"in this folder{hint}"
        )
    files.sort(key=natural_sort_key)
    notes = []
    if "truth.npz" in others and is_facefinder_npz(os.path.join(source, "truth.npz")):
        others.remove("truth.npz")  # facefinder's own file: said apart, not as junk
        notes.append(
            Note(
                "not read: truth.npz, the truth of data made by facefinder generate (",
                Hint("truth", os.path.join(source, "truth.npz"), command="fit"),
                " measures the fit against it)",
            )
        )
    if others:
        others.sort(key=natural_sort_key)
        n = plural(len(others), "non-image file")
        notes.append(f"ignored {n}: {_listing(others, 3)}")
    paths = [os.path.join(source, f) for f in files]
    return paths, files, notes


def _may_be_stack(name: str) -> bool:
    """Whether a file in a folder of images may be a stack of them (not one of facefinder's
    results or truths, which are .npz files too)."""
    low = name.lower()
    if low in ("truth.npz", "result.npz", "checkpoint.npz") or low.endswith(".truth.npz"):
        return False
    return low.endswith((".npy", ".npz", ".mat"))


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
        extra = f" ({plural(len(matches), 'path')} matched, none an image file)" if matches else ""
        raise InputError(f"{source}: no image files match this pattern{extra}")
    files.sort(key=natural_sort_key)
    base = [os.path.basename(f) for f in files]
    names = base if len(set(base)) == len(base) else files
    return files, names, []


def _load_folder(source: str, skip: bool = False) -> Stack:
    return _load_listing(source, *_list_folder(source), skip)


def _load_glob(source: str, skip: bool = False) -> Stack:
    return _load_listing(source, *_list_glob(source), skip)


def _load_file(source: str, layout: str | None, stream: bool = False) -> Stack:
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
                    notes[:0] = [] if _ours(path) else guess
                return Stack(reader, names, tuple(notes), source)
            images, two_d = _read_npy(path, disp, layout, guess)
            if not two_d:
                if stream:
                    notes.append(
                        f"read {disp} into memory: a .npy stack streams only in (K, H, W) C order"
                    )
                names = _read_names(path, len(images), notes)
            # a names file with one name per image vouches for a (K, H, W) guess
            vouched = names is not None or _ours(path)
            notes[:0] = [n for n in guess if not vouched or "(K, H, W)" not in n]
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
        - a Zarr array (n_images, height, width): a folder holding ``zarr.json`` (or Zarr 2's
          metadata), or a URL that Zarr opens; always read on demand, as a
          :class:`~facefinder_cli.images.ZarrReader` (see :mod:`.zarrs`);
        - any other image file: one image.
    layout : {None, "khw", "hwk"}
        Axis order of a 3-D array: images first (K, H, W) or last (H, W, K). None: ``.mat``
        files are (H, W, K), other files (K, H, W), except a ``.npy``/``.npz`` array whose last
        axis is more than twice as long as each of the other two (e.g. (20, 30, 500)), read as
        (H, W, K) with a note. TIFF pages are always (K, H, W) unless ``"hwk"`` is given.
        Ignored for folders, patterns and 2-D arrays.
    stream : bool
        Read no pixel data of a ``.npy`` file holding a C-ordered 3-D array in (K, H, W) layout
        (given, or guessed as above): ``images`` is then an :class:`NpyReader` that reads images
        on demand, in the file's dtype (native byte order; not converted to float64). Nor are
        the values checked: the caller must check that they are finite, as
        :mod:`facefinder_cli.engine` does in its first pass. Any other ``.npy`` array is read
        as usual (a 3-D one with a note); other sources ignore ``stream``.
    skip_unreadable : bool
        For folders and patterns: leave out files that cannot be read as an image (with a note
        naming them) instead of stopping at the first. Images of another size are still an
        error.

    Returns
    -------
    Stack
        ``images`` of shape (n_images, height, width), float64 in the file's own units (except
        with ``stream``, see above; no rescaling of 16-bit or float images). Colour
        (RGB) images become grayscale by luminance 0.299 R + 0.587 G + 0.114 B (images whose
        channels are all equal keep their values);
        alpha channels are dropped, palette images expanded, 1-bit images read as 0 and 255;
        16-bit colour PNGs come at 8-bit precision (a Pillow limit). Each conversion is counted
        in ``notes``.

    Raises
    ------
    InputError
        Missing path, empty folder or pattern without images, unreadable or corrupt file, images
        of different sizes (sizes given as height x width), files of different integer bit depths
        whose values are on different scales (see ``_FileImages._check_depths``), NaN or infinite
        values, arrays that are not 2-D or 3-D or not real numbers, bad ``layout``.
    """
    src = os.fspath(source)
    layout = _check_layout(layout)
    if is_zarr(src):  # always read on demand, like a streamed .npy stack
        reader, names, notes = load_zarr(src, layout)
        return Stack(reader, names, tuple(notes), src)
    if os.path.isdir(src):
        return _load_folder(src, skip_unreadable)
    if os.path.lexists(src) and not os.path.exists(src):
        raise InputError(f"{src}: broken symbolic link")
    if os.path.exists(src):
        if not os.path.isfile(src):
            raise InputError(f"{src}: not a regular file or folder")
        return _load_file(src, layout, stream)
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
