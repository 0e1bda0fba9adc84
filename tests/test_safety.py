"""Issue 11 replayed: nothing a user owns is destroyed, nothing wrong ends with exit 0.

Every test names the item (1..17) of issue 11 it replays. Signals, pipes, closed streams,
locales and races run in real subprocesses, with real signals timed by a marker file that a
wrapper creates when the command reaches the phase under test (never by a fixed sleep). Plain
bad-input checks run in-process through Click's runner.

The subprocesses import the checkout this file sits in (PYTHONPATH is set to it), so the same
file can be run against another worktree of the project.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from facefinder_cli import engine, runs
from facefinder_cli.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
FF = [sys.executable, "-m", "facefinder_cli"]
SIZE = (12, 16)
FACE = "8x8"
N_IMAGES = 30
FIT = ["--face-size", FACE, "--max-iter", "3", "--no-plots"]  # (matplotlib: 0.4 s a process)
NEVER = ("Traceback", "unexpected", "please report")
PATIENCE = 60  # seconds any subprocess may take before the test gives up on it


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def cli(*args: object):
    """``facefinder ARGS`` in-process (stdout and stderr apart); any exception but SystemExit
    is a traceback for users, so it fails the test."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(*result.exc_info))
        pytest.fail(f"facefinder {' '.join(map(str, args))} raised:\n{tb}\n{result.stderr}")
    return result


def text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "backslashreplace")


def lines_of(err: bytes | str | None) -> list[str]:
    return [line for line in text(err).splitlines() if line.strip()]


def refused(code: int, out, err, *needles: str, codes=(1, 2), absent=()) -> str:
    """A refusal: exit status in ``codes``, nothing on stdout, exactly one line on stderr that
    starts with ``Error: ``, names every needle and none of ``absent``; returns the line."""
    err = text(err)
    assert code in codes, f"exit {code}, expected one of {codes}; stderr:\n{err}"
    assert text(out) == "", f"stdout not empty: {text(out)[:300]!r}"
    lines = lines_of(err)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("Error: "), line
    for word in NEVER:
        assert word not in err, f"{word!r} in {err!r}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    for word in absent:
        assert word not in line, f"{word!r} in {line!r}"
    return line


def refused_result(result, *needles: str, codes=(1, 2), absent=()) -> str:
    return refused(
        result.exit_code, result.stdout, result.stderr, *needles, codes=codes, absent=absent
    )


def interrupted(code: int, err, expected: int) -> str:
    """A command stopped by a signal: ``expected`` (130/143) and one line saying so."""
    err = text(err)
    assert code == expected, f"exit {code}, expected {expected}; stderr:\n{err}"
    assert "Aborted" not in err, err
    for word in NEVER:
        assert word not in err, f"{word!r} in {err!r}"
    lines = lines_of(err)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "interrupted" in lines[0].lower(), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` (hidden ones too, links not followed): the bytes of regular
    files, the target of links, the file type of anything else (never opened: FIFOs block)."""
    snap: dict[str, object] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, folder)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                snap[rel] = Path(p).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                snap[rel] = "-> " + os.readlink(p)
            else:
                snap[rel] = stat.S_IFMT(st.st_mode)
    return snap


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders (``.*.tmp*``) anywhere under ``folder``."""
    return [
        rel
        for rel in snapshot(folder)
        if any(part.startswith(".") and ".tmp" in part for part in Path(rel).parts)
    ]


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def write_tiffs(folder: Path, n: int, shape: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        tifffile.imwrite(folder / f"im{k:02d}.tif", (rng.random(shape) * 255).astype(np.float32))


# --- subprocesses ----------------------------------------------------------------------------

WRAPPER = r"""
import importlib, os, sys, time

def _hold(marker, go):
    open(marker, "w").close()
    for _ in range(600):
        if go and os.path.exists(go):
            return
        time.sleep(0.1)

def _patch(target, marker, go, when):
    modname, attr = target.rsplit(".", 1)
    module = importlib.import_module(modname)
    real = getattr(module, attr)
    calls = []

    def patched(*args, **kwargs):
        calls.append(1)
        if when == "em":  # engine.fit: mark once the first EM iteration has reported
            given = kwargs.get("callback")

            def callback(progress):
                if given is not None:
                    given(progress)
                if not os.path.exists(marker):
                    open(marker, "w").close()

            kwargs["callback"] = callback
            return real(*args, **kwargs)
        if when == "after-first":  # the real work, then hold (first call only)
            out = real(*args, **kwargs)
            if len(calls) == 1:
                _hold(marker, go)
            return out
        if len(calls) == 1:  # hold, then the real work
            _hold(marker, go)
        return real(*args, **kwargs)

    setattr(module, attr, patched)

for _spec in PATCHES:
    _patch(*_spec)
from facefinder_cli.cli import main
main(ARGV)
"""


def wrapped(argv: list[object], *patches: tuple[str, str, str | None, str]) -> list[str]:
    """The command line of ``facefinder ARGV`` with ``patches``: (module.function, marker file,
    go file or None, when) where ``when`` is "first" (hold in the first call, before the real
    work), "after-first" (after the real work of the first call) or "em" (for
    engine.fit: create the marker once EM has reported its first iteration, no hold). A hold
    creates the marker, then sleeps until the go file exists (60 s at most)."""
    code = f"PATCHES = {list(patches)!r}\nARGV = {[str(a) for a in argv]!r}\n" + WRAPPER
    return [sys.executable, "-c", code]


@pytest.fixture
def spawn():
    """Popen with the checkout's PYTHONPATH; whatever is still running at the end is killed."""
    started: list[subprocess.Popen] = []

    def start(cmd: list[object], cwd: Path, env=None, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env or ENV, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(cmd: list[object], cwd: Path, env=None, timeout=PATIENCE, **kw):
    kw.setdefault("capture_output", True)
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env or ENV, timeout=timeout, check=False, **kw
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = PATIENCE) -> None:
    """Poll until ``path`` exists (the phase marker of ``proc``)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} before {path.name} appeared:\n{text(err)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = PATIENCE) -> tuple[bytes, bytes]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s; stderr:\n{text(err)}")


# ---------------------------------------------------------------------------------------------
# shared data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """30 TIFF images of 12x16 with an 8x8 face (imgs/, with truth.npz), and a fit of them."""
    d = tmp_path_factory.mktemp("data")
    gen = ["generate", "-n", N_IMAGES, "--face-size", FACE, "--size", "12x16", "--noise", "20"]
    r = CliRunner().invoke(main, [str(a) for a in gen + ["-o", d / "imgs", "-q"]])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(main, [str(a) for a in ["fit", d / "imgs", *FIT, "-o", d / "run"]])
    assert r.exit_code == 0, r.stderr
    names = sorted(p.name for p in (d / "imgs").glob("*.tif"))
    assert len(names) == N_IMAGES
    return SimpleNamespace(dir=d, imgs=d / "imgs", run=d / "run", names=names)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> SimpleNamespace:
    """A checkpoint made by a real SIGINT: ``fit a.npy`` is held just after its first checkpoint
    save, then interrupted. ``pristine/`` keeps the run folder for the tests to copy; ``a.npy``
    is the input it records (tests that change it must restore it)."""
    d = tmp_path_factory.mktemp("checkpointed")
    rng = np.random.default_rng(4)
    np.save(d / "a.npy", rng.normal(100, 30, (20, *SIZE)))
    args = ["fit", "a.npy", "--face-size", FACE, "-o", "run", "--max-iter", "50", "--tol", "-inf"]
    cmd = wrapped(
        args + ["--checkpoint-every", "1", "-qq"],
        ("facefinder_cli.runs.save_checkpoint", "saved", "go", "after-first"),
    )
    proc = subprocess.Popen(cmd, cwd=d, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(d / "saved", proc)
        proc.send_signal(signal.SIGINT)
        (d / "go").touch()
        _, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, text(err)
    assert (d / "run" / "checkpoint.npz").is_file(), os.listdir(d / "run")
    shutil.copytree(d / "run", d / "pristine")
    return SimpleNamespace(dir=d, input=d / "a.npy", pristine=d / "pristine")


# ---------------------------------------------------------------------------------------------
# 1. --overwrite never replaces a device, FIFO or socket
# ---------------------------------------------------------------------------------------------


def _char_device(path: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is


def _socket(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()  # the socket file stays


SPECIAL_FILES = {"char-device": (_char_device, stat.S_ISCHR), "socket": (_socket, stat.S_ISSOCK)}


@pytest.mark.parametrize("kind", list(SPECIAL_FILES))
def test_01_overwrite_keeps_a_device_or_socket(data, tmp_path, kind):
    """Item 1: ``detect -o special --overwrite`` where special is a character device (mknod c 1
    3) or a socket: it stays one; detect writes into it, or refuses in one line."""
    make, is_kind = SPECIAL_FILES[kind]
    make("special")
    r = cli("detect", data.run, data.imgs, "-o", "special", "--overwrite")
    assert is_kind(os.lstat("special").st_mode), f"the {kind} was replaced"
    if r.exit_code != 0 or kind == "socket":
        refused_result(r, "special")
    assert leftovers(tmp_path) == []


def test_01_overwrite_keeps_a_fifo(data, tmp_path, spawn):
    """Item 1: ``detect -o fifo --overwrite`` with fifo a named pipe (a reader is open)."""
    os.mkfifo("fifo")
    reader = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)  # so that opening to write never blocks
    try:
        proc = spawn([*FF, "detect", data.run, data.imgs, "-o", "fifo", "--overwrite"], tmp_path)
        out, err = finish(proc)
        got = b""
        while True:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat("fifo").st_mode), "the FIFO was replaced"
    if proc.returncode == 0:
        assert got.startswith(b"image"), got[:100]
    else:
        refused(proc.returncode, out, err, "fifo")
    assert leftovers(tmp_path) == []


def test_01_writing_into_dev_null_works(data):
    """Item 1: ``-o /dev/null`` (no --overwrite) writes into the device, which stays one."""
    r = cli("detect", data.run, data.imgs, "-o", "/dev/null", "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


# ---------------------------------------------------------------------------------------------
# 2. --draw DIR --overwrite never deletes a user's folder, or the inputs
# ---------------------------------------------------------------------------------------------


def test_02_draw_overwrite_keeps_a_folder_of_the_users(data, tmp_path):
    """Item 2: ``detect --draw mine --overwrite`` where mine/ holds thesis.txt."""
    Path("mine").mkdir()
    Path("mine/thesis.txt").write_text("four years of work\n")
    before = snapshot(tmp_path)
    r = cli("detect", data.run, data.imgs, "--draw", "mine", "--overwrite", "-o", "pos.csv")
    refused_result(r, "mine")
    assert snapshot(tmp_path) == before


def test_02_draw_overwrite_keeps_the_inputs_of_a_pattern(data, tmp_path):
    """Item 2: ``detect RUN 'small_c*y/*.tif' --draw small_copy --overwrite``."""
    shutil.copytree(data.imgs, "small_copy")
    before = snapshot(tmp_path)
    r = cli("detect", data.run, "small_c*y/*.tif", "--draw", "small_copy", "--overwrite")
    refused_result(r, "small_copy")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# 3. pack never writes through a symbolic link over an input
# ---------------------------------------------------------------------------------------------


def test_03_pack_names_file_never_written_through_a_link_to_an_input(data, tmp_path):
    """Item 3: ``ln -s srcimgs/im01.tif pk.names.txt; pack srcimgs pk.npy --overwrite``."""
    shutil.copytree(data.imgs, "srcimgs")
    first = data.names[0]
    os.symlink(f"srcimgs/{first}", "pk.names.txt")
    inputs = snapshot(tmp_path / "srcimgs")
    r = cli("pack", "srcimgs", "pk.npy", "--overwrite")
    assert snapshot(tmp_path / "srcimgs") == inputs, "an input was changed"
    if r.exit_code != 0:
        refused_result(r, codes=(1,))
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 4. --resume checks its input; the library checks the method
# ---------------------------------------------------------------------------------------------


RESUME_CASES = {
    # case: (how a.npy changes, what the one line names)
    "fewer images": (lambda X: X[:12], [r"\b20\b", r"\b12\b"]),
    "other size": (lambda X: X[:, :10, :14], [r"12\s*[x×,]\s*16", r"10\s*[x×,]\s*14"]),
    "other values": (lambda X: X + 1.0, [r"differ|chang|not the same|fingerprint|modified"]),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_04_resume_refuses_another_input(checkpointed, tmp_path, case):
    """Item 4: interrupt a fit of a.npy, change a.npy, ``fit --resume``: refused in one line
    naming what changed; the checkpoint is untouched and nothing else is written."""
    change, patterns = RESUME_CASES[case]
    shutil.copytree(checkpointed.pristine, "run")
    before = snapshot(tmp_path / "run")
    original = checkpointed.input.read_bytes()
    try:
        np.save(checkpointed.input, change(np.load(checkpointed.input)))
        r = cli("fit", "--resume", "run")
    finally:
        checkpointed.input.write_bytes(original)
    line = refused_result(r, codes=(1,), absent=("broadcast",))
    for pattern in patterns:
        assert re.search(pattern, line, re.I), f"{pattern!r} not in {line!r}"
    assert snapshot(tmp_path / "run") == before  # checkpoint.npz unchanged, no history.csv


def test_04_library_refuses_a_checkpoint_of_another_method():
    """Item 4: a checkpoint of a soft-EM fit does not resume under method="hard"."""
    X = np.random.default_rng(1).normal(100, 30, (20, *SIZE))
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", engine.ConvergenceWarning)
        engine.fit(
            X,
            (8, 8),
            method="soft",
            max_iter=3,
            seed=0,
            callback=lambda p: seen.append(p.checkpoint),
        )
        with pytest.raises(ValueError, match="method"):
            engine.fit(X, (8, 8), method="hard", max_iter=3, seed=0, resume=seen[1])


# ---------------------------------------------------------------------------------------------
# 5. two fits never both claim one output
# ---------------------------------------------------------------------------------------------

B_PATIENCE = 10  # seconds: a fit B that has not ended by then is taken to be waiting for A


@pytest.mark.parametrize(
    "where, extra",
    [
        ("facefinder_cli.engine.fit", []),
        ("facefinder_cli.runs.save_checkpoint", ["--checkpoint-every", "1"]),
    ],
    ids=["held-in-fit", "held-in-checkpoint-save"],
)
def test_05_a_second_fit_on_the_same_output_fails_or_waits(data, tmp_path, spawn, where, extra):
    """Item 5: fit A is held mid-way (in the engine, or saving its first checkpoint); fit B on
    the same ``-o out`` fails in one line naming out, or waits. A's run is the one kept."""
    a_args = ["fit", data.imgs, "--face-size", FACE, "--max-iter", "3", "-o", "out", *extra]
    a = spawn(wrapped(a_args + ["-qq"], (where, "held", "go", "first")), tmp_path)
    wait_for(tmp_path / "held", a)
    b_args = ["fit", data.imgs, "--face-size", FACE, "--max-iter", "2", "-o", "out", *extra]
    b = spawn([*FF, *b_args, "-qq"], tmp_path)
    try:
        b_out, b_err = b.communicate(timeout=B_PATIENCE)
        b_waited = False
    except subprocess.TimeoutExpired:
        b_waited = True
    (tmp_path / "go").touch()
    a_out, a_err = finish(a)
    if b_waited:
        b_out, b_err = finish(b)
    assert not (a.returncode == 0 and b.returncode == 0), "both fits claimed out"
    if not b_waited:
        refused(b.returncode, b_out, b_err, "out", codes=(1,))
    assert a.returncode == 0, text(a_err)
    with np.load(tmp_path / "out" / "result.npz") as z:
        assert int(z["n_iter"]) == 3  # A's run (B stops after 2 iterations)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 6. detect's CSV is quoted
# ---------------------------------------------------------------------------------------------


def test_06_detect_csv_round_trips_odd_names(data, tmp_path):
    """Item 6: names with a comma, a quote and a newline come back exactly from csv.reader."""
    names = ["a,b.tif", 'quote".tif', "new\nline.tif", "cr\rx.tif", "plain.tif"]
    for src, name in zip(data.names, names):
        Path("odd").mkdir(exist_ok=True)
        shutil.copy(data.imgs / src, Path("odd") / name)
    r = cli("detect", data.run, "odd", "-o", "pos.csv")
    assert r.exit_code == 0, r.stderr
    rows = csv_rows(Path("pos.csv"))
    assert rows[0][0] == "image"
    assert len(rows) == 1 + len(names), rows
    assert sorted(row[0] for row in rows[1:]) == sorted(names)
    assert all(len(row) == len(rows[0]) for row in rows)


# ---------------------------------------------------------------------------------------------
# 7. ** patterns and symbolic link loops
# ---------------------------------------------------------------------------------------------


def _tree_with_loops(root: Path, data, loops: int) -> list[str]:
    """tree/ with 4 images, tree/sub/ with 4 more, and ``loops`` links back up the tree."""
    names = []
    for k, src in enumerate(data.names[:8]):
        folder = root / ("tree" if k < 4 else "tree/sub")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(data.imgs / src, folder / f"t{k}.tif")
        names.append(f"t{k}.tif")
    os.symlink("..", root / "tree/sub/loop")
    if loops > 1:
        os.symlink(".", root / "tree/sub/again")
    return names


@pytest.mark.parametrize("loops", [1, 2])
@pytest.mark.parametrize("command", ["fit", "pack", "detect"])
def test_07_double_star_pattern_with_link_loops(data, tmp_path, command, loops):
    """Item 7: ``'tree/**/*.tif'`` through symbolic link loops neither hangs nor repeats an
    image: one row (or line) per real image."""
    names = _tree_with_loops(tmp_path, data, loops)
    pattern = "tree/**/*.tif"
    cmd = {
        "fit": [*FF, "fit", pattern, *FIT, "-o", "run", "-qq"],
        "pack": [*FF, "pack", pattern, "pk.npy", "-qq"],
        "detect": [*FF, "detect", data.run, pattern, "-o", "pos.csv", "-qq"],
    }[command]
    try:
        r = run(cmd, tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} of {pattern} with {loops} link loop(s) still ran after 60 s")
    assert r.returncode == 0, text(r.stderr)
    if command == "pack":
        got = Path("pk.names.txt").read_text(encoding="utf-8").splitlines()
        assert np.load("pk.npy", mmap_mode="r").shape[0] == len(names)
    else:
        table = Path("run/positions.csv") if command == "fit" else Path("pos.csv")
        got = [row[0] for row in csv_rows(table)[1:]]
    assert sorted(os.path.basename(n) for n in got) == sorted(names)


# ---------------------------------------------------------------------------------------------
# 8. Ctrl-C and SIGTERM outside the EM loop
# ---------------------------------------------------------------------------------------------

SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
SIGNAL_IDS = ["SIGINT", "SIGTERM"]


@pytest.mark.parametrize("sig, code", SIGNALS, ids=SIGNAL_IDS)
def test_08_signal_during_the_final_write_leaves_a_resumable_fit(data, tmp_path, spawn, sig, code):
    """Item 8: a signal while fit writes its run folder: 130/143, one line, no "Aborted.", no
    temporary folder left, and the output can be resumed to a complete run (or is complete)."""
    args = ["fit", data.imgs, *FIT, "-o", "out", "-qq"]
    proc = spawn(
        wrapped(args, ("facefinder_cli.runs.save_run", "writing", "go", "first")), tmp_path
    )
    wait_for(tmp_path / "writing", proc)
    proc.send_signal(sig)
    (tmp_path / "go").touch()
    _, err = finish(proc)
    interrupted(proc.returncode, err, code)
    assert leftovers(tmp_path) == [], "a temporary file or folder was left behind"
    assert (tmp_path / "out").is_dir(), "the fit was lost: no checkpoint, no run"
    if (tmp_path / "out" / "checkpoint.npz").exists():
        r = cli("fit", "--resume", "out", "-qq")
        assert r.exit_code == 0, r.stderr
    with np.load(tmp_path / "out" / "result.npz") as z:
        assert {"face", "background", "positions"} <= set(z.files)
    assert leftovers(tmp_path) == []


def test_08_second_sigint_while_saving_the_checkpoint(data, tmp_path, spawn):
    """Item 8: Ctrl-C during EM, then Ctrl-C again while that checkpoint is being saved: still
    130, and checkpoint.npz exists and loads."""
    args = ["fit", data.imgs, "--face-size", FACE, "--max-iter", "100000", "--tol", "-inf"]
    cmd = wrapped(
        args + ["-o", "out", "-qq"],
        ("facefinder_cli.engine.fit", "em", None, "em"),
        ("facefinder_cli.runs.save_checkpoint", "saving", "go", "first"),
    )
    proc = spawn(cmd, tmp_path)
    wait_for(tmp_path / "em", proc)
    proc.send_signal(signal.SIGINT)
    wait_for(tmp_path / "saving", proc)
    proc.send_signal(signal.SIGINT)
    (tmp_path / "go").touch()
    _, err = finish(proc)
    assert proc.returncode == 130, text(err)
    assert "Traceback" not in text(err) and "Aborted" not in text(err), text(err)
    assert (tmp_path / "out" / "checkpoint.npz").is_file(), "the checkpoint was lost"
    runs.load_checkpoint(tmp_path / "out")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig, code", SIGNALS, ids=SIGNAL_IDS)
def test_08_signal_while_fit_reads_a_folder(tmp_path, spawn, sig, code):
    """Item 8: a signal while fit reads its folder of images: 130/143, one line, no output."""
    Path("pngs").mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, SIZE, dtype=np.uint8)).save(f"pngs/p{k}.png")
    args = ["fit", "pngs", *FIT, "-o", "out", "-qq"]
    proc = spawn(wrapped(args, ("PIL.Image.open", "reading", "go", "first")), tmp_path)
    wait_for(tmp_path / "reading", proc)
    proc.send_signal(sig)
    (tmp_path / "go").touch()
    _, err = finish(proc)
    interrupted(proc.returncode, err, code)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig, code", SIGNALS, ids=SIGNAL_IDS)
@pytest.mark.parametrize("command", ["detect", "generate"])
def test_08_signal_in_detect_and_generate(data, tmp_path, spawn, command, sig, code):
    """Item 8: a signal while detect locates the face, or while generate writes its images:
    130/143, one line, no "Aborted.", nothing written."""
    if command == "detect":
        args = ["detect", data.run, data.imgs, "-o", "pos.csv", "--draw", "boxed", "-qq"]
        where = "facefinder_cli.engine.detect"
    else:
        args = ["generate", "-n", "5", "--face-size", FACE, "--size", "12x16", "-o", "gen", "-qq"]
        where = "facefinder_cli.images.write_image_files"
    proc = spawn(wrapped(args, (where, "busy", "go", "first")), tmp_path)
    wait_for(tmp_path / "busy", proc)
    proc.send_signal(sig)
    (tmp_path / "go").touch()
    _, err = finish(proc)
    interrupted(proc.returncode, err, code)
    assert sorted(os.listdir(tmp_path)) == ["busy", "go"], os.listdir(tmp_path)


STARTUP = r"""
import os, sys, time

class SlowNumpy:  # start-up held at the first import of numpy
    held = False

    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not self.held:
            self.held = True
            open("starting", "w").close()
            for _ in range(600):
                if os.path.exists("go"):
                    break
                time.sleep(0.1)
        return None

sys.meta_path.insert(0, SlowNumpy())
import runpy
sys.argv = ["facefinder", "generate", "-n", "5", "--size", "12x16", "--face-size", "8x8",
            "-o", "gen"]
runpy.run_module("facefinder_cli", run_name="__main__", alter_sys=True)
"""


def test_08_sigint_during_start_up(tmp_path, spawn):
    """Item 8: Ctrl-C while the command starts (importing numpy): no traceback, 130 (or killed
    by SIGINT before Python's handler is in place)."""
    proc = spawn([sys.executable, "-c", STARTUP], tmp_path)
    wait_for(tmp_path / "starting", proc)
    proc.send_signal(signal.SIGINT)
    (tmp_path / "go").touch()
    out, err = finish(proc)
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, text(err))
    assert "Traceback" not in text(err), text(err)
    assert len(lines_of(err)) <= 1, text(err)
    assert not (tmp_path / "gen").exists()


# ---------------------------------------------------------------------------------------------
# 9. names that are not UTF-8, and Unicode names under LC_ALL=C
# ---------------------------------------------------------------------------------------------


def test_09_a_name_that_is_not_utf8(data, tmp_path):
    """Item 9: a folder holding ``bad\\xff\\xfe.tif``: fit, pack, and fit of the pack all work
    and write a (escaped) row for it."""
    Path("bad").mkdir()
    for src in data.names[:9]:
        shutil.copy(data.imgs / src, Path("bad") / src)
    shutil.copy(os.fsencode(data.imgs / data.names[9]), b"bad/bad\xff\xfe.tif")
    n = 10
    r = run([*FF, "fit", "bad", *FIT, "-o", "run", "-qq"], tmp_path)
    assert r.returncode == 0, text(r.stderr)
    names = [row[0] for row in csv_rows(tmp_path / "run/positions.csv")[1:]]
    assert len(names) == n
    odd = [name for name in names if name.startswith("bad")]
    assert len(odd) == 1 and "ff" in odd[0].lower(), names
    r = run([*FF, "pack", "bad", "pk.npy", "-qq"], tmp_path)
    assert r.returncode == 0, text(r.stderr)
    r = run([*FF, "fit", "pk.npy", *FIT, "-o", "run2", "-qq"], tmp_path)
    assert r.returncode == 0, text(r.stderr)
    assert len(csv_rows(tmp_path / "run2/positions.csv")) == 1 + n


def _same_name(expected: str, got: str) -> bool:
    """The name itself, or its UTF-8 bytes backslash-escaped (an ASCII locale's stated
    escaping)."""
    escaped = expected.encode().decode("ascii", "backslashreplace")
    return got == expected or got.lower() == escaped.lower()


@pytest.mark.parametrize("utf8_mode", ["unset", "0"], ids=["PYTHONUTF8-unset", "PYTHONUTF8=0"])
def test_09_unicode_names_under_the_c_locale(data, tmp_path, utf8_mode):
    """Item 9: ``é.tif`` and ``日本.tif`` under LC_ALL=C: fit, pack and detect exit 0 and write
    every name. (Python 3.7+ turns on its UTF-8 mode in the C locale unless PYTHONUTF8=0.)"""
    env = {
        k: v
        for k, v in ENV.items()
        if k not in ("PYTHONUTF8", "PYTHONIOENCODING", "LANG", "LANGUAGE")
        and not k.startswith("LC_")
    }
    env["LC_ALL"] = "C"
    if utf8_mode != "unset":
        env["PYTHONUTF8"] = utf8_mode
    Path("uni").mkdir()
    names = ["é.tif", "日本.tif", "plain.tif", "zz.tif"]
    for src, name in zip(data.names, names):
        shutil.copy(data.imgs / src, os.path.join(b"uni", name.encode()))
    steps = {
        "fit": ([*FF, "fit", "uni", *FIT, "-o", "run", "-qq"], "run/positions.csv"),
        "detect": ([*FF, "detect", data.run, "uni", "-o", "pos.csv", "-qq"], "pos.csv"),
        "pack": ([*FF, "pack", "uni", "pk.npy", "-qq"], "pk.names.txt"),
    }
    for step, (cmd, table) in steps.items():
        r = run(cmd, tmp_path, env=env)
        assert r.returncode == 0, f"{step}: {text(r.stderr)}"
        if step == "pack":
            got = (tmp_path / table).read_text(encoding="utf-8").splitlines()
        else:
            got = [row[0] for row in csv_rows(tmp_path / table)[1:]]
        assert len(got) == len(names), (step, got)
        for name in names:
            assert any(_same_name(name, g) for g in got), f"{step}: {name!r} not in {got!r}"


# ---------------------------------------------------------------------------------------------
# 10, 12, 13, 16. refusals in one line (in-process)
# ---------------------------------------------------------------------------------------------


def _model(data, name: str, change: Callable[[dict], None]) -> str:
    with np.load(data.run / "result.npz") as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(name, **arrays)
    return name


def _truth(data, name: str, change: Callable[[dict], None]) -> str:
    with np.load(data.imgs / "truth.npz") as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(name, **arrays)
    return name


def _fortran_truncated() -> str:
    np.save("fort.npy", np.asfortranarray(np.random.default_rng(0).random((20, *SIZE))))
    whole = Path("fort.npy").read_bytes()
    Path("fort.npy").write_bytes(whole[: len(whole) // 2])
    return "fort.npy"


def _small_images() -> str:
    write_tiffs(Path("small"), 4, shape=(6, 7))
    return "small"


@dataclass(frozen=True)
class Refusal:
    make: Callable[[SimpleNamespace], list[object]]  # prepares files in the cwd; the arguments
    needles: tuple[str, ...] = ()
    codes: tuple[int, ...] = (1, 2)
    absent: tuple[str, ...] = ()
    before_em: bool = False  # refused before engine.fit is called


REFUSALS = {
    "10-memory-limit-400-digits": Refusal(
        lambda d: ["fit", d.imgs, *FIT, "-o", "out", "--memory-limit", "1" * 400],
        ("--memory-limit",),
        codes=(2,),
    ),
    "12-model-without-positions": Refusal(
        lambda d: ["detect", _model(d, "m.npz", lambda z: z.pop("positions")), d.imgs],
        ("m.npz", "positions"),
    ),
    "12-model-without-log_likelihood": Refusal(
        lambda d: ["detect", _model(d, "m.npz", lambda z: z.pop("log_likelihood")), d.imgs],
        ("m.npz", "log_likelihood"),
    ),
    "12-model-with-vector-noise_std": Refusal(
        lambda d: [
            "detect",
            _model(d, "m.npz", lambda z: z.update(noise_std=np.array([1.0, 2.0]))),
            d.imgs,
        ],
        ("m.npz", "noise_std"),
    ),
    "12-samples-growth-inf": Refusal(
        lambda d: ["fit", d.imgs, *FIT, "-o", "out", "--method", "mc", "--samples-growth", "inf"],
        ("--samples-growth",),
        before_em=True,
    ),
    "12-truth-prior-of-wrong-shape": Refusal(
        lambda d: [
            "fit",
            d.imgs,
            *FIT,
            "-o",
            "out",
            "--truth",
            _truth(d, "t.npz", lambda z: z.update(prior=np.full((3, 3), 1 / 9))),
        ],
        ("t.npz", "prior"),
        before_em=True,
    ),
    "13-truth-positions-1d": Refusal(
        lambda d: [
            "fit",
            d.imgs,
            *FIT,
            "-o",
            "out",
            "--truth",
            _truth(d, "t.npz", lambda z: z.update(positions=z["positions"][:, 0])),
        ],
        ("t.npz", "positions"),
        absent=("broadcast",),
        before_em=True,
    ),
    "13-truncated-fortran-npy": Refusal(
        lambda d: ["fit", _fortran_truncated(), *FIT, "-o", "out"],
        ("fort.npy",),
        absent=("out of memory",),
    ),
    "13-generate-out-of-memory": Refusal(
        lambda d: ["generate", "-n", "1", "--size", "1000000x1000000", "-o", "gen"],
        absent=("--chunk-size",),
    ),
    "13-init-from-other-image-size": Refusal(
        lambda d: ["fit", _small_images(), "--init-from", d.run, "-o", "out"],
        ("--init-from",),
        absent=("--face-size",),
        before_em=True,
    ),
    "13-empty-output-name": Refusal(
        lambda d: ["fit", d.imgs, *FIT, "-o", ""],
        before_em=True,
    ),
    "16-generate-noise-inf": Refusal(
        lambda d: [
            "generate",
            "-n",
            "5",
            "--size",
            "12x16",
            "--face-size",
            FACE,
            "--noise",
            "inf",
            "-o",
            "gen",
        ],
        ("--noise",),
        codes=(2,),
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_in_one_line(data, tmp_path, monkeypatch, name):
    """Items 10, 12, 13, 16 (the number that starts each case): bad input is refused in one
    line, exit 1 or 2, nothing written; where the table says so, before any EM work."""
    case = REFUSALS[name]
    args = case.make(data)
    before = snapshot(tmp_path)
    calls = []
    real_fit = engine.fit

    def counting_fit(*a, **kw):
        calls.append(1)
        return real_fit(*a, **kw)

    monkeypatch.setattr(engine, "fit", counting_fit)
    r = cli(*args)
    refused_result(r, *case.needles, codes=case.codes, absent=case.absent)
    assert snapshot(tmp_path) == before, "something was written"
    if case.before_em:
        assert calls == [], "refused only after the fit had started"


def test_12_checkpoint_whose_settings_lack_a_key(checkpointed, tmp_path):
    """Item 12: a checkpoint whose settings JSON lacks max_iter: one line naming the
    checkpoint and the key."""
    shutil.copytree(checkpointed.pristine, "run")
    with np.load("run/checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    settings = json.loads(str(arrays["settings"]))
    del settings["max_iter"]
    arrays["settings"] = json.dumps(settings, sort_keys=True)
    np.savez("run/checkpoint.npz", **arrays)
    before = snapshot(tmp_path)
    r = cli("fit", "--resume", "run")
    refused_result(r, "checkpoint", "max_iter", codes=(1,))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("scale", [1e160, 1e-200], ids=["1e160", "1e-200"])
def test_12_extreme_pixel_values(tmp_path, scale):
    """Item 12: a float64 stack of values near 1e160, or near 1e-200: refused in one line (no
    OverflowError, no "math domain error"), nothing written."""
    rng = np.random.default_rng(0)
    np.save("x.npy", rng.random((20, *SIZE)) * scale)
    r = run([*FF, "fit", "x.npy", *FIT, "-o", "out"], tmp_path)
    refused(r.returncode, r.stdout, r.stderr, absent=("math domain", "Overflow", "Warning"))
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


# ---------------------------------------------------------------------------------------------
# 11. closed streams, broken pipes, full disks
# ---------------------------------------------------------------------------------------------


def _closing(fd: int, cmd: list[object]) -> list[str]:
    """``cmd`` run by sh with file descriptor ``fd`` closed (``>&-`` or ``2>&-``)."""
    return ["sh", "-c", f'exec "$@" {fd}>&-', "sh", *map(str, cmd)]


@pytest.mark.parametrize("command", ["fit", "detect", "plot-elbo"])
def test_11_stdout_closed(data, tmp_path, command):
    """Item 11: ``fit -o - >&-``, ``detect >&-``, ``plot-elbo -o - >&-``: no traceback, no
    "unexpected"; exit 0, or 1 with one line."""
    cmd = {
        "fit": [*FF, "fit", data.imgs, *FIT, "-o", "-", "-qq"],
        "detect": [*FF, "detect", data.run, data.imgs, "-qq"],
        "plot-elbo": [*FF, "plot-elbo", data.run, "-o", "-", "-qq"],
    }[command]
    r = run(_closing(1, cmd), tmp_path, stdout=None, stderr=subprocess.PIPE, capture_output=False)
    err = text(r.stderr)
    for word in (*NEVER, "AttributeError"):
        assert word not in err, err
    assert r.returncode in (0, 1), (r.returncode, err)
    if r.returncode == 1:
        assert len(lines_of(err)) == 1 and lines_of(err)[0].startswith("Error: "), err
    assert leftovers(tmp_path) == []


def test_11_stderr_closed(data, tmp_path):
    """Item 11: ``fit -o run 2>&-`` works: exit 0, a complete run, nothing on stdout."""
    cmd = _closing(2, [*FF, "fit", data.imgs, *FIT, "-o", "run"])
    r = run(cmd, tmp_path, stdout=subprocess.PIPE, stderr=None, capture_output=False)
    assert r.returncode == 0
    assert r.stdout == b""
    with np.load(tmp_path / "run/result.npz") as z:
        assert {"face", "background", "positions", "elbo"} <= set(z.files)
    assert (tmp_path / "run/positions.csv").is_file()


def _small_pipe() -> tuple[int, int]:
    """A pipe of one page, so that a reader closing it early is seen by the writer."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    return r, w


@pytest.fixture(scope="module")
def long_stack(tmp_path_factory) -> Path:
    """600 images of 12x16 in a .npy: detect's CSV of them (~15 kB) outgrows a pipe page."""
    path = tmp_path_factory.mktemp("long") / "long.npy"
    np.save(path, np.random.default_rng(2).normal(100, 30, (600, *SIZE)).astype(np.float32))
    return path


BROKEN_PIPE_OK = (0, 141, -signal.SIGPIPE)


def test_11_fit_to_a_closed_pipe(data, tmp_path, spawn):
    """Item 11: ``fit -o - | true`` (the reader gone before the PNG is written): a quiet exit,
    0 or 141, nothing on stderr."""
    r, w = _small_pipe()
    os.close(r)
    proc = spawn([*FF, "fit", data.imgs, *FIT, "-o", "-", "-qq"], tmp_path, stdout=w)
    os.close(w)
    _, err = finish(proc)
    assert proc.returncode in BROKEN_PIPE_OK, (proc.returncode, text(err))
    assert text(err) == "", text(err)


def test_11_messages_into_a_pipe_whose_reader_went_away(data, tmp_path, spawn):
    """``fit -o run 2>&1 | head -1``: the messages' reader leaves; the fit goes on as with
    ``2>&-`` (exit 0, a complete run). With ``--json`` the data's reader is gone too: 141."""
    for name, extra, code in (("run", [], 0), ("json", ["--json"], 141)):
        r, w = _small_pipe()
        os.close(r)  # the reader is gone before the first message
        proc = spawn([*FF, "fit", data.imgs, *FIT, "-o", name, *extra], tmp_path, stdout=w,
                     stderr=w)  # fmt: skip
        os.close(w)
        finish(proc)
        assert proc.returncode == code, (name, proc.returncode)
        with np.load(tmp_path / name / "result.npz") as z:
            assert {"face", "background", "positions", "elbo"} <= set(z.files)
        assert (tmp_path / name / "positions.csv").is_file()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["fit", "--help"]])
def test_11_help_and_version_into_a_closed_pipe(tmp_path, args):
    """``facefinder --help | true`` with the reader gone first: 141 quietly, as for data
    (Click itself ended such a command with 1)."""
    r, w = os.pipe()
    os.close(r)
    done = run([*FF, *args], tmp_path, stdout=w, stderr=subprocess.PIPE, capture_output=False)
    os.close(w)
    assert done.returncode == 141 and text(done.stderr) == "", (done.returncode, done.stderr)


def test_11_messages_to_a_full_device_or_a_stalled_reader_are_dropped(data, tmp_path):
    """Standard error that cannot take messages (``2>/dev/full``; a full non-blocking pipe
    whose reader stalls) only loses them: writes never fail, a stall costs one wait."""
    from facefinder_cli.outputs import _Stderr

    full = os.open("/dev/full", os.O_WRONLY) if os.path.exists("/dev/full") else None
    if full is not None:
        try:
            err = _Stderr(full)
            assert err.write(b"a message\n") == 10 and err.write(b"more\n") == 5
        finally:
            os.close(full)
        with open("/dev/full", "wb") as device:
            cmd = [*FF, "fit", data.imgs, *FIT, "-o", "run", "-v"]
            r = run(cmd, tmp_path, stdout=subprocess.PIPE, stderr=device, capture_output=False)
        assert r.returncode == 0
        with np.load(tmp_path / "run/result.npz") as z:
            assert "face" in z.files
    r, w = _small_pipe()
    try:
        os.set_blocking(w, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"x" * 4096)
        err = _Stderr(w)
        err.BLOCKED_WAIT = 0.2
        t = time.monotonic()
        assert err.write(b"dropped\n") == 8  # after one wait
        assert err.write(b"dropped too\n") == 12  # at once: stalled
        assert time.monotonic() - t < 2
        os.read(r, 65536)  # the reader comes back
        assert err.write(b"through\n") == 8 and not err._stalled
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("draw", [False, True], ids=["csv", "csv-and-draw"])
def test_11_detect_into_head(data, tmp_path, spawn, long_stack, draw):
    """Item 11: ``detect ... | head -1``: the reader takes 10 bytes and leaves; detect exits
    quietly (0 or 141) and, with --draw, still writes every boxed PNG."""
    r, w = _small_pipe()
    extra = ["--draw", "boxed", "--zoom", "1"] if draw else []
    proc = spawn([*FF, "detect", data.run, long_stack, *extra, "-qq"], tmp_path, stdout=w)
    os.close(w)
    with open(r, "rb") as reader:
        first = reader.read(10)
    _, err = finish(proc)
    assert first.startswith(b"image"), first
    assert proc.returncode in BROKEN_PIPE_OK, (proc.returncode, text(err))
    assert text(err) == "", text(err)
    if draw:
        assert len(list((tmp_path / "boxed").glob("*.png"))) == 600
    assert leftovers(tmp_path) == []


DEV_FULL = {
    # case: (arguments, stdout redirected to /dev/full?)
    "detect -o /dev/full": (["detect", "{run}", "{imgs}", "-o", "/dev/full"], False),
    "plot-elbo -o /dev/full": (["plot-elbo", "{run}", "-o", "/dev/full"], False),
    "fit -o - >/dev/full": (["fit", "{imgs}", *FIT, "-o", "-"], True),
    "plot-elbo -o - >/dev/full": (["plot-elbo", "{run}", "-o", "-"], True),
    # Click's own output: a traceback before (a review found it)
    "--version >/dev/full": (["--version"], True),
    "fit --help >/dev/full": (["fit", "--help"], True),
}


@pytest.mark.parametrize("case", list(DEV_FULL))
def test_11_writing_to_dev_full(data, tmp_path, case):
    """Item 11: writing to /dev/full fails in one line saying the disk is full. (Never with
    --overwrite here: today's code would replace /dev/full by a regular file.) plot-elbo -o
    /dev/full may instead refuse the name, which has no .png/.svg/.pdf extension, in one line."""
    if not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("no /dev/full character device")
    args, redirect = DEV_FULL[case]
    args = [str(a).format(run=data.run, imgs=data.imgs) for a in args]
    with open("/dev/full", "wb") as full:
        streams = {"stdout": full, "stderr": subprocess.PIPE, "capture_output": False}
        r = run([*FF, *args, "-qq"], tmp_path, **(streams if redirect else {}))
    line = refused(r.returncode, r.stdout or b"", r.stderr)
    if case == "plot-elbo -o /dev/full" and r.returncode == 2:
        assert "--out" in line or "extension" in line, line
    else:
        assert r.returncode == 1 and "No space left" in line, line
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert leftovers(tmp_path) == []


def test_11_json_to_dev_full_says_the_run_was_written(data, tmp_path):
    """``fit --json >/dev/full`` writes its run folder, then cannot print the summary: exit 1,
    and the one line says where the run is, so that nobody fits again for nothing."""
    if not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("no /dev/full character device")
    with open("/dev/full", "wb") as full:
        streams = {"stdout": full, "stderr": subprocess.PIPE, "capture_output": False}
        r = run([*FF, "fit", data.imgs, *FIT, "-o", "run", "--json", "-qq"], tmp_path, **streams)
    line = refused(r.returncode, b"", r.stderr)
    assert r.returncode == 1 and "No space left" in line, line
    assert line.endswith("the run was written to run all the same"), line
    with np.load(tmp_path / "run/result.npz") as z:
        assert "face" in z.files


# ---------------------------------------------------------------------------------------------
# 14. huge model values
# ---------------------------------------------------------------------------------------------


def test_14_model_with_huge_values(data, tmp_path):
    """Item 14: a model whose face is 1e200: refused in one line, or probabilities that are
    all finite; no RuntimeWarning or ComplexWarning on stderr either way."""
    _model(data, "huge.npz", lambda z: z.update(face=np.full_like(z["face"], 1e200)))
    r = run([*FF, "detect", "huge.npz", data.imgs, "-o", "pos.csv"], tmp_path)
    err = text(r.stderr)
    assert "Warning" not in err, err
    if r.returncode == 0:
        rows = csv_rows(tmp_path / "pos.csv")
        assert len(rows) == 1 + N_IMAGES
        p = np.array([float(row[-1]) for row in rows[1:]])
        assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all(), p
    else:
        refused(r.returncode, r.stdout, r.stderr, "huge.npz", codes=(1,))
        assert not (tmp_path / "pos.csv").exists()


# ---------------------------------------------------------------------------------------------
# 15. --restarts 1000000000
# ---------------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def test_15_a_billion_restarts_start_in_flat_memory(data, tmp_path, spawn):
    """Item 15: ``--restarts 1000000000`` runs restart after restart without building every
    seed up front: resident memory stays below 300 MB (today: +75 MB a second)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc")
    args = ["fit", data.imgs, "--face-size", FACE, "--max-iter", "1", "--restarts", "1000000000"]
    proc = spawn(
        wrapped(args + ["-o", "out", "-qq"], ("facefinder_cli.engine.fit", "em", None, "em")),
        tmp_path,
    )
    limit, peak = 300.0, 0.0
    deadline = time.monotonic() + 20
    started = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        peak = max(peak, _rss_mb(proc.pid))
        assert peak < limit, f"resident memory reached {peak:.0f} MB"
        if started is None and (tmp_path / "em").exists():
            started = time.monotonic()
        if started is not None and time.monotonic() - started > 1:
            break  # restarts run, memory flat for a second: enough
        time.sleep(0.05)
    if proc.poll() is None:
        assert started is not None, f"no restart began within 20 s (peak {peak:.0f} MB)"
        proc.kill()
        proc.communicate()
    else:  # refused outright: fine, if in one line
        out, err = proc.communicate()
        refused(proc.returncode, out, err)


# ---------------------------------------------------------------------------------------------
# 17. pack of a .npy stack reads it image by image
# ---------------------------------------------------------------------------------------------

PEAK_RSS = r"""
import atexit, sys

def report():
    with open("/proc/self/status") as f:
        peak = next(line for line in f if line.startswith("VmHWM:")).split()[1]
    with open(sys.argv[1], "w") as out:
        out.write(peak)

atexit.register(report)
from facefinder_cli.cli import main
main(sys.argv[2:])
"""


def test_17_pack_of_a_npy_stack_streams(tmp_path):
    """Item 17: packing a 105 MB float32 .npy stack: the peak resident memory of pack grows by
    well under the stack's size as float64 (210 MB) over packing a 2-image stack (measured
    with VmHWM inside the process: ru_maxrss of a child counts the parent's pages)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc")
    rng = np.random.default_rng(0)
    big = rng.random((400, 256, 256), dtype=np.float32) * 255
    np.save("big.npy", big)
    np.save("tiny.npy", big[:2])
    f64 = big.size * 8
    del big
    peaks = {}
    for name in ("tiny", "big"):
        cmd = [
            sys.executable,
            "-c",
            PEAK_RSS,
            f"{name}.rss",
            "pack",
            f"{name}.npy",
            f"{name}-out.npy",
            "-qq",
        ]
        r = run(cmd, tmp_path)
        assert r.returncode == 0, text(r.stderr)
        peaks[name] = int((tmp_path / f"{name}.rss").read_text()) * 1024
    grown = peaks["big"] - peaks["tiny"]
    assert grown < 0.45 * f64, (
        f"pack's peak memory grew by {grown / 2**20:.0f} MB over the {peaks['tiny'] / 2**20:.0f}"
        f" MB of packing 2 images; the stack is {f64 / 2**20:.0f} MB as float64"
    )
    assert np.load("big-out.npy", mmap_mode="r").shape == (400, 256, 256)
