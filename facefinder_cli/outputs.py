"""Where facefinder writes, and the rules that keep a user's files safe.

Every file and folder the tool writes goes through this module, and obeys these rules:

* **Complete or absent.** A file is written to a hidden temporary beside it
  (``.NAME.XXXXXXXX.facefinder.tmp``) and renamed into place once complete; a folder is built
  as a hidden temporary folder and renamed; files that belong together are renamed together
  (:func:`atomic_files`). On any error or interruption the temporaries are removed and the
  targets are as they were.
* **Replaced only when asked, and only what the tool made.** An existing output is replaced
  only with ``overwrite``, and then only when it is a file the tool wrote as that output (each
  command says how to know one: :func:`check_file_target`'s ``ours``: a plot's stamp, or the
  record beside a CSV or stack, :func:`note_written`), or a folder this tool made for the same
  purpose (:class:`FolderKind`: its marker file ``.facefinder`` names that purpose; older runs
  are recognised by their ``result.npz`` or ``checkpoint.npz``) holding only files the tool
  wrote there, as it left them (the marker records each, :func:`write_marker`). Never a
  symbolic link (the file it points to is not the tool's), a block device or socket, a mount
  point, an input of the command, or a folder holding one.
* **Devices and FIFOs are written into**, as a shell redirection does: ``-o /dev/null`` works,
  and leaves ``/dev/null`` a device. ``-``, ``/dev/stdout``, ``/dev/fd/N`` and
  ``/proc/self/fd/N`` write to the descriptor the process already has.
* **One writer per output.** :func:`claim` locks each output for the whole command (an
  ``flock`` on ``.NAME.lock`` beside it, in the folder as the kernel resolves it): a second
  facefinder process asking for the same output, or for one inside a folder being written,
  fails at once, in one line. A lock file holds a pid and nothing else; a user's file under
  its name is never touched. Holding the lock also proves that temporaries of that output left
  by a killed process (SIGKILL, a power cut) are stale: :func:`claim` removes them, and puts
  back an output that process had moved aside.
* **Standard output.** A reader that goes away (``| head``) ends the writing quietly: the rest
  of the command (files it writes too) carries on, and :func:`stdout_broken` tells the caller
  to exit with 141 as a process killed by SIGPIPE would. A closed standard output (``>&-``)
  or a full device is an :class:`~facefinder_cli.errors.InputError`.

Why one module of about 1,000 lines: the rules interlock. Claims must know the temporaries'
names to clean them up, atomic writes the claims' lock files to refuse them as targets, the
target checks both; split, each part would import the others' private names. A reviewer
checks a file-safety rule here, in one place, against ``tests/test_outputs.py`` and
``tests/test_safety.py``.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import IO, Any

from facefinder_cli import interrupts
from facefinder_cli.errors import Hint, InputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, the other rules still hold
    fcntl = None  # type: ignore[assignment]

#: The setting that lets an output be replaced (the command line says ``--overwrite``).
OVERWRITE = Hint("overwrite")

__all__ = [
    "MARKER",
    "Batch",
    "FolderKind",
    "atomic_files",
    "atomic_folder",
    "atomic_write",
    "check_file_target",
    "check_folder_target",
    "claim",
    "close_stdout_quietly",
    "forget_broken_pipe",
    "inside",
    "is_facefinder_npz",
    "is_facefinder_plot",
    "note_written",
    "written_as",
    "is_stdout",
    "is_stream",
    "repair_std_streams",
    "stdout_broken",
    "stdout_closed",
    "take_over",
]

#: The file that marks a folder as made by facefinder, with the purpose it was made for.
MARKER = ".facefinder"


@dataclass(frozen=True)
class FolderKind:
    """What a folder facefinder writes is for, and how to recognise one: the purpose its
    marker names, the files that marked a folder of this kind before markers (``legacy``,
    ``.npz`` files facefinder wrote), and which file names it writes into one (``expected``;
    --overwrite replaces a folder holding only those, each as its marker records it)."""

    made_for: str
    legacy: tuple[str, ...] = ()
    expected: Callable[[str], bool] | None = None


_STDOUT = "stdout"


# ------------------------------------------------------------------------------------------
# standard streams


class _Streams:
    closed: set[int] = set()  # standard descriptors that were closed when the process started
    broken = False  # a reader closed standard output while we wrote to it


def repair_std_streams() -> None:
    """Give every closed standard descriptor (0, 1, 2) ``/dev/null``, as careful Unix tools do.

    Otherwise the next file the process opens would get descriptor 1 or 2, and anything written
    to standard output or error would land in it. A closed standard output is remembered
    (:func:`stdout_closed`): commands that write data there refuse to run. Messages to a closed
    standard error are lost, and the command otherwise works."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        _Streams.closed.add(fd)
    if 1 in _Streams.closed and (sys.stdout is None or _closed_stream(sys.stdout)):
        sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8")
    if 2 in _Streams.closed and (sys.stderr is None or _closed_stream(sys.stderr)):
        sys.stderr = io.TextIOWrapper(
            open(2, "wb", closefd=False), encoding="utf-8", errors="facefinder.escape"
        )


class _Stderr(io.RawIOBase):
    """Standard error (descriptor ``fd``, 2), for messages only: writing to it never fails.

    If its reader goes away (``2>&1 | head -1``) or it cannot take them (``2>/dev/full``, a
    terminal gone without a hang-up), ``/dev/null`` takes the descriptor's place and the
    messages after it are lost, as with ``2>&-``; the command goes on and ends as it would
    have. (Left alone, the first message after it raised, and Click ended the command with
    status 1, its outputs unmade.) A descriptor another program made non-blocking and that is
    full gets ``BLOCKED_WAIT`` seconds to take a message, else the message is dropped, and
    so are the next ones that it cannot take at once, until one goes through."""

    #: Seconds a full non-blocking standard error gets to take a message.
    BLOCKED_WAIT = 1.0

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self._fd = fd
        self._stalled = False  # the last message was dropped: do not wait for the next

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, b: Any) -> int:
        try:
            written = os.write(self._fd, b)
            self._stalled = False
            return written
        except BlockingIOError:
            if not self._stalled:
                import select

                try:
                    if select.select([], [self._fd], [], self.BLOCKED_WAIT)[1]:
                        return os.write(self._fd, b)
                except (OSError, ValueError):
                    pass
            self._stalled = True
            return len(b)  # dropped: a message is not worth a stalled fit
        except OSError:  # a reader gone, a full device, a terminal gone: messages are lost
            with suppress(OSError):  # (no descriptor left for /dev/null: lost all the same)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self._fd)
                os.close(null)
            return len(b)


def _escape(err: UnicodeError) -> tuple[str, int]:
    """The ``facefinder.escape`` error handler of messages: a byte of a name that is not
    UTF-8 (a surrogate escape) as ``\\xNN``, as the CSV files write it (Python's
    ``backslashreplace`` wrote ``\\udcNN``); anything else the terminal cannot show as
    ``backslashreplace`` does."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start : err.end]:
        if "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("ascii", "backslashreplace").decode("ascii"))
    return "".join(out), err.end


codecs.register_error("facefinder.escape", _escape)


def guard_stderr() -> None:
    """Make ``sys.stderr`` the process's descriptor 2 through :class:`_Stderr` (the same
    encoding, line-buffered, with :func:`_escape`'s errors where Python's were
    ``backslashreplace``), unless it is something else (a test's capture)."""
    err = sys.stderr
    if err is None or err is not sys.__stderr__:  # a capture, or guarded already
        return
    try:
        if err.fileno() != 2:
            return
        err.flush()
    except (OSError, ValueError):
        return
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(_Stderr()),
        encoding=err.encoding,
        errors=(
            "facefinder.escape" if err.errors in (None, "", "backslashreplace") else err.errors
        ),
        line_buffering=True,
    )


def _closed_stream(stream: Any) -> bool:
    try:
        return stream.closed
    except Exception:
        return True


def stdout_closed() -> bool:
    """Whether standard output was closed when the process started (``>&-``)."""
    return 1 in _Streams.closed


def forget_broken_pipe() -> None:
    """Start a new command with standard output presumed open (for several commands run in
    one process, as tests do)."""
    _Streams.broken = False


def stdout_broken() -> bool:
    """Whether a reader closed standard output while the command wrote to it (``| head``)."""
    return _Streams.broken


def _pipe_broke() -> None:
    """Standard output lost its reader: note it, and send whatever else is written there
    (including the interpreter's last flush) to /dev/null."""
    _Streams.broken = True
    close_stdout_quietly()


def stdout_reader_gone() -> bool:
    """Whether standard output is a pipe or socket whose reader has gone (poll says POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(1, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll (Windows) or no descriptor 1
        return False


def close_stdout_quietly() -> None:
    """Point descriptor 1 at /dev/null, so that what is still buffered for a standard output
    whose reader went away is dropped without an error at exit."""
    with suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)


@contextmanager
def _stdout(mode: str) -> Iterator[IO[Any]]:
    if stdout_closed():
        raise InputError("standard output is closed: there is nowhere to write to (use -o FILE)")
    if sys.stdout is None:
        raise InputError("standard output is missing: there is nowhere to write to")
    with suppress(Exception):
        sys.stdout.flush()
    buffer = sys.stdout.buffer
    stream: Any = buffer
    if mode == "w":  # UTF-8 whatever the locale, as the files are
        stream = io.TextIOWrapper(buffer, encoding="utf-8", newline="", write_through=True)
    try:
        yield stream
        stream.flush()
        buffer.flush()
    except BrokenPipeError:
        _pipe_broke()
    except OSError as err:
        raise InputError(f"standard output: cannot write ({_why_not(err)})") from None
    finally:
        if stream is not buffer:
            with suppress(Exception):
                stream.detach()


# ------------------------------------------------------------------------------------------
# what a path is


_FD_PATH = re.compile(r"/dev/(?:fd/(\d+)|std(out|err))|/proc/self/fd/(\d+)")


def _descriptor(p: str) -> int | None:
    """The descriptor that ``p`` names: 1 for ``-`` and ``/dev/stdout``, N for ``/dev/fd/N``
    and ``/proc/self/fd/N``, 2 for ``/dev/stderr``; None for other paths."""
    if p == "-":
        return 1
    m = _FD_PATH.fullmatch(p)
    if not m:
        return None
    if m[2]:
        return 1 if m[2] == "out" else 2
    return int(m[1] or m[3])


def is_stdout(path: str | os.PathLike) -> bool:
    """Whether writing to ``path`` writes to standard output (``-``, ``/dev/stdout``...)."""
    return _descriptor(os.fspath(path)) == 1


def is_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` is written into as a stream rather than replaced by a file: standard
    output, a descriptor, a character device (``/dev/null``) or a FIFO."""
    return _kind(os.fspath(path)) in (_STDOUT, "descriptor", "device")


def _kind(p: str) -> str:
    """``"stdout"``, ``"descriptor"``, ``"missing"``, ``"file"``, ``"folder"``, ``"link"``,
    ``"device"`` (a character device or FIFO: written into) or ``"special"`` (refused)."""
    fd = _descriptor(p)
    if fd is not None:
        return _STDOUT if fd == 1 else "descriptor"
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        if err.errno == errno.ENOTDIR:
            return "missing"  # the parent check names the problem
        if err.errno == errno.ENAMETOOLONG:
            raise InputError(f"{p}: the name is too long (more than 255 bytes)") from None
        raise InputError(f"{p}: cannot check ({err.strerror or err})") from None
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "device"
    return "special"


def _special(p: str) -> InputError:
    try:
        mode = os.lstat(p).st_mode
    except OSError:
        mode = 0
    what = (
        "a block device"
        if stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    return InputError(f"{p}: is {what}; refusing to write to it")


def _refuse_unless_file(p: str, kind: str) -> None:
    """Raise for the kinds of path a file is never written over: a folder, a symbolic link, a
    block device, a socket."""
    if kind == "folder":
        raise InputError(f"{p}: is a folder; expected a file name")
    if kind == "link":
        raise _link(p)
    if kind == "special":
        raise _special(p)


def _link(p: str) -> InputError:
    return InputError(
        f"{p}: is a symbolic link; facefinder does not write through links (give the path it "
        "points to, or remove the link)"
    )


def _umask() -> int:
    with suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Suffix of the temporaries beside an output (``.NAME.XXXXXXXX.facefinder.tmp``): distinct
#: enough that cleaning up after a killed run never takes a user's file for one.
_TMP = ".facefinder.tmp"


def _split(p: str) -> tuple[str, str]:
    """(the real folder ``p`` goes into, its last name): the folder as the kernel resolves it
    (``deep/../x`` through a link ``deep`` is not ``./x``), for temporaries and locks."""
    head, name = os.path.split(p.rstrip("/" + os.sep) or p)
    return os.path.realpath(head or "."), name


def _stem(name: str) -> str:
    """``name`` for the hidden helper files beside it (temporaries, lock): shortened, with a
    hash to keep it unique, when the helper's name would pass the 255 bytes a name may have."""
    raw = os.fsencode(name)
    if len(raw) <= 200:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:8]
    return os.fsdecode(raw[:150]) + "~" + digest


def _check_parent(p: str) -> str:
    """The real folder ``p`` goes into, which must exist and be writable; ``p``'s name must be
    one a file may have."""
    if p == "":
        raise InputError("an output name is empty")
    parent, name = _split(p)
    shown = os.path.dirname(p.rstrip("/" + os.sep)) or "."
    if name in (".", ".."):
        raise InputError(f"{p}: give the output its own name, not one ending in {name}")
    if len(os.fsencode(name)) > 255:
        raise InputError(f"{p}: the name is too long (more than 255 bytes)")
    if not os.path.isdir(parent):
        why = (
            f"{shown} is not a folder"
            if os.path.lexists(parent)
            else f"folder {shown} does not exist"
        )
        raise InputError(f"{p}: cannot write ({why})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{p}: cannot write (folder {shown} is not writable)")
    return parent


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (symbolic links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _real_inputs(keep: Sequence[str | os.PathLike]) -> list[str]:
    """The real paths of the inputs that exist (each folder resolved once: a glob may list
    many thousands of files in a few folders)."""
    folders: dict[str, str] = {}
    out = []
    for k in keep:
        k = os.fspath(k)
        if not os.path.lexists(k):
            continue
        if os.path.islink(k) or os.path.isdir(k):
            out.append(os.path.realpath(k))
            continue
        head, tail = os.path.split(os.path.abspath(k))
        if head not in folders:
            folders[head] = os.path.realpath(head)
        out.append(os.path.join(folders[head], tail))
    return out


def _under(real: str, folder_real: str) -> bool:
    return real == folder_real or real.startswith(folder_real.rstrip(os.sep) + os.sep)


# ------------------------------------------------------------------------------------------
# checks made before the work, so that a refusal comes first


def check_file_target(
    path: str | os.PathLike,
    overwrite: bool = False,
    *,
    keep: Sequence[str | os.PathLike] = (),
    ours: Callable[[str], bool] | None = None,
    companion: bool = False,
) -> None:
    """Raise :class:`InputError` unless a file may be written at ``path`` (see the module's
    rules). ``keep`` lists the command's inputs (files or folders): an existing file that is
    one of them, or lies in one, is never replaced. ``ours(path)`` tells whether an existing
    file is one the tool wrote as this output: with ``overwrite``, any other is refused (None:
    any regular file may be replaced, for callers of the library that ask for it).
    ``companion``: a file written beside the one the user named (a names or truth file),
    never into a device or FIFO, which could wait for a reader forever."""
    p = os.fspath(path)
    kind = _kind(p)
    if companion and kind in ("descriptor", "device"):
        raise InputError(f"{p}: not a regular file, and it goes with the output; move it away")
    if kind in (_STDOUT, "descriptor", "device"):
        return
    _refuse_unless_file(p, kind)
    if kind == "file":
        real = os.path.realpath(p)
        for k in _real_inputs(keep):
            if _same_file(p, k):
                raise InputError(f"{p}: is an input of this command; refusing to replace it")
            if _under(real, k):
                raise InputError(
                    f"{p}: lies in a folder this command reads its input from; refusing to "
                    "replace it"
                )
        # (whether --overwrite would replace it, said first: advice to pass it, then refused,
        # sent users round twice)
        if ours is not None and not ours(p):
            raise InputError(
                f"{p}: not a file facefinder wrote as this output (or it changed since, or an "
                "earlier version wrote it), so it is not replaced even with ", OVERWRITE, "; "
                "move it away or choose another name"
            )  # fmt: skip
        if not overwrite:
            raise InputError(f"{p}: file exists; pass ", OVERWRITE, " to replace it")
    _check_parent(p)
    _CHECKED[os.path.abspath(p)] = _identity(p)


#: The outputs :func:`check_file_target` allowed, as they were then (:func:`_identity`; None:
#: absent). Installing one refuses a file that appeared or changed there since (a user's,
#: moved there while the tool worked), instead of replacing it unchecked.
_CHECKED: dict[str, list[int] | None] = {}


def _still_as_checked(p: str) -> None:
    key = os.path.abspath(p)
    if key in _CHECKED and _identity(p) != _CHECKED.pop(key):
        raise InputError(
            f"{p}: another file came there while facefinder worked; it is kept, and the new "
            "output was not written"
        )


#: Larger marker files are not read (a record of a million files is some 50 MB).
_MARKER_BYTES = 1 << 27


def _read_marker(folder: str) -> dict | None:
    """A folder's marker file (:func:`write_marker`), as a dict, or None."""
    path = os.path.join(folder, MARKER)
    try:
        if os.path.islink(path) or not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            made = json.loads(f.read(_MARKER_BYTES))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return made if isinstance(made, dict) else None


def marker_kind(folder: str) -> str | None:
    """The purpose written in a folder's marker file, or None."""
    made = _read_marker(folder)
    return str(made["made_for"]) if made is not None and "made_for" in made else None


def _marker_files(folder: str) -> dict[str, list] | None:
    """What a folder's marker records of the files facefinder wrote into it: each name with
    the (size, modification time) it left it with, or, while it replaces one in place
    (:func:`atomic_write`'s ``in_marked_folder``), either of two; None when the marker
    records none (markers of versions before 2026-12-02, or no marker)."""
    made = _read_marker(folder)
    files = made.get("files") if made is not None else None
    if not isinstance(files, dict):
        return None
    replacing = made.get("replacing")
    replacing = replacing if isinstance(replacing, dict) else {}
    return {name: [files.get(name), replacing.get(name)] for name in {*files, *replacing}}


def is_facefinder_npz(path: str) -> bool:
    """Whether ``path`` is an .npz file that facefinder wrote (it stores its ``version``)."""
    try:
        if os.path.islink(path) or not os.path.isfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return "version.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


#: How a plot names its creator (PNG ``Software``, PDF and SVG ``Creator``): facefinder, its
#: version, the output it was drawn as (what for, and a hash of its file name: ``plot-elbo:``
#: and 16 hex digits) and the SHA-256 of the file's bytes with this digest as zeros (in a PNG,
#: with its text chunk's CRC as for the zeros too). --overwrite replaces a plot only if it was
#: drawn as that output under that name and the digest holds: an edited one, another output's
#: (a run's prior map copied to the name), or another's file with a copied tag, is kept.
#: (Plots of versions before 2026-12-02 name no output: none is replaced.)
_STAMP = re.compile(
    rb"facefinder [0-9][0-9A-Za-z.+-]*(?: (?P<made_for>[a-z][a-z0-9-]*):(?P<name>[0-9a-f]{16}))?"
    rb" (?P<digest>[0-9a-f]{64})"
)
_ZEROS = b"0" * 64
_PNG = b"\x89PNG\r\n\x1a\n"
#: Larger files are not read to check a stamp (no plot is that large).
_PLOT_BYTES = 1 << 26


def _name_hash(name: str) -> str:
    """What a plot's stamp keeps of its file name (the name itself could need escaping)."""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def creator_stamp(version: str, output: tuple[str, str] | None = None) -> str:
    """The creator text to draw into a plot's metadata; :func:`stamp_digest` completes it.
    ``output``: (what the plot is made for, such as ``"plot-elbo"``, and its file name)."""
    if output is None:
        return f"facefinder {version} {_ZEROS.decode()}"
    made_for, name = output
    if not re.fullmatch(r"[a-z][a-z0-9-]*", made_for):
        raise ValueError(f"not a name for what a plot is made for: {made_for!r}")
    return f"facefinder {version} {made_for}:{_name_hash(os.path.basename(name))} {_ZEROS.decode()}"


def _png_crc(data: bytes, at: int) -> bytes:
    """``data`` with the CRC of the PNG text chunk holding offset ``at`` computed afresh."""
    start = data.rfind(b"tEXt", 0, at) - 4
    if start < len(_PNG):
        return data
    end = start + 8 + int.from_bytes(data[start : start + 4], "big")
    if not start < at < end <= len(data) - 4:
        return data
    crc = zlib.crc32(data[start + 4 : end]).to_bytes(4, "big")
    return data[:end] + crc + data[end + 4 :]


def stamp_digest(data: bytes) -> bytes:
    """The plot ``data`` (drawn with :func:`creator_stamp`) with its digest filled in."""
    found = [m.start("digest") for m in _STAMP.finditer(data) if m["digest"] == _ZEROS]
    if len(found) != 1:
        return data  # no stamp, or a label that looks like one too: left unstamped
    at = found[0]
    digest = hashlib.sha256(data).hexdigest().encode()
    stamped = data[:at] + digest + data[at + 64 :]
    return _png_crc(stamped, at) if data.startswith(_PNG) else stamped


def is_facefinder_plot(path: str, made_for: str | None = None, *, named: bool = False) -> bool:
    """Whether ``path`` is a plot that facefinder drew and nobody changed since (its stamp);
    with ``made_for``, drawn as that output (``"plot-elbo"``) under the name it has; with
    ``named``, drawn as any output under the name it has."""
    try:
        if os.path.getsize(path) > _PLOT_BYTES:
            return False
        with open(path, "rb") as f:
            data = f.read(_PLOT_BYTES)
    except OSError:
        return False
    m = _STAMP.search(data)
    if m is None:
        return False
    if made_for is not None and m["made_for"] != made_for.encode():
        return False
    if (named or made_for is not None) and m["name"] != _name_hash(
        os.path.basename(os.fspath(path))
    ).encode():
        return False
    at = m.start("digest")
    zeroed = data[:at] + _ZEROS + data[m.end("digest") :]
    if data.startswith(_PNG):
        zeroed = _png_crc(zeroed, at)
    return hashlib.sha256(zeroed).hexdigest().encode() == m["digest"]


#: The record beside a stack that facefinder wrote (``.NAME.facefinder``, a JSON object):
#: which files it wrote with it, each as it left them (size, modification time, inode).
_RECORD = ".facefinder"


def _record_path(p: str) -> str:
    head, name = os.path.split(p.rstrip("/" + os.sep) or p)
    return os.path.join(head, "." + _stem(name) + _RECORD)


def _identity(p: str) -> list[int] | None:
    """(size, modification time in ns, inode) of the regular file ``p`` (not followed if a
    link), or None: a change to the file, or another file in its place, changes it. (Not the
    change time, which renames change too: a pair put back after an interrupted --overwrite
    would no longer be known. An edit whose modification time is set back by hand is.)"""
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino] if stat.S_ISREG(st.st_mode) else None


def _read_record(path: str) -> dict | None:
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.loads(f.read(65536))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    ok = isinstance(rec, dict) and rec.get("made_by") == "facefinder"
    return rec if ok and isinstance(rec.get("files"), dict) else None


def _kept_as(p: str) -> list[int] | None:
    """What a record keeps of the file ``p``: (size, modification time in ns). Not the inode:
    a copy that keeps the time (``cp -a``, ``rsync -a``, a moved folder) is still known;
    another file in its place, or an edit, has another time."""
    seen = _identity(p)
    return None if seen is None else seen[:2]


def note_written(paths: Sequence[str], made_for: str) -> None:
    """Record, beside ``paths[0]``, that facefinder just wrote the regular files ``paths``
    (one output, such as a stack and its names file) for ``made_for``, so that --overwrite
    knows them again (:func:`written_as`) and nothing else: a stack carries no mark of its
    maker. A file of another's by the record's name is left alone (the outputs then stay
    unknown, and are refused, not replaced)."""
    rec = _record_path(os.fspath(paths[0]))
    if os.path.lexists(rec) and _read_record(rec) is None:
        return
    files = {os.path.basename(p): _kept_as(p) for p in map(os.fspath, paths)}
    files = {k: v for k, v in files.items() if v is not None}
    if not files:  # written into a device or FIFO: nothing to know again
        return
    from facefinder_cli import __version__

    made = {"made_by": "facefinder", "made_for": made_for, "version": __version__}
    with interrupts.deferred("install"), atomic_write(rec, "w", overwrite=True) as f:
        json.dump({**made, "files": files}, f)  # (the outputs are in place: finish the record)


def written_as(path: str, made_for: str, first: str | None = None) -> bool:
    """Whether the record beside ``first`` (default: ``path``) says that facefinder wrote the
    file ``path`` for ``made_for``, and it is as it was left."""
    rec = _read_record(_record_path(os.fspath(first if first is not None else path)))
    if rec is None or rec.get("made_for") != made_for:
        return False
    seen = _kept_as(os.fspath(path))
    return seen is not None and rec["files"].get(os.path.basename(os.fspath(path))) == seen


def _made_here(folder: str, kind: FolderKind | None) -> bool:
    if kind is None:
        return False
    if marker_kind(folder) == kind.made_for:
        return True
    return any(is_facefinder_npz(os.path.join(folder, name)) for name in kind.legacy)


def check_folder_target(
    path: str | os.PathLike,
    overwrite: bool = False,
    *,
    keep: Sequence[str | os.PathLike] = (),
    kind: FolderKind | None = None,
) -> bool:
    """Raise :class:`InputError` unless :func:`atomic_folder` may build ``path``; returns
    whether it exists. Callers use it to fail before long work, not after.

    An existing empty folder is used. A non-empty one is replaced only with ``overwrite``, and
    only when it is of ``kind``: its marker names that purpose (or it holds one of the kind's
    legacy files) and every file in it is one facefinder wrote there, as it left it (the
    marker's record, :func:`write_marker`: a file a user added, under any name, or one of the
    tool's that they changed, is never deleted with it); and only when it holds no
    subfolder and none of ``keep`` (the command's inputs), it is not a mount point (it could
    not be renamed) and it is not the current folder or one of its parents."""
    p = os.fspath(path)
    target = p.rstrip("/" + os.sep) or p
    what = _kind(target)
    if what in ("missing", "folder"):
        _check_parent(target)
    if what == "missing":
        return False
    real = os.path.realpath(target)
    for k in _real_inputs(keep):
        if _under(k, real):
            what = "is an input" if k == real else "holds an input"
            raise InputError(
                f"{p}: {what} of this command; refusing to replace it, even with ", OVERWRITE
            )
    if what == "link":
        raise InputError(f"{p}: is a symbolic link; give the folder it points to")
    if what != "folder":  # (a folder output never replaces a file, --overwrite or not)
        raise InputError(
            f"{p}: a file, where this command writes a folder of files; choose another name"
        )
    try:
        content = os.listdir(target)
    except OSError as err:
        raise InputError(f"{p}: cannot list folder ({err.strerror or err})") from None
    here = os.path.realpath(os.getcwd())
    if _under(here, real):
        raise InputError(f"{p}: is the current folder or contains it; refusing to replace it")
    if os.path.ismount(target):
        raise InputError(
            f"{p}: is a mount point, which cannot be replaced by renaming; give a folder inside it"
        )
    if not content:
        return True
    # (whether --overwrite would replace it, said first: advice to pass it, then refused,
    # sent users round twice)
    if any(os.path.isdir(os.path.join(target, c)) for c in content):
        raise InputError(
            f"{p}: folder holds subfolders; refusing to replace it, even with ", OVERWRITE
        )
    expected = kind.expected if kind is not None else None
    foreign = sorted(c for c in content if c != MARKER and expected and not expected(c))
    if foreign:
        raise _foreign_files(p, foreign)
    if not _made_here(target, kind):
        raise InputError(
            f"{p}: was not made by facefinder for this purpose (no {MARKER} marker says so); "
            "refusing to replace it, even with ",
            OVERWRITE,
        )
    _check_recorded(p, target, sorted(c for c in content if c != MARKER), kind)
    if not overwrite:
        raise InputError(f"{p}: folder is not empty; pass ", OVERWRITE, " to replace it")
    return True


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _foreign_files(p: str, foreign: Sequence[str]) -> InputError:
    return InputError(
        f"{p}: holds files facefinder does not write there ({_shown(foreign)}); refusing to "
        "replace it, even with ",
        OVERWRITE,
        f" (move {'it' if len(foreign) == 1 else 'them'} away first)",
    )


#: Files a command took over (:func:`take_over`), each as it was then (:func:`_kept_as`).
_TAKEN: dict[str, list[int] | None] = {}


def take_over(path: str | os.PathLike) -> None:
    """Let the folder around ``path`` be replaced with the file ``path`` as it is now, as if
    facefinder had recorded it there: the file the command carries on from, and replaces
    (``fit --resume``'s checkpoint, read and checked). For this process only."""
    p = os.fspath(path)
    _TAKEN[os.path.abspath(p)] = _kept_as(p)


def _taken(path: str) -> bool:
    """Whether the command took the file ``path`` over (:func:`take_over`), as it is now."""
    taken = _TAKEN.get(os.path.abspath(path))
    return taken is not None and taken == _kept_as(path)


def _check_recorded(p: str, folder: str, names: Sequence[str], kind: FolderKind | None) -> None:
    """Refuse to replace the folder ``p`` (``folder``, as checked) that facefinder made unless
    each of its files ``names`` is one its marker records as written there, as it was left: a
    file put there under a name facefinder uses, or one of its files edited or replaced since,
    is the user's; a plot facefinder drew there since, under its own name and unchanged (its
    stamp says so: ``plot-elbo -o run/elbo.png``), is facefinder's. A folder whose marker
    records no files (an earlier version's, or one known by its legacy files) is judged as
    it was then, by the names of its files alone (checked before): refusing every such
    folder would refuse every earlier run, and the interrupted fits saved beside them."""
    names = [c for c in names if not _taken(os.path.join(folder, c))]
    recorded = _marker_files(folder)
    if recorded is None:  # (as before records: the kind's names alone, checked above)
        return
    # A plot facefinder drew into the folder under its own name since (plot-elbo -o
    # run/elbo.png): its stamp says so, and that nobody changed it.
    names = [c for c in names if not is_facefinder_plot(os.path.join(folder, c), named=True)]
    foreign = [c for c in names if c not in recorded]
    if foreign:
        raise _foreign_files(p, foreign)
    changed = [
        c
        for c in names
        if (seen := _kept_as(os.path.join(folder, c))) is None or seen not in recorded[c]
    ]
    if changed:
        them = "it" if len(changed) == 1 else "them"
        raise InputError(
            f"{p}: {_shown(changed)} changed since facefinder wrote {them}; refusing to replace "
            "the folder, even with ",
            OVERWRITE,
            f": move {them} elsewhere first (or delete {them})",
        )


# ------------------------------------------------------------------------------------------
# writing


def _temp_beside(p: str) -> tuple[int, str, int]:
    """A new hidden temporary file beside ``p``: (its descriptor, its path, the permissions the
    final file should get: those of an existing ``p``, else the umask's)."""
    parent = _check_parent(p)
    try:
        perms = stat.S_IMODE(os.lstat(p).st_mode)
    except OSError:
        perms = 0o666 & ~_umask()
    try:
        name = _stem(_split(p)[1])
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=_TMP, dir=parent)
    except OSError as err:
        raise InputError(f"{p}: cannot write ({_why_not(err)})") from None
    return fd, tmp, perms


def _install(tmp: str, p: str, overwrite: bool) -> None:
    """Rename the finished temporary file ``tmp`` to ``p``. Without ``overwrite`` (False) an
    existing ``p`` is never replaced, even one that appeared while we wrote: the file is linked
    into place, which fails if the name is taken."""
    if overwrite is False:
        try:
            os.link(tmp, p)
        except FileExistsError:
            raise InputError(f"{p}: file exists; pass ", OVERWRITE, " to replace it") from None
        except OSError:  # no hard links here (some network or FAT file systems)
            if os.path.lexists(p):
                raise InputError(f"{p}: file exists; pass ", OVERWRITE, " to replace it") from None
            os.rename(tmp, p)
            return
        os.unlink(tmp)
        return
    if _kind(p) not in ("missing", "file"):  # became something else while we wrote
        raise InputError(f"{p}: is no longer a regular file; refusing to replace it")
    _still_as_checked(p)
    os.replace(tmp, p)


@contextmanager
def _write_into(p: str, fd: int | None, mode: str) -> Iterator[IO[Any]]:
    """Write into a character device or FIFO (``p``) or a descriptor ``fd``, in place."""
    try:
        if fd is None:
            flags = os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NOFOLLOW", 0)
            handle = os.open(p, flags)
            st = os.fstat(handle)
            if not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                os.close(handle)
                raise InputError(f"{p}: changed while opening it; refusing to write to it")
        else:
            handle = os.dup(fd)
    except OSError as err:
        raise InputError(f"{p}: cannot write ({_why_not(err)})") from None
    f: Any = os.fdopen(handle, "wb")
    if mode == "w":
        f = io.TextIOWrapper(f, encoding="utf-8", newline="")
    try:
        yield f
        f.flush()
    except BrokenPipeError:
        if fd == 1 or stat.S_ISFIFO(os.fstat(handle).st_mode):
            _pipe_broke()
        else:
            raise InputError(f"{p}: cannot write (broken pipe)") from None
    except OSError as err:
        raise InputError(f"{p}: cannot write ({_why_not(err)})") from None
    finally:
        with suppress(OSError):
            f.close()


@contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    overwrite: bool = False,
    record: str | None = None,
    in_marked_folder: bool = False,
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Everything goes to a temporary file in the same folder, renamed to ``path`` when the
    ``with`` block ends without error (an existing file keeps its permissions). On any
    exception, interrupts included, the temporary file is removed, ``path`` is as it was and
    the exception propagates.

    Parameters
    ----------
    path : str or path
        Target file. ``"-"`` and ``/dev/stdout`` are standard output, ``/dev/fd/N`` its
        descriptor; a character device or FIFO is written into (no temporary file then). A
        symbolic link, a block device or a socket is refused.
    mode : {"wb", "w"}
        Binary, or text (UTF-8).
    overwrite : bool
        False (the default): never replace an existing file, even one that appears while
        writing. True: replace a regular file (the caller checked that it may: see
        :func:`check_file_target`).
    record : str, optional
        What the file was made for, noted beside it (:func:`note_written`) as it is installed,
        so that --overwrite knows it again (not for standard output or devices).
    in_marked_folder : bool
        The file is written in place into a folder facefinder made (a checkpoint into its run
        folder): the record of the folder's marker (:func:`write_marker`) is kept true as it
        is installed, so that --overwrite still knows the folder as facefinder's.

    Raises
    ------
    InputError
        The path is a folder, a link or a special file, its folder does not exist, or the file
        cannot be written (disk full, closed standard output...).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    p = os.fspath(path)
    kind = _kind(p)
    if kind == _STDOUT:
        with _stdout(mode) as f:
            yield f
        return
    if kind in ("descriptor", "device"):
        with _write_into(p, _descriptor(p), mode) as f:
            yield f
        return
    _refuse_unless_file(p, kind)
    tmp = ""
    before = sys.exc_info()[1]  # an interrupt being handled (a checkpoint saved after Ctrl-C)
    try:
        with interrupts.deferred():  # the temporary is created and known, or neither
            fd, tmp, perms = _temp_beside(p)
        os.close(fd)  # reopened by name: some writers (tifffile) need ``f.name`` to be a path
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with interrupts.deferred(_install_label()):
            try:
                os.chmod(tmp, perms)
                if in_marked_folder:
                    _note_in_marker(p, tmp)
                _install(tmp, p, overwrite)
                if record is not None:
                    note_written([p], record)
                if in_marked_folder:  # (the record knows the file already: only tidied)
                    with suppress(InputError):
                        _note_in_marker(p)
            except OSError as err:
                raise InputError(f"{p}: cannot write ({_why_not(err)})") from None
    except BaseException as exc:
        if tmp:
            with suppress(OSError):
                os.unlink(tmp)
        stop = _interrupt_behind(exc, before)
        if stop is not None:  # a writer's clean-up failed on the way out of an interrupt
            raise stop from None
        if isinstance(exc, OSError):
            raise InputError(f"{p}: cannot write ({_why_not(exc)})") from None
        raise


#: NumPy's words for a short write (``ndarray.tofile``), an OSError without an errno.
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def _why_not(err: OSError) -> str:
    """Why a file could not be written, in a few words: the system's, or for a short write
    (the disk full, mostly) what was written of what."""
    short = _SHORT_WRITE.search(str(err)) if err.errno is None else None
    if short:
        return f"only {short[2]} of {short[1]} bytes went to disk: is it full?"
    return err.strerror or str(err)


def _interrupt_behind(
    exc: BaseException, before: BaseException | None = None
) -> interrupts.Interrupted | None:
    """The interrupt ``exc`` hides, if it is a writer's error raised while the interrupt was
    on its way out (zipfile's close() on a half-written member: "Can't close the ZIP
    file..."), or ``exc`` itself if it is one; not ``before``, the exception being handled
    when the writer began (a checkpoint saved after Ctrl-C on a full disk must say so)."""
    seen = 0
    while exc is not None and exc is not before and seen < 20:
        if isinstance(exc, interrupts.Interrupted):
            return exc
        exc, seen = exc.__context__, seen + 1
    return None


#: How many folders are being built (:func:`atomic_folder`'s block): the files written into
#: one are put in place in it, not where the user sees them, and their install says so.
_BUILDING = [0]


def _install_label() -> str:
    """The label of a file's install: "install" when the file is an output itself, "staged"
    when it goes into a folder being built (a signal there leaves nothing in place)."""
    return "staged" if _BUILDING[0] else "install"


def write_marker(folder: str | os.PathLike, made_for: str) -> None:
    """Mark ``folder`` as made by facefinder for ``made_for`` (e.g. ``"fit"``), and record
    the files it holds, which facefinder just wrote there: each name with its size and
    modification time (as :func:`note_written` records a file), so that --overwrite replaces
    the folder only while they are as they were left (a copy that keeps the times, ``cp -a``,
    included), never with a file put there or changed since."""
    from facefinder_cli import __version__

    folder = os.fspath(folder)
    files = {}
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name != MARKER and (seen := _kept_as(e.path)) is not None:
                files[e.name] = seen
    made = {"made_by": "facefinder", "made_for": made_for, "version": __version__}
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump({**made, "files": dict(sorted(files.items()))}, f)
        f.write("\n")


def _note_in_marker(p: str, new: str | None = None) -> None:
    """Keep the record of the folder facefinder made around the file ``p`` true as ``p`` is
    replaced in place (a checkpoint saved again): with ``new`` (the finished temporary about to
    be renamed to ``p``), before the rename, that ``p`` may be either file; after it, without
    ``new``, that it is the one now there. (Killed between, or this second note failing, the
    record still knows the file there.) Nothing when the folder's marker records no files."""
    folder, name = os.path.split(os.path.abspath(p))
    made = _read_marker(folder)
    if made is None or not isinstance(made.get("files"), dict):
        return
    replacing = made.get("replacing")
    replacing = dict(replacing) if isinstance(replacing, dict) else {}
    files = dict(made["files"])
    if new is not None:
        if (seen := _kept_as(p)) is not None and seen == replacing.get(name):
            files[name] = seen  # (the note after the last replacement failed: a full disk)
        replacing[name] = _kept_as(new)
    else:
        replacing.pop(name, None)
        files[name] = _kept_as(p)
    made = {**made, "files": files, "replacing": replacing}
    if not replacing:
        del made["replacing"]
    with atomic_write(os.path.join(folder, MARKER), "w", overwrite=True) as f:
        json.dump(made, f)
        f.write("\n")


@contextmanager
def atomic_folder(
    path: str | os.PathLike,
    overwrite: bool = False,
    *,
    keep: Sequence[str | os.PathLike] = (),
    kind: FolderKind | None = None,
) -> Iterator[str]:
    """Build a folder so that it appears complete or not at all.

    Yields the path of a hidden temporary sibling folder to fill; when the ``with`` block ends
    without error the marker file is added (naming ``kind``'s purpose) and the folder is renamed to
    ``path``, replacing an existing one only as :func:`check_folder_target` allows. On any
    exception, interrupts included, the temporary folder is removed and ``path`` is as it was.
    """
    p = os.fspath(path)
    target = p.rstrip("/" + os.sep) or p
    exists = check_folder_target(p, overwrite, keep=keep, kind=kind)
    checked = folder_identity(target)
    parent, name = _split(target)
    tmp = ""
    try:
        with interrupts.deferred():  # the temporary is created and known, or neither
            tmp = tempfile.mkdtemp(prefix=f".{_stem(name)}.", suffix=_TMP, dir=parent)
        _BUILDING[0] += 1
        try:
            yield tmp
        finally:
            _BUILDING[0] -= 1
        if kind is not None:
            write_marker(tmp, kind.made_for)
        os.chmod(tmp, 0o777 & ~_umask())
        with interrupts.deferred("install"):
            # as checked when the block began? (a folder of the user's moved there, or a file
            # of theirs put in it, while the block ran, is kept, never replaced)
            if check_folder_target(p, overwrite, keep=keep, kind=kind) != exists or (
                folder_identity(target) != checked
            ):
                raise InputError(
                    f"{p}: another folder came there while facefinder worked; it is kept, "
                    "and the new output was not written"
                )
            _install_folder(tmp, os.path.join(parent, name), exists)
    except BaseException as exc:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise InputError(f"{p}: cannot write ({_why_not(exc)})") from None
        if isinstance(exc, InputError) and tmp and tmp in str(exc):  # a file inside it:
            shown = os.path.join(target, "")  # name it as it would have been
            raise InputError(str(exc).replace(os.path.join(tmp, ""), shown)) from None
        raise


def folder_identity(path: str, follow: bool = False) -> tuple[int, int] | None:
    """(device, inode) of the folder ``path`` (a link followed only with ``follow``), or
    None."""
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _install_folder(tmp: str, target: str, exists: bool) -> None:
    """Rename the finished folder ``tmp`` to ``target``, moving an existing ``target`` aside
    first and removing it once the new one is in place (put back if the rename fails)."""
    if not exists:
        if os.path.lexists(target) and os.listdir(target):
            raise InputError(f"{target}: appeared while writing it; refusing to replace it")
        os.rename(tmp, target)
        return
    backup = tmp + ".old"
    os.rename(target, backup)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# claims: one writer per output


def _temporaries(parent: str, name: str) -> list[str]:
    """The temporaries :func:`atomic_write` and :func:`atomic_folder` make for ``name``."""
    pattern = re.compile(
        r"\." + re.escape(_stem(name)) + r"\.[a-z0-9_]{8}" + re.escape(_TMP) + r"(?:\.old)?"
    )
    try:
        return [os.path.join(parent, e) for e in os.listdir(parent) if pattern.fullmatch(e)]
    except OSError:
        return []


_LOCK_TEXT = re.compile(rb"\d*\n?")


def _lock_path(target: str) -> tuple[str, str]:
    parent, name = _split(target)
    return parent, os.path.join(parent, f".{_stem(name)}.lock")


class _Lock:
    """An exclusive ``flock`` on ``.NAME.lock`` beside an output, held until :meth:`release`.

    The lock file holds the holder's pid and nothing else; a file of that name that holds
    anything else, has other links or is not a regular file is a user's, and is never
    written, truncated or removed."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.parent, self.path = _lock_path(target)
        self.fd: int | None = None

    def _foreign(self) -> InputError:
        return InputError(
            f"{self.target}: cannot lock it: {self.path} exists and is not a facefinder lock "
            "file (move it away)"
        )

    def acquire(self) -> bool:
        """Take the lock; False when it cannot be made here (a missing or read-only folder, or
        a file where the folder should be: the output checks then say so). InputError when
        another process holds it, or when the lock file's name is taken by a file of the
        user's."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as err:
                if err.errno in (
                    errno.ENOENT,
                    errno.ENOTDIR,
                    errno.EACCES,
                    errno.EPERM,
                    errno.EROFS,
                ):
                    return False
                raise self._foreign() from None  # a link, a folder...
            try:
                st = os.fstat(fd)
                head = os.pread(fd, 64, 0)
            except OSError:
                os.close(fd)
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not _LOCK_TEXT.fullmatch(head):
                os.close(fd)
                raise self._foreign()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                pid = f" (pid {int(head)})" if head.strip().isdigit() else ""
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise InputError(
                        f"{self.target}: another facefinder process{pid} is writing it; wait "
                        "for it to finish, or choose another output"
                    ) from None
                return False  # no locks on this file system
            try:  # the lock file may have been removed by its last holder as we opened it
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            with suppress(OSError):
                os.ftruncate(fd, 0)  # ours: a lock file, as checked above
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return True
        return False

    def release(self) -> None:
        if self.fd is None:
            return
        with suppress(OSError):  # while still holding it (see ``acquire``), and only ours
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path, follow_symlinks=False)):
                os.unlink(self.path)
        with suppress(OSError):
            os.close(self.fd)
        self.fd = None


def _held_folder(target: str) -> str | None:
    """The folder around ``target`` that another facefinder process is writing (a run folder
    being fitted, say), if any: writing inside it would be lost, or spoil that run."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(target)) or ".")
    while True:
        up = os.path.dirname(folder)
        if up == folder:
            return None
        path = os.path.join(up, f".{_stem(os.path.basename(folder))}.lock")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return folder
            finally:
                os.close(fd)
        folder = up


def _clean_up(parent: str, name: str) -> list[str]:
    """Deal with the temporaries a killed run left for ``name`` (the caller holds its lock, so
    no live process owns them): an earlier output moved aside (``.old``) goes back in place
    if nothing took it; the rest is removed. Returns what was done, for a note."""
    target = os.path.join(parent, name)
    done = []
    for t in sorted(_temporaries(parent, name), key=lambda t: not t.endswith(".old")):
        if t.endswith(".old") and not os.path.lexists(target):
            with suppress(OSError):
                os.rename(t, target)
                done.append(f"restored {name} from {os.path.basename(t)}")
                continue
        if os.path.isdir(t) and not os.path.islink(t):
            shutil.rmtree(t, ignore_errors=True)
        else:
            with suppress(OSError):
                os.unlink(t)
        done.append(f"removed {os.path.basename(t)}")
    if os.path.isdir(target) and not os.path.islink(target):  # a file being replaced inside
        inner = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(_TMP))  # (a checkpoint, say)
        with suppress(OSError):
            for e in os.listdir(target):
                path = os.path.join(target, e)
                if inner.fullmatch(e) and os.path.isfile(path) and not os.path.islink(path):
                    os.unlink(path)
                    done.append(f"removed {name}/{e}")
    return done


def _put_back_half_installed(held: list[tuple[str, str]]) -> list[str]:
    """Outputs written together (:func:`atomic_files`) by a run killed while it put them in
    place: if it left one of them missing and moved aside, it had not placed them all, so
    every one it had moved aside goes back, over the new one placed beside it. (Otherwise
    :func:`_clean_up` would put back the missing one alone: a new stack beside the old truth
    or names file.) Returns what was done."""
    aside = {}
    for parent, name in held:
        for t in sorted(_temporaries(parent, name)):
            if t.endswith(".old"):
                aside[(parent, name)] = t
    if not any(not os.path.lexists(os.path.join(*key)) for key in aside):
        return []
    done = []
    for (parent, name), t in aside.items():
        target = os.path.join(parent, name)
        if _kind(target) == "file":  # the new half: the old one goes back over it
            with suppress(OSError):
                os.replace(t, target)
                done.append(f"restored {name} from {os.path.basename(t)} with the rest of its set")
    return done


@contextmanager
def claim(*paths: str | os.PathLike | None) -> Iterator[list[str]]:
    """Hold the outputs ``paths`` for this process until the block ends.

    A second facefinder process that claims one of them meanwhile gets an
    :class:`InputError` at once, naming it; so does one whose output lies inside a folder
    that another process holds. While held, the temporaries that an earlier, killed process
    left for those outputs cannot belong to a live process: an output it had moved aside is
    put back, the rest removed, and the block receives what was done (for a note). Standard
    output, descriptors, devices and None are not claimed; where locks are not available
    (Windows, some network file systems) the block runs without them."""
    with ExitStack() as stack:
        done: list[str] = []
        locked: list[tuple[str, str]] = []  # (real folder, name) of each output locked
        for path in paths:
            if path is None:
                continue
            p = os.fspath(path)
            target = p.rstrip("/" + os.sep) or p
            if target == "" or fcntl is None or _kind(target) not in ("missing", "file", "folder"):
                continue
            held = _held_folder(target)
            if held is not None:
                raise InputError(
                    f"{p}: is inside {held}, which another facefinder process is writing; wait "
                    "for it to finish, or choose another output"
                )
            lock = _Lock(target)
            if not lock.acquire():
                continue
            stack.callback(lock.release)
            locked.append((lock.parent, _split(target)[1]))
        done += _put_back_half_installed(locked)
        for parent, name in locked:
            done += _clean_up(parent, name)
            # and those of its record (:func:`note_written`), if a kill came while it was written
            done += _clean_up(parent, os.path.basename(_record_path(os.path.join(parent, name))))
        yield done


class Batch:
    """Files being written together by :func:`atomic_files`: ``files`` to write to, in the
    order of the paths; ``installed`` once all of them are in place."""

    def __init__(self) -> None:
        self.files: list[IO[bytes]] = []
        self.installed = False


@contextmanager
def atomic_files(
    paths: Sequence[str | os.PathLike],
    *,
    overwrite: bool = False,
    remove: Sequence[str | os.PathLike] = (),
    record: str | None = None,
) -> Iterator[Batch]:
    """Write files that belong together (a stack and its names file, a stack and its truth)
    so that all of them appear, complete, or none changes; ``remove`` names files that must
    go when they do (an old names file that would name the new stack wrongly).

    Each file is written to a temporary beside it. When the block ends, existing targets are
    moved aside, every temporary is renamed into place and what was moved aside is deleted;
    if a rename fails, everything moved goes back. Devices, FIFOs and standard output are
    written into directly (they cannot be replaced). ``overwrite=False`` refuses a target that
    exists by then. ``record``: what the files were made for, noted beside the first
    (:func:`note_written`) in the same uninterrupted step as their install, so that
    --overwrite knows them again."""
    batch = Batch()
    staged: list[tuple[str, str, int]] = []  # (temporary, target, permissions)
    opened: list[IO[bytes]] = []  # the temporaries' files
    with ExitStack() as streams:
        try:
            for path in paths:
                p = os.fspath(path)
                kind = _kind(p)
                if kind in (_STDOUT, "descriptor", "device"):
                    batch.files.append(streams.enter_context(atomic_write(p, "wb")))
                    continue
                _refuse_unless_file(p, kind)
                with interrupts.deferred():  # the temporary is created and known, or neither
                    fd, tmp, perms = _temp_beside(p)
                    staged.append((tmp, p, perms))
                batch.files.append(streams.enter_context(open(fd, "wb")))
                opened.append(batch.files[-1])
            yield batch
            for f in batch.files:
                f.flush()
                with suppress(OSError, ValueError):
                    os.fsync(f.fileno())
            with interrupts.deferred(_install_label()):
                _install_all(staged, [os.fspath(r) for r in remove], overwrite)
                batch.installed = True
                if record is not None and len(staged) == len(paths):  # (none into a device)
                    note_written([p for _, p, _ in staged], record)
        except BaseException as exc:
            for f in opened:  # closed here: a flush failing as they close would hide exc
                with suppress(OSError, ValueError):
                    f.close()
            for tmp, _, _ in staged:
                with suppress(OSError):
                    os.unlink(tmp)
            if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
                where = staged[0][1] if staged else os.fspath(paths[0])
                raise InputError(f"{where}: cannot write ({_why_not(exc)})") from None
            raise


def _install_all(staged: list[tuple[str, str, int]], remove: list[str], overwrite) -> None:
    moved: list[tuple[str, str]] = []  # (where it went, where it was)
    placed: list[str] = []
    try:
        for tmp, _, perms in staged:
            os.chmod(tmp, perms)
        for tmp, p, _ in staged:
            _still_as_checked(p)
            kind = _kind(p)
            if kind == "missing":
                continue
            if overwrite is False:
                raise InputError(f"{p}: file exists; pass ", OVERWRITE, " to replace it")
            if kind != "file":
                raise InputError(f"{p}: is no longer a regular file; refusing to replace it")
            os.rename(p, tmp + ".old")
            moved.append((tmp + ".old", p))
        for r in remove:
            if _kind(r) == "file":
                parent, name = _split(r)
                aside = os.path.join(parent, f".{_stem(name)}.{secrets.token_hex(4)}{_TMP}.old")
                os.rename(r, aside)
                moved.append((aside, r))
        for tmp, p, _ in staged:
            os.rename(tmp, p)
            placed.append(p)
    except BaseException:
        for p in placed:
            with suppress(OSError):
                os.unlink(p)
        for aside, p in moved:
            with suppress(OSError):
                os.rename(aside, p)
        raise
    # the files removed first: killed between, what is left aside is of files all placed anew
    for aside, _ in reversed(moved):
        with suppress(OSError):
            os.unlink(aside)
