"""Tests of facefinder_cli.images.packing: pack_stack, from every kind of source to one .npy
stack and its names file, atomically."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from facefinder_cli.errors import Hint
from facefinder_cli.images import (
    InputError,
    NpyReader,
    Stack,
    load_stack,
    pack_stack,
    packing,
    reading,
    write_stack,
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test inside its tmp_path so messages show short relative paths."""
    monkeypatch.chdir(tmp_path)


def pixels(k=11, h=5, w=6, seed=0, high=256):
    return np.random.default_rng(seed).integers(0, high, (k, h, w))


def png_folder(folder="imgs", k=11, seed=0):
    """A folder img1.png .. imgK.png of 8-bit random images; returns the values."""
    arr = pixels(k, seed=seed).astype(np.uint8)
    write_stack(folder, arr, names=[f"img{i}" for i in range(1, k + 1)], fmt="png")
    return arr


def listing(folder="."):
    return sorted(os.listdir(folder))


def read_names(path="stack.names.txt"):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


# ---------------------------------------------------------------------------- pack_stack


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pack_png_folder_keeps_natural_order_and_values(dtype):
    arr = png_folder()
    seen = []
    got = pack_stack("imgs", "stack.npy", dtype=dtype, progress=lambda *a: seen.append(a))
    assert seen == [(k, 11) for k in range(1, 12)]
    names = tuple(f"img{k}.png" for k in range(1, 12))
    assert isinstance(got, Stack) and isinstance(got.images, NpyReader)
    assert got.names == names and got.source == "imgs" and got.notes == ()
    saved = np.load("stack.npy")
    assert saved.dtype == dtype and saved.shape == (11, 5, 6)
    np.testing.assert_array_equal(saved, arr)
    np.testing.assert_array_equal(got.images[:], arr)
    assert read_names() == list(names)
    # with the record by which --overwrite knows them again
    assert listing() == [".stack.npy.facefinder", "imgs", "stack.names.txt", "stack.npy"]
    back = load_stack("stack.npy", stream=True)
    assert back.names == names and isinstance(back.images, NpyReader)
    np.testing.assert_array_equal(back.images[::-1], arr[::-1])


def test_pack_sixteen_bit_tiff_and_png_exact_in_float32():
    arr = pixels(3, 4, 5, high=65536).astype(np.uint16)
    arr[0, 0, 0] = 65535
    os.mkdir("imgs")
    for k, img in enumerate(arr):
        if k == 1:
            Image.fromarray(img).save("imgs/im1.png")
            assert Image.open("imgs/im1.png").mode.startswith("I")
        else:
            tifffile.imwrite(f"imgs/im{k}.tif", img)
    got = pack_stack("imgs", "s16.npy")
    assert got.names == ("im0.tif", "im1.png", "im2.tif")
    np.testing.assert_array_equal(np.load("s16.npy"), arr.astype(np.float32))


def test_pack_glob_and_colour_notes():
    png_folder("a", k=3)
    Image.fromarray(pixels(1, 5, 6, high=256)[0].astype(np.uint8)).convert("RGB").save("a/x.png")
    Image.fromarray(np.full((5, 6, 3), [200, 10, 30], dtype=np.uint8)).save("a/y.png")
    got = pack_stack("a/*.png", "g.npy", dtype=np.float64)
    assert got.names == ("img1.png", "img2.png", "img3.png", "x.png", "y.png")
    assert got.notes == ("converted 1 colour image to grayscale (luminance)",)
    want = load_stack("a/*.png")
    np.testing.assert_array_equal(np.load("g.npy"), want.images)
    # float32 cannot hold the luminance of the colour image exactly: said in a note
    got = pack_stack("a/*.png", "g32.npy")
    assert got.notes[1].startswith("rounded the values of 1 image to float32")
    assert got.notes[1].endswith("pack with dtype='float64' to keep them exactly")
    assert got.notes[1].hints == (Hint("dtype", "float64"),)
    np.testing.assert_allclose(np.load("g32.npy"), want.images, rtol=1e-7)
    assert pack_stack("a/img*.png", "ints.npy").notes == ()  # 8-bit grey: exact, no note


def test_pack_names_with_line_breaks_and_backslashes_come_back_exactly():
    os.mkdir("imgs")
    names = ["a1.png", "a\n2.png", "a\r3.png", "a\\n4.png"]
    for k, name in enumerate(names):
        Image.fromarray(np.full((2, 3), k, dtype=np.uint8)).save(os.path.join("imgs", name))
    got = pack_stack("imgs", "s.npy")
    assert got.names == tuple(names)
    assert load_stack("s.npy", stream=True).names == got.names
    # one name a line, escaped: a\n2.png, a\r3.png, a\\n4.png
    assert read_names("s.names.txt") == ["a1.png", "a\\n2.png", "a\\r3.png", "a\\\\n4.png"]


def test_pack_skip_unreadable_rewrites_the_header_in_place():
    arr = png_folder(k=10)
    with open("imgs/img4.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    got = pack_stack("imgs", "s.npy", skip_unreadable=True)
    keep = [k for k in range(10) if k != 3]
    assert got.names == tuple(f"img{k + 1}.png" for k in keep)
    assert got.notes[-1].startswith("skipped 1 unreadable file: imgs/img4.png: cannot read image")
    saved = np.load("s.npy")
    assert saved.shape == (9, 5, 6) and saved.dtype == np.float32
    np.testing.assert_array_equal(saved, arr[keep])
    with open("s.npy", "rb") as f:
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f) == ((9, 5, 6), False, np.float32)
        offset = f.tell()
    assert offset == len(packing._npy_header_bytes(np.dtype(np.float32), (10, 5, 6)))
    assert offset % 64 == 0
    assert os.path.getsize("s.npy") == offset + saved.nbytes
    assert len(read_names("s.names.txt")) == 9


def test_npy_header_keeps_its_length_when_the_count_shrinks():
    dt = np.dtype(np.float64)
    for big, small in [(10, 9), (100000, 3), (1000, 999)]:
        first = packing._npy_header_bytes(dt, (big, 7, 8))
        again = packing._npy_header_bytes(dt, (small, 7, 8), len(first))
        assert len(again) == len(first)
        data = np.arange(small * 56, dtype=dt)
        with open("h.npy", "wb") as f:
            f.write(again + data.tobytes())
        np.testing.assert_array_equal(np.load("h.npy"), data.reshape(small, 7, 8))


def failed_pack_leaves_nothing(source, message, **kw):
    os.mkdir("out")
    with pytest.raises(InputError) as err:
        pack_stack(source, "out/s.npy", **kw)
    assert str(err.value) == message
    assert listing("out") == []
    return err.value


def test_size_mismatch_midway_leaves_nothing():
    png_folder(k=6)
    Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save("imgs/img4.png")
    failed_pack_leaves_nothing("imgs", "imgs/img4.png: size 4x6 differs from 5x6 of imgs/img1.png")


def test_nan_image_leaves_nothing():
    stack = pixels(5, 4, 4).astype(np.float32)
    stack[3, 1, 1] = np.nan
    write_stack("imgs", stack)  # float TIFFs img1.tif .. img5.tif
    failed_pack_leaves_nothing("imgs", "imgs/img4.tif: contains NaN", skip_unreadable=True)


def test_float32_overflow_is_refused():
    np.save("big.npy", np.full((2, 3, 3), 1e39))
    err = failed_pack_leaves_nothing(
        "big.npy",
        "big.npy: image 0 (counting from 0) holds values beyond the float32 range (about 3.4e38); "
        "pack with dtype='float64'",
    )
    assert err.hints == (Hint("dtype", "float64"),)  # the command line says --dtype float64
    pack_stack("big.npy", "out/s.npy", dtype="float64")
    assert np.load("out/s.npy")[1, 2, 2] == 1e39


def test_interrupt_leaves_old_files_untouched(monkeypatch):
    png_folder(k=5)
    pack_stack("imgs", "s.npy")
    before = {n: open(n, "rb").read() for n in ("s.npy", "s.names.txt")}
    png_folder("other", k=5, seed=9)
    real, calls = reading._read_image_file, []

    def interrupted(path, disp):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, disp)

    monkeypatch.setattr(reading, "_read_image_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_stack("other", "s.npy", overwrite=True)
    assert listing() == [".s.npy.facefinder", "imgs", "other", "s.names.txt", "s.npy"]
    assert {n: open(n, "rb").read() for n in before} == before


def test_the_stack_and_its_names_file_change_together(monkeypatch):
    """Interrupted between putting the new stack in place and its names file, the old pair is
    put back: never a new stack named after the old images, nor an old one without names."""
    from facefinder_cli import outputs

    png_folder(k=3)
    pack_stack("imgs", "s.npy")
    old_stack, old_names = open("s.npy", "rb").read(), read_names("s.names.txt")
    png_folder("other", k=4, seed=9)
    real_rename = os.rename

    def stop_at_the_names(src, dst):
        if str(dst).endswith("s.names.txt") and str(src).endswith(".facefinder.tmp"):
            raise KeyboardInterrupt  # the new stack is in place by now
        real_rename(src, dst)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(outputs.os, "rename", stop_at_the_names)
        pack_stack("other", "s.npy", overwrite=True)
    # no temporary file either
    assert listing() == [".s.npy.facefinder", "imgs", "other", "s.names.txt", "s.npy"]
    assert open("s.npy", "rb").read() == old_stack and read_names("s.names.txt") == old_names
    pack_stack("other", "s.npy", overwrite=True)  # and without the interruption, the new pair
    assert load_stack("s.npy", stream=True).names == tuple(f"img{k}.png" for k in range(1, 5))


def test_existing_target_needs_overwrite():
    arr = png_folder(k=3)
    np.save("s.npy", np.zeros((1, 2, 2)))
    before = open("s.npy", "rb").read()
    # a file of the user's: said at once that overwrite would not replace it either (before:
    # "pass overwrite=True", then refused with it)
    with pytest.raises(InputError, match="s.npy: not a file facefinder wrote"):
        pack_stack("imgs", "s.npy")
    assert open("s.npy", "rb").read() == before and listing() == ["imgs", "s.npy"]
    with pytest.raises(InputError, match="s.npy: not a file facefinder wrote"):
        pack_stack("imgs", "s.npy", overwrite=True)  # not pack's: kept even so
    assert open("s.npy", "rb").read() == before
    os.remove("s.npy")
    pack_stack("imgs", "s.npy")
    with pytest.raises(InputError) as err:  # pack's own: overwrite would replace it
        pack_stack("imgs", "s.npy")
    assert str(err.value) == "s.npy: file exists; pass overwrite=True to replace it"
    pack_stack("imgs", "s.npy", overwrite=True)  # pack's own, as it left it
    np.testing.assert_array_equal(np.load("s.npy"), arr)
    # a names file left over from elsewhere is not replaced silently either (nor with overwrite)
    open("t.names.txt", "w").close()
    with pytest.raises(InputError, match="^t.names.txt: not a file facefinder wrote"):
        pack_stack("imgs", "t.npy")
    assert not os.path.exists("t.npy")


def test_overwrite_replaces_only_what_pack_wrote():
    """--overwrite replaces a stack and names file that pack wrote, as it left them (its
    record beside them says so); a stack and names file of the user's own, even in pack's
    format, one pack wrote and the user changed since, a names file beside pack's stack, or
    a FIFO where the names file goes, are kept and refused in one line."""
    png_folder(k=3)
    mine = "my notes\n"
    with open("t.names.txt", "w") as f:
        f.write(mine)
    with pytest.raises(InputError, match="^t.names.txt: not a file facefinder wrote"):
        pack_stack("imgs", "t.npy", overwrite=True)
    assert open("t.names.txt").read() == mine and not os.path.exists("t.npy")
    # the user's own stack with a names file of a line per image: pack's format, not pack's
    np.save("u.npy", np.ones((3, 2, 2)))
    with open("u.names.txt", "w") as f:
        f.write("a\nb\nc\n")
    before = {n: open(n, "rb").read() for n in ("u.npy", "u.names.txt")}
    with pytest.raises(InputError, match="^u.npy: not a file facefinder wrote"):
        pack_stack("imgs", "u.npy", overwrite=True)
    assert {n: open(n, "rb").read() for n in before} == before
    pack_stack("imgs", "v.npy")
    pack_stack("imgs", "v.npy", overwrite=True)  # its own pair, as it left them: replaced
    assert read_names("v.names.txt") == ["img1.png", "img2.png", "img3.png"]
    with open("v.names.txt", "w") as f:  # the user's names, three lines, in its place
        f.write("x\ny\nz\n")
    with pytest.raises(InputError, match="^v.names.txt: not a file facefinder wrote"):
        pack_stack("imgs", "v.npy", overwrite=True)
    assert read_names("v.names.txt") == ["x", "y", "z"]
    os.remove("v.names.txt")
    pack_stack("imgs", "w.npy")
    with open("w.npy", "r+b") as f:  # the user edited pack's stack in place since
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    with pytest.raises(InputError, match="^w.npy: not a file facefinder wrote"):
        pack_stack("imgs", "w.npy", overwrite=True)
    os.mkfifo("f.names.txt")  # opened, it would wait for a reader forever
    with pytest.raises(InputError, match="^f.names.txt: not a regular file, and it goes with"):
        pack_stack("imgs", "f.npy")
    assert not os.path.exists("f.npy")


WRITES = "pack writes a .npy file or a .zarr folder; give a name ending in .npy or .zarr"


@pytest.mark.parametrize(
    "target, message",
    [
        ("s.tif", "s.tif: " + WRITES),
        ("s", "s: " + WRITES),
        ("imgs/s.npy", "imgs/s.npy: is inside the source folder imgs; write the stack elsewhere"),
    ],
)
def test_bad_targets_are_refused(target, message):
    png_folder(k=2)
    with pytest.raises(InputError) as err:
        pack_stack("imgs", target)
    assert str(err.value) == message
    assert listing() == ["imgs"] and listing("imgs") == [".facefinder", "img1.png", "img2.png"]


def test_target_is_the_source_file_and_bad_dtype():
    np.save("s.npy", np.zeros((2, 2, 2)))
    os.symlink("s.npy", "link.npy")
    for target in ("s.npy", "link.npy"):
        with pytest.raises(InputError) as err:
            pack_stack("s.npy", target, overwrite=True)
        assert str(err.value) == f"{target}: is the source itself; write the stack to another file"
    for dtype in (np.uint8, np.float16, None, "nonsense"):
        with pytest.raises(ValueError, match="dtype must be float32 or float64"):
            pack_stack("s.npy", "t.npy", dtype=dtype)
    with pytest.raises(InputError, match="^nothing.npy: no such file or folder$"):
        pack_stack("nothing.npy", "t.npy")


def test_pack_stack_files_default_names_write_no_names_file():
    arr = pixels(4, 5, 6).astype(np.float32)
    tifffile.imwrite("pages.tif", arr, photometric="minisblack")
    write_stack("old.npz", arr, names=["a", "b", "c", "d"])
    pack_stack("old.npz", "s.npy")  # its names file would name the new images wrongly
    assert read_names("s.names.txt") == ["a", "b", "c", "d"]
    os.remove("old.npz")
    got = pack_stack("pages.tif", "s.npy", overwrite=True)
    assert got.names == tuple(f"pages.tif[{k}]" for k in range(4))
    assert listing() == [".s.npy.facefinder", "pages.tif", "s.npy"]
    assert load_stack("s.npy", stream=True).names == tuple(f"s.npy[{k}]" for k in range(4))
    np.testing.assert_array_equal(np.load("s.npy"), arr)
    # stored names (an .npz written by write_stack) go to the names file
    write_stack("n.npz", arr, names=["w", "x", "y", "z"])
    got = pack_stack("n.npz", "t.npy", dtype=np.float64)
    assert read_names("t.names.txt") == ["w", "x", "y", "z"]
    assert load_stack("t.npy").names == ("w", "x", "y", "z")
    # an (H, W, K) source follows the given layout
    np.save("hwk.npy", arr.transpose(1, 2, 0))
    pack_stack("hwk.npy", "u.npy", layout="hwk")
    np.testing.assert_array_equal(np.load("u.npy"), arr)


def test_a_file_moved_onto_the_output_while_pack_works_is_kept():
    """--overwrite was checked before the work; a file that comes to the output's name while
    pack works (a user's, moved there) is not replaced unchecked at the end."""
    png_folder(k=3)
    pack_stack("imgs", "s.npy")
    np.save("mine.npy", np.full((2, 2, 2), 7.0))
    mine = open("mine.npy", "rb").read()

    def swap(done, total):
        if os.path.exists("mine.npy"):
            os.replace("mine.npy", "s.npy")

    with pytest.raises(InputError, match="^s.npy: another file came there while facefinder"):
        pack_stack("imgs", "s.npy", overwrite=True, progress=swap)
    assert open("s.npy", "rb").read() == mine
    assert not [f for f in os.listdir() if f.endswith(".tmp")]
    os.remove("s.npy")
    os.remove("s.names.txt")

    def arrive(done, total):  # absent when checked, there at the end
        if not os.path.exists("s.npy"):
            with open("s.npy", "wb") as f:
                f.write(mine)

    with pytest.raises(InputError, match="^s.npy: another file came there while facefinder"):
        pack_stack("imgs", "s.npy", overwrite=True, progress=arrive)
    assert open("s.npy", "rb").read() == mine


def test_a_copy_that_keeps_the_times_is_still_packs_own():
    """cp -a, rsync -a or a moved folder keep the files' times: the record still knows the
    stack there (it keeps size and time, not the inode); a copy that does not (plain cp) is
    another file."""
    import shutil

    png_folder(k=3)
    os.mkdir("a")
    pack_stack("imgs", "a/s.npy")
    shutil.copytree("a", "b")  # copy2: times kept, as cp -a
    pack_stack("imgs", "b/s.npy", overwrite=True)
    os.mkdir("c")
    for name in os.listdir("a"):
        shutil.copyfile(os.path.join("a", name), os.path.join("c", name))  # times not kept
    with pytest.raises(InputError, match="^c/s.npy: not a file facefinder wrote"):
        pack_stack("imgs", "c/s.npy", overwrite=True)


@pytest.mark.parametrize("order", ["C", "F"])
def test_pack_of_a_single_2d_image_in_a_npy(order):
    """A .npy holding one 2-D image failed with an internal TypeError (a review found it)."""
    image = np.asarray(pixels(k=1, h=5, w=6)[0], dtype=np.float64, order=order)
    np.save("one.npy", image)
    got = pack_stack("one.npy", "stack.npy", dtype=np.float64)
    assert got.names == ("one.npy",) and got.images.shape == (1, 5, 6)
    np.testing.assert_array_equal(np.load("stack.npy")[0], image)
