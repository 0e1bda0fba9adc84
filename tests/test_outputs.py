"""The safe-output rules (facefinder_cli.outputs), image names (facefinder_cli.names) and the
interrupt handling every command shares (facefinder_cli.interrupts), tested directly."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facefinder_cli import interrupts, names, outputs
from facefinder_cli.errors import InputError
from facefinder_cli.images import glob_paths, input_paths


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def write(path: str, text: str = "x") -> None:
    Path(path).write_text(text)


# --- files --------------------------------------------------------------------------------------


def test_a_symbolic_link_is_never_written_through():
    write("precious.txt", "mine")
    os.symlink("precious.txt", "out.csv")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="^out.csv: is a symbolic link"):
            outputs.check_file_target("out.csv", overwrite)
        with pytest.raises(InputError, match="^out.csv: is a symbolic link"):
            with outputs.atomic_write("out.csv", overwrite=overwrite) as f:
                f.write(b"new")
    assert Path("precious.txt").read_text() == "mine" and os.path.islink("out.csv")
    assert sorted(os.listdir()) == ["out.csv", "precious.txt"]


def test_a_fifo_is_written_into_and_stays_a_fifo():
    os.mkfifo("pipe")
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys; print(open('pipe').read())"],
        stdout=subprocess.PIPE,
        text=True,
    )
    outputs.check_file_target("pipe", overwrite=False)  # no --overwrite needed, as with >
    with outputs.atomic_write("pipe", "w") as f:
        f.write("through the pipe")
    assert reader.communicate(timeout=30)[0].strip() == "through the pipe"
    assert stat.S_ISFIFO(os.lstat("pipe").st_mode) and os.listdir() == ["pipe"]


def test_a_character_device_is_written_into_and_stays_one():
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod("mynull", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with outputs.atomic_write("mynull", overwrite=True) as f:
        f.write(b"gone")
    assert stat.S_ISCHR(os.lstat("mynull").st_mode) and os.listdir() == ["mynull"]


def test_a_socket_is_refused():
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind("sock")
    try:
        with pytest.raises(InputError, match="^sock: is a socket; refusing to write to it$"):
            outputs.check_file_target("sock", overwrite=True)
    finally:
        s.close()


def test_without_overwrite_a_file_that_appears_meanwhile_is_not_replaced():
    with pytest.raises(InputError, match="^f.txt: file exists; pass overwrite=True"):
        with outputs.atomic_write("f.txt", "w", overwrite=False) as f:
            f.write("ours")
            write("f.txt", "theirs")  # another program, while we write
    assert Path("f.txt").read_text() == "theirs" and os.listdir() == ["f.txt"]


def test_an_input_is_never_replaced_even_through_another_name():
    os.mkdir("imgs")
    write("imgs/a.png")
    os.link("imgs/a.png", "hard.png")
    os.symlink("imgs", "alias")
    inside = "lies in a folder this command reads its input from"
    for target, keep, why in (
        ("imgs/a.png", "imgs", inside),
        ("alias/a.png", "imgs", inside),
        ("imgs/a.png", "alias", inside),
        ("hard.png", "imgs/a.png", "is an input of this command"),
    ):
        with pytest.raises(InputError, match=why):
            outputs.check_file_target(target, True, keep=[keep])


# --- folders ------------------------------------------------------------------------------------


FIT = outputs.FolderKind("fit")
DRAW = outputs.FolderKind("detect --draw")


def test_a_folder_is_replaced_only_when_made_for_the_same_purpose():
    os.mkdir("user")
    write("user/thesis.txt", "years of work")
    with pytest.raises(InputError, match="not made by facefinder"):
        outputs.check_folder_target("user", True, kind=FIT)
    with outputs.atomic_folder("run", kind=FIT) as tmp:
        write(os.path.join(tmp, "a.txt"))
    assert sorted(os.listdir("run")) == [".facefinder", "a.txt"]
    with pytest.raises(InputError, match="not made by facefinder"):  # another purpose
        outputs.check_folder_target("run", True, kind=DRAW)
    with pytest.raises(InputError, match="pass overwrite=True"):
        outputs.check_folder_target("run", False, kind=FIT)
    with outputs.atomic_folder("run", True, kind=FIT) as tmp:
        write(os.path.join(tmp, "b.txt"))
    assert sorted(os.listdir("run")) == [".facefinder", "b.txt"]
    assert sorted(os.listdir()) == ["run", "user"]  # no backup, no temporary left


def test_a_folder_is_replaced_only_with_the_files_its_marker_records():
    """The marker records each file written into the folder (size, modification time): a file
    put there since, under any name, or one of the tool's edited since, is the user's, and the
    folder is kept; a copy that keeps the times (cp -a) is still the tool's."""
    import json
    import shutil

    with outputs.atomic_folder("run", kind=FIT) as tmp:
        write(os.path.join(tmp, "a.png"), "drawn")
        write(os.path.join(tmp, "b.csv"), "rows")
    made = json.loads(Path("run/.facefinder").read_text())
    assert made["made_for"] == "fit" and sorted(made["files"]) == ["a.png", "b.csv"]
    outputs.check_folder_target("run", True, kind=FIT)
    write("run/holiday.png", "mine")
    with pytest.raises(InputError, match=r"^run: holds files facefinder does not write there "
                       r"\(holiday.png\); .* overwrite=True \(move it away first\)$"):  # fmt: skip
        outputs.check_folder_target("run", True, kind=FIT)
    os.remove("run/holiday.png")
    with open("run/b.csv", "a") as f:
        f.write("my edit")
    write("run/a.png", "a photo of mine")
    with pytest.raises(InputError, match=r"^run: a.png, b.csv changed since facefinder wrote "
                       r"them; .* overwrite=True: move them elsewhere first"):  # fmt: skip
        with outputs.atomic_folder("run", True, kind=FIT) as tmp:
            pass
    assert Path("run/a.png").read_text() == "a photo of mine"
    assert sorted(os.listdir()) == ["run"]
    with outputs.atomic_folder("fresh", kind=FIT) as tmp:
        write(os.path.join(tmp, "a.png"), "drawn")
    shutil.copytree("fresh", "copy")  # as cp -a: the times kept
    outputs.check_folder_target("copy", True, kind=FIT)
    shutil.rmtree("copy")
    shutil.copytree("fresh", "copy", copy_function=shutil.copyfile)  # the times not kept
    os.utime("copy/a.png", ns=(0, 10**18))
    with pytest.raises(InputError, match="a.png changed since facefinder wrote it"):
        outputs.check_folder_target("copy", True, kind=FIT)


def test_a_folder_whose_marker_records_no_files_is_judged_by_its_names_as_before():
    """Markers of versions before the record: such a folder is judged as it was then, by the
    names of its files (refusing every one would refuse every earlier run, and the
    interrupted fits saved beside them: a review); a name facefinder does not write there is
    refused still."""
    import json

    import numpy as np

    kind = outputs.FolderKind(
        "fit", legacy=("checkpoint.npz",), expected=lambda n: n.endswith((".npz", ".csv"))
    )
    os.mkdir("old")
    Path("old/.facefinder").write_text(json.dumps({"made_by": "facefinder", "made_for": "fit"}))
    np.savez("old/checkpoint.npz", version="0.1.0")
    write("old/history.csv", "rows")
    assert outputs.check_folder_target("old", True, kind=kind)
    write("old/notes.txt", "mine")
    with pytest.raises(InputError, match=r"^old: holds files facefinder does not write there"):
        outputs.check_folder_target("old", True, kind=kind)


def test_a_file_replaced_in_a_marked_folder_stays_recorded(monkeypatch):
    """A file written in place into a folder the tool made (a checkpoint saved again) is noted
    in its marker; killed between its rename and that note, the record knows it still."""
    with outputs.atomic_folder("run", kind=FIT) as tmp:
        write(os.path.join(tmp, "checkpoint.npz"), "first")
    with outputs.atomic_write(
        "run/checkpoint.npz", "w", overwrite=True, in_marked_folder=True
    ) as f:
        f.write("second, longer")
    outputs.check_folder_target("run", True, kind=FIT)
    real = outputs._note_in_marker

    def killed_after_rename(p, new=None):
        if new is None:  # the file is in place, its record not yet updated
            raise KeyboardInterrupt
        real(p, new)

    monkeypatch.setattr(outputs, "_note_in_marker", killed_after_rename)
    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic_write(
            "run/checkpoint.npz", "w", overwrite=True, in_marked_folder=True
        ) as f:
            f.write("third, longer still")
    assert Path("run/checkpoint.npz").read_text() == "third, longer still"
    outputs.check_folder_target("run", True, kind=FIT)
    monkeypatch.setattr(outputs, "_note_in_marker", real)
    with outputs.atomic_write("run/checkpoint.npz", "w", overwrite=True) as f:
        f.write("not noted")  # (as a user's edit would be)
    with pytest.raises(InputError, match="checkpoint.npz changed since"):
        outputs.check_folder_target("run", True, kind=FIT)
    outputs.take_over("run/checkpoint.npz")  # a file the command carries on from (--resume)
    outputs.check_folder_target("run", True, kind=FIT)


def test_a_folder_holding_an_input_is_never_replaced():
    with outputs.atomic_folder("copy", kind=DRAW) as tmp:
        write(os.path.join(tmp, "img1.tif"))
    with pytest.raises(InputError, match="holds an input of this command"):
        outputs.check_folder_target("copy", True, keep=["copy/img1.tif"], kind=DRAW)


def test_an_interrupt_while_filling_a_folder_leaves_nothing():
    with pytest.raises(interrupts.Interrupted):
        with outputs.atomic_folder("out", kind=FIT) as tmp:
            write(os.path.join(tmp, "half.txt"))
            raise interrupts.Interrupted(signal.SIGINT)
    assert os.listdir() == []


# --- claims -------------------------------------------------------------------------------------

HOLD = textwrap.dedent(
    """
    import sys, time
    from facefinder_cli import outputs
    with outputs.claim("out"):
        open("held", "w").close()
        while not __import__("os").path.exists("release"):
            time.sleep(0.02)
    """
)


@contextmanager
def another_process_holding_out():
    """Another process that holds the claim on ``out`` for the duration of the block."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD])
    try:
        while not os.path.exists("held"):
            assert holder.poll() is None
            time.sleep(0.01)
        yield holder
    finally:
        write("release")
        holder.wait(timeout=30)
    assert holder.returncode == 0


def test_a_second_process_cannot_claim_a_held_output():
    with another_process_holding_out() as holder:
        with pytest.raises(
            InputError, match=rf"^out: another facefinder process \(pid {holder.pid}\)"
        ):
            with outputs.claim("out"):
                pass
    with outputs.claim("out"):  # free again; the lock file goes with the claim
        assert ".out.lock" in os.listdir()
    assert sorted(os.listdir()) == ["held", "release"]


def test_a_claim_removes_what_a_killed_run_left_and_only_that():
    os.mkdir(".out.ab12cd_9.facefinder.tmp")  # a run folder being built when it was killed
    write(".out.ab12cd_9.facefinder.tmp/result.npz")
    write(".out.zz99yy00.facefinder.tmp")
    write(".out.20261130.tmp")  # a user's, named like the temporaries of other tools
    write(".out.mine.txt")  # not a temporary of ours
    write(".other.ab12cd_9.facefinder.tmp")  # another output's
    with outputs.claim("out") as done:
        assert sorted(done) == [
            "removed .out.ab12cd_9.facefinder.tmp",
            "removed .out.zz99yy00.facefinder.tmp",
        ]
    assert sorted(os.listdir()) == sorted(
        [".out.20261130.tmp", ".other.ab12cd_9.facefinder.tmp", ".out.mine.txt"]
    )


def test_a_claim_removes_the_temporary_of_a_record_a_kill_interrupted():
    """A kill while the record of a stack was written (``note_written``) left its temporary:
    the next claim of the stack removes it, and not another output's."""
    write("..s.npy.facefinder.ab12cd34.facefinder.tmp", "half a record")
    write("..t.npy.facefinder.ab12cd34.facefinder.tmp", "another output's")
    with outputs.claim("s.npy") as done:
        assert done == ["removed ..s.npy.facefinder.ab12cd34.facefinder.tmp"]
    assert os.listdir() == ["..t.npy.facefinder.ab12cd34.facefinder.tmp"]


def test_a_claim_puts_back_an_output_that_a_killed_replacement_moved_aside():
    """Killed between moving the old output aside and renaming the new one into place: the
    next claim restores the old one (the new one's completeness is not known)."""
    os.mkdir(".run.k1ll3d_0.facefinder.tmp.old")
    write(".run.k1ll3d_0.facefinder.tmp.old/result.npz", "old run")
    os.mkdir(".run.k1ll3d_0.facefinder.tmp")
    with outputs.claim("run") as done:
        assert done[0] == "restored run from .run.k1ll3d_0.facefinder.tmp.old"
    assert sorted(os.listdir()) == ["run"]
    assert Path("run/result.npz").read_text() == "old run"


def test_a_claim_puts_a_half_installed_pair_back_whole():
    """Killed while it put a stack and its truth in place (the new stack placed, the truth
    not yet): the next claim of both puts the old pair back whole. It used to put back the
    old truth alone, beside the new stack, and fit --truth then measured against the wrong
    one. Killed after both were placed (both moved-aside files still there), it rolls back
    too: a set is old or new whole."""
    write("s.npy", "new stack")
    write(".s.npy.ab12cd34.facefinder.tmp.old", "old stack")
    write(".s.truth.npz.ef56ab78.facefinder.tmp", "new truth, not yet placed")
    write(".s.truth.npz.ef56ab78.facefinder.tmp.old", "old truth")
    with outputs.claim("s.npy", "s.truth.npz") as done:
        assert "restored s.npy from .s.npy.ab12cd34.facefinder.tmp.old with the rest" in done[0]
    assert sorted(os.listdir()) == ["s.npy", "s.truth.npz"]
    assert Path("s.npy").read_text() == "old stack"
    assert Path("s.truth.npz").read_text() == "old truth"
    # all placed, the moved-aside files deleted but the stack's: the new pair stays
    write(".s.npy.ab12cd34.facefinder.tmp.old", "old stack again")
    write("s.npy", "new stack")
    with outputs.claim("s.npy", "s.truth.npz") as done:
        assert done == ["removed .s.npy.ab12cd34.facefinder.tmp.old"]
    assert Path("s.npy").read_text() == "new stack"


def test_the_lock_file_of_a_user_is_never_written_nor_removed():
    write("thesis.txt", "years of work")
    os.link("thesis.txt", ".o.csv.lock")  # the lock's name, taken by a hard link
    with pytest.raises(InputError, match="is not a facefinder lock file"):
        with outputs.claim("o.csv"):
            pass
    assert Path("thesis.txt").read_text() == "years of work"
    os.unlink(".o.csv.lock")
    write(".p.csv.lock", "my notes")
    with pytest.raises(InputError, match="is not a facefinder lock file"):
        with outputs.claim("p.csv"):
            pass
    os.mkdir(".q.csv.lock")
    with pytest.raises(InputError, match="is not a facefinder lock file"):
        with outputs.claim("q.csv"):
            pass
    assert Path(".p.csv.lock").read_text() == "my notes" and os.path.isdir(".q.csv.lock")


def test_the_lock_is_where_the_kernel_puts_the_output():
    """``deep/../x`` through a link ``deep -> real/sub`` is ``real/x``, not ``./x``."""
    os.makedirs("real/sub")
    os.symlink("real/sub", "deep")
    with outputs.claim("real/x"):
        with pytest.raises(InputError, match="another facefinder process"):
            with outputs.claim("deep/../x"):
                pass


def test_an_output_inside_a_folder_being_written_is_refused():
    with another_process_holding_out():
        os.mkdir("out")
        with pytest.raises(
            InputError, match=r"^out/checkpoint.npz: is inside .*out, which another"
        ):
            with outputs.claim("out/checkpoint.npz"):
                pass


def test_files_written_together_appear_together_or_not_at_all():
    write("a.npy", "old a")
    with pytest.raises(RuntimeError):
        with outputs.atomic_files(["a.npy", "b.txt"], overwrite=True) as batch:
            batch.files[0].write(b"new a")
            raise RuntimeError("disk on fire")
    assert sorted(os.listdir()) == ["a.npy"] and Path("a.npy").read_text() == "old a"
    write("a.names.txt", "old names")
    with outputs.atomic_files(["a.npy"], overwrite=True, remove=["a.names.txt"]) as batch:
        batch.files[0].write(b"new a")
    assert batch.installed and sorted(os.listdir()) == ["a.npy"]
    with pytest.raises(InputError, match="file exists"):
        with outputs.atomic_files(["a.npy", "c.txt"], overwrite=False) as batch:
            batch.files[0].write(b"newer")
    assert sorted(os.listdir()) == ["a.npy"] and Path("a.npy").read_text() == "new a"


# --- names --------------------------------------------------------------------------------------

NAME_CHARS = st.characters(blacklist_categories=("Cs",)) | st.sampled_from(
    ["\n", "\r", "\\", ",", '"', "\udcff", "\udc80"]
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.text(NAME_CHARS, max_size=20))
def test_names_files_give_back_every_name_exactly(name):
    line = names.to_line(name)
    assert "\n" not in line and "\r" not in line
    line.encode("utf-8")  # always writable as UTF-8
    assert names.from_line(line) == name


def test_printable_names_show_bytes_that_are_not_utf8():
    name = os.fsdecode(b"bad\xff\xfe.tif")
    assert names.printable(name) == "bad\\xff\\xfe.tif"
    assert names.printable('é,".tif') == 'é,".tif'


# --- glob patterns ------------------------------------------------------------------------------


def test_a_double_star_pattern_does_not_follow_links_to_folders():
    os.makedirs("imgs/sub")
    for p in ("imgs/a.png", "imgs/sub/b.png"):
        write(p)
    os.symlink("..", "imgs/sub/loop")
    os.symlink("../..", "imgs/sub/loop2")
    os.symlink("a.png", "imgs/link.png")  # a link to a file is followed
    found = sorted(glob_paths("imgs/**/*.png"))
    assert found == ["imgs/a.png", "imgs/link.png", "imgs/sub/b.png"]
    assert sorted(glob_paths("imgs/**")) == sorted(
        [
            "imgs/a.png",
            "imgs/link.png",
            "imgs/sub",
            "imgs/sub/b.png",
            "imgs/sub/loop",
            "imgs/sub/loop2",
        ]
    )
    assert input_paths("imgs/s*/*.png") == ["imgs/sub/b.png"]
    assert input_paths("stack.npy") == ["stack.npy", "stack.names.txt"]


def test_a_disk_full_names_the_file_and_says_so():
    """A full disk: the error names the output (a flush failing as the files closed replaced
    it with a bare "No space left on device") and says what went wrong in a short write."""
    with pytest.raises(InputError, match=r"^t\.npz: cannot write \(No space left on device\)$"):
        with outputs.atomic_files(["t.npz"]) as batch:
            f = batch.files[0]
            f.write(b"x" * 10)  # buffered, to be flushed as the file closes...
            os.close(f.fileno())  # ...which then fails
            raise OSError(errno.ENOSPC, "No space left on device")
    assert os.listdir() == []
    short = OSError("2073600 requested and 74720 written")  # NumPy's tofile, without errno
    assert outputs._why_not(short) == "only 74720 of 2073600 bytes went to disk: is it full?"


# --- interrupts ---------------------------------------------------------------------------------

DEFERRED = textwrap.dedent(
    """
    import os, signal, sys
    from facefinder_cli import interrupts
    with interrupts.handled():
        try:
            with interrupts.deferred("install"):
                os.kill(os.getpid(), signal.SIGINT)  # arrives inside: waits
                os.kill(os.getpid(), signal.SIGTERM)  # a second one: ignored
                print("finished the block", flush=True)
        except interrupts.Interrupted as stop:
            print(stop.exit_code, stop.after, flush=True)
    """
)


def test_a_signal_inside_a_deferred_block_waits_for_its_end():
    out = subprocess.run([sys.executable, "-c", DEFERRED], capture_output=True, text=True)
    assert out.stdout.split("\n")[:2] == ["finished the block", "130 install"], out.stderr


def test_a_signal_as_a_file_goes_into_a_folder_being_built_is_not_an_install(monkeypatch):
    """Files put in place inside a folder being built are not outputs yet: a signal there is
    "staged", and nothing is in place (it was "install": generate said a folder it never
    made was written, and fit's checkpoint saver thought its folder existed)."""
    from facefinder_cli import interrupts

    real = outputs._install

    def install(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    with interrupts.handled():
        with pytest.raises(interrupts.Interrupted) as stop:
            with outputs.atomic_folder("built") as tmp:
                monkeypatch.setattr(outputs, "_install", install)
                with outputs.atomic_write(os.path.join(tmp, "f.txt"), "w") as f:
                    f.write("x")
    assert stop.value.after == "staged" and not os.path.exists("built")
    assert os.listdir() == []


def test_a_signal_in_an_unlabelled_block_inside_an_install_is_the_installs():
    """The record written while outputs are installed makes its temporary in an unlabelled
    block: a signal there arrived in the install all the same (it said "not written")."""
    code = DEFERRED.replace(
        "os.kill(os.getpid(), signal.SIGINT)  # arrives inside: waits",
        "with interrupts.deferred():\n                    os.kill(os.getpid(), signal.SIGINT)",
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split("\n")[:2] == ["finished the block", "130 install"], out.stderr


def test_an_interrupt_hidden_by_a_writers_clean_up_still_interrupts(tmp_path):
    """np.savez closing its zip file on the way out of a SIGTERM raised "Can't close the ZIP
    file while there is an open writing handle", which replaced the interrupt (exit 1)."""
    from facefinder_cli.interrupts import Interrupted
    from facefinder_cli.outputs import atomic_write

    target = tmp_path / "checkpoint.npz"
    with pytest.raises(Interrupted) as stop:
        with atomic_write(target) as f:
            f.write(b"half")
            try:
                raise Interrupted(signal.SIGTERM)
            finally:
                raise ValueError("Can't close the ZIP file while there is an open writing handle")
    assert stop.value.exit_code == 143
    assert list(tmp_path.iterdir()) == []


def test_a_file_replaced_after_the_check_is_kept_by_atomic_write(tmp_path):
    """The single-file path (detect, plot-elbo): a target checked as replaceable, then
    swapped for another file before the install, is kept; nothing is written."""
    from facefinder_cli import outputs

    p = tmp_path / "out.csv"
    p.write_text("theirs, checked\n")
    outputs.check_file_target(p, True, ours=lambda _: True)
    other = tmp_path / "other"
    other.write_text("a user's file\n")
    os.replace(other, p)
    with pytest.raises(InputError, match="out.csv: another file came there while facefinder"):
        with outputs.atomic_write(p, "w", overwrite=True) as f:
            f.write("new\n")
    assert p.read_text() == "a user's file\n"
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]
    outputs.check_file_target(p, True, ours=lambda _: True)  # checked as it is now: replaced
    with outputs.atomic_write(p, "w", overwrite=True) as f:
        f.write("new\n")
    assert p.read_text() == "new\n"


def test_a_folder_output_over_a_file_says_what_to_do(tmp_path):
    """It said only 'exists and is not a folder'."""
    from facefinder_cli import outputs

    p = tmp_path / "rf"
    p.write_text("a file of mine")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="rf: a file, where this command writes a folder"):
            outputs.check_folder_target(p, overwrite)
    assert p.read_text() == "a file of mine"
