"""Tests of streaming .npy stacks: NpyReader, load_stack(stream=True), names files, pack_stack."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import tifffile
from PIL import Image

from facefinder_cli import images as im
from facefinder_cli.images import (
    InputError,
    NpyReader,
    Stack,
    load_stack,
    pack_stack,
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


# ---------------------------------------------------------------------------- NpyReader

KEYS = [
    0,
    3,
    -1,
    -7,
    np.int64(2),
    slice(None),
    slice(1, 5),
    slice(None, None, 2),
    slice(None, None, -1),
    slice(5, 1, -2),
    slice(-3, None),
    slice(4, 4),
    slice(10, 20),
    [3, 1, 1, 0],
    np.array([-1, 2, 3]),
    np.array([6], dtype=np.uint8),
    [],
]


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "u1", ">f8", ">i2", "?"])
def test_reader_indexing_equals_np_load(dtype):
    arr = (pixels(7, 4, 5, seed=1) - 100).astype(dtype)
    np.save("s.npy", arr)
    want = np.load("s.npy")
    with NpyReader("s.npy") as r:
        assert len(r) == 7 and r.shape == (7, 4, 5) and r.ndim == 3
        assert r.dtype == np.dtype(dtype).newbyteorder("=") and r.dtype.isnative
        assert r.nbytes == want.nbytes
        assert repr(r) == f"NpyReader('s.npy', shape=(7, 4, 5), dtype={r.dtype})"
        for key in KEYS:
            got = r[key]
            expect = want[key]
            assert got.shape == expect.shape, key
            assert got.dtype == r.dtype and got.flags.c_contiguous and got.flags.writeable
            np.testing.assert_array_equal(got, expect)
        np.testing.assert_array_equal(np.stack(list(r)), want)
        got = r[1:3]
        got[...] = 0  # a fresh array: the next read is unaffected
        np.testing.assert_array_equal(r[1:3], want[1:3])


def test_reader_out_of_range_and_bad_keys():
    np.save("s.npy", np.zeros((3, 2, 2), dtype=np.float32))
    r = NpyReader("s.npy")
    for key in (3, -4, [0, 3], np.array([-4])):
        with pytest.raises(IndexError, match="out of range for 3 images"):
            r[key]
    for key in (1.0, True, (0, 1), np.zeros((2, 2), dtype=int), [0.5], "a"):
        with pytest.raises(TypeError):
            r[key]
    r.close()
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r[0]


def test_reader_contiguous_slice_is_one_read(monkeypatch):
    np.save("s.npy", np.arange(8 * 3 * 4, dtype=np.float64).reshape(8, 3, 4))
    calls = []
    real = im._read_at
    monkeypatch.setattr(im, "_read_at", lambda *a: calls.append(len(a[1])) or real(*a))
    r = NpyReader("s.npy")
    r[1:7]
    assert calls == [6 * 3 * 4 * 8]
    calls.clear()
    r[[0, 1, 2, 5]]
    assert calls == [3 * 96, 96]


def test_reader_short_reads_are_completed(monkeypatch):
    """pread may return fewer bytes than asked; the reader loops until the buffer is full."""
    arr = pixels(5, 6, 7).astype(np.float64)
    np.save("s.npy", arr)
    real = os.preadv if hasattr(os, "preadv") else None
    if real is not None:
        monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: real(fd, [bufs[0][:13]], off))
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: real_pread(fd, min(n, 13), off))
    np.testing.assert_array_equal(NpyReader("s.npy")[:], arr)


def test_reader_truncated_and_unfit_files():
    np.save("s.npy", np.ones((4, 5, 6)))
    size = os.path.getsize("s.npy")
    with open("s.npy", "r+b") as f:
        f.truncate(size - 8)
    bad = "s.npy: cannot read .npy file (truncated or not a NumPy .npy file)"
    with pytest.raises(InputError) as err:
        NpyReader("s.npy")
    assert str(err.value) == bad
    with pytest.raises(InputError) as err:
        load_stack("s.npy", stream=True)
    assert str(err.value) == bad
    with open("t.npy", "wb") as f:
        f.write(b"not a numpy file at all")
    with pytest.raises(InputError, match="t.npy: cannot read .npy file"):
        NpyReader("t.npy")
    np.save("two.npy", np.ones((4, 5)))
    with pytest.raises(InputError, match=r"two.npy: array of shape \(4, 5\) is not a 3-D"):
        NpyReader("two.npy")
    np.save("f.npy", np.asfortranarray(np.ones((4, 5, 6))))
    with pytest.raises(InputError, match="f.npy: array is stored in Fortran order"):
        NpyReader("f.npy")
    with pytest.raises(InputError, match="missing.npy: cannot open"):
        NpyReader("missing.npy")


def test_reader_threads_read_concurrently():
    arr = np.random.default_rng(3).normal(size=(64, 16, 16)).astype(np.float32)
    np.save("s.npy", arr)
    r = NpyReader("s.npy")
    errors = []
    barrier = threading.Barrier(4)

    def work(t):
        try:
            barrier.wait()
            for _ in range(50):
                for start in range(t, 64, 8):
                    np.testing.assert_array_equal(r[start : start + 4], arr[start : start + 4])
                np.testing.assert_array_equal(r[t::4], arr[t::4])
        except Exception as exc:  # reported below: assertion errors in threads are lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------------------ load_stack(stream=True)


def test_stream_khw_npy_reads_no_pixels(monkeypatch):
    arr = pixels(4, 5, 6).astype(np.float32)
    arr[2, 0, 0] = np.nan  # not checked: the caller checks
    np.save("s.npy", arr)
    monkeypatch.setattr(np, "load", None)  # no pixel read through NumPy either
    got = load_stack("s.npy", stream=True)
    assert isinstance(got.images, NpyReader) and got.images.dtype == np.float32
    assert got.names == tuple(f"s.npy[{k}]" for k in range(4))
    assert got.source == "s.npy"
    assert got.notes == (
        "read s.npy as 4 images of 5x6 (K, H, W); pass --layout hwk if the images are along "
        "the last axis",
    )
    np.testing.assert_array_equal(got.images[:2], arr[:2])


@pytest.mark.parametrize("kind", ["hwk", "fortran"])
def test_stream_falls_back_to_memory_with_a_note(kind):
    if kind == "hwk":
        arr = pixels(6, 7, 40).astype(np.float32)  # guessed (H, W, K)
        np.save("s.npy", arr)
        want = arr.transpose(2, 0, 1)
    else:
        want = pixels(4, 5, 6).astype(np.float32)
        np.save("s.npy", np.asfortranarray(want))
    got = load_stack("s.npy", stream=True)
    assert isinstance(got.images, np.ndarray) and got.images.dtype == np.float64
    np.testing.assert_array_equal(got.images, want)
    note = "read s.npy into memory: a .npy stack streams only in (K, H, W) C order"
    assert got.notes[-1] == note
    assert got.notes == load_stack("s.npy").notes + (note,)


def test_stream_given_layout_and_2d_file():
    np.save("s.npy", pixels(6, 7, 40).astype(np.float64))
    got = load_stack("s.npy", layout="khw", stream=True)
    assert isinstance(got.images, NpyReader) and got.notes == ()
    np.save("one.npy", np.ones((3, 4)))
    got = load_stack("one.npy", stream=True)
    assert got.images.shape == (1, 3, 4) and got.notes == () and got.names == ("one.npy",)


def test_names_file_must_match_the_image_count():
    np.save("s.npy", np.zeros((3, 2, 2)))
    with open("s.names.txt", "w", encoding="utf-8") as f:
        f.write("a\nb\n")
    for stream in (False, True):
        got = load_stack("s.npy", stream=stream)
        assert got.names == ("s.npy[0]", "s.npy[1]", "s.npy[2]")
        assert got.notes[-1].startswith("ignored s.names.txt: it holds 2 names for 3 images")
    with open("s.names.txt", "w", encoding="utf-8") as f:
        f.write("é1\r\nb\nc")
    for stream in (False, True):
        got = load_stack("s.npy", stream=stream)
        assert got.names == ("é1", "b", "c")


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
    assert listing() == ["imgs", "stack.names.txt", "stack.npy"]
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
    assert "--dtype float64" in got.notes[1]
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
    assert offset == len(im._npy_header_bytes(np.dtype(np.float32), (10, 5, 6)))
    assert offset % 64 == 0
    assert os.path.getsize("s.npy") == offset + saved.nbytes
    assert len(read_names("s.names.txt")) == 9


def test_npy_header_keeps_its_length_when_the_count_shrinks():
    dt = np.dtype(np.float64)
    for big, small in [(10, 9), (100000, 3), (1000, 999)]:
        first = im._npy_header_bytes(dt, (big, 7, 8))
        again = im._npy_header_bytes(dt, (small, 7, 8), len(first))
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
    failed_pack_leaves_nothing(
        "big.npy",
        "big.npy: image 0 (counting from 0) holds values beyond the float32 range (about 3.4e38); "
        "pack with --dtype float64",
    )
    pack_stack("big.npy", "out/s.npy", dtype="float64")
    assert np.load("out/s.npy")[1, 2, 2] == 1e39


def test_interrupt_leaves_old_files_untouched(monkeypatch):
    png_folder(k=5)
    pack_stack("imgs", "s.npy")
    before = {n: open(n, "rb").read() for n in ("s.npy", "s.names.txt")}
    png_folder("other", k=5, seed=9)
    real, calls = im._read_image_file, []

    def interrupted(path, disp):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, disp)

    monkeypatch.setattr(im, "_read_image_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_stack("other", "s.npy", overwrite=True)
    assert listing() == ["imgs", "other", "s.names.txt", "s.npy"]
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
    assert listing() == ["imgs", "other", "s.names.txt", "s.npy"]  # no temporary file either
    assert open("s.npy", "rb").read() == old_stack and read_names("s.names.txt") == old_names
    pack_stack("other", "s.npy", overwrite=True)  # and without the interruption, the new pair
    assert load_stack("s.npy", stream=True).names == tuple(f"img{k}.png" for k in range(1, 5))


def test_existing_target_needs_overwrite():
    arr = png_folder(k=3)
    np.save("s.npy", np.zeros((1, 2, 2)))
    before = open("s.npy", "rb").read()
    with pytest.raises(InputError) as err:
        pack_stack("imgs", "s.npy")
    assert str(err.value) == "s.npy: file exists; pass --overwrite to replace it"
    assert open("s.npy", "rb").read() == before and listing() == ["imgs", "s.npy"]
    pack_stack("imgs", "s.npy", overwrite=True)
    np.testing.assert_array_equal(np.load("s.npy"), arr)
    # a names file left over from elsewhere is not replaced silently either
    open("t.names.txt", "w").close()
    with pytest.raises(InputError, match="^t.names.txt: file exists; pass --overwrite"):
        pack_stack("imgs", "t.npy")
    assert not os.path.exists("t.npy")


@pytest.mark.parametrize(
    "target, message",
    [
        ("s.tif", "s.tif: pack writes a .npy file; give a name ending in .npy"),
        ("s", "s: pack writes a .npy file; give a name ending in .npy"),
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
    with open("s.names.txt", "w") as f:
        f.write("a\nb\nc\nd\n")  # stale: would name the new images wrongly
    got = pack_stack("pages.tif", "s.npy", overwrite=True)
    assert got.names == tuple(f"pages.tif[{k}]" for k in range(4))
    assert listing() == ["pages.tif", "s.npy"]
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
