"""Tests of facefinder_cli.images.stacks: NpyReader, load_stack(stream=True) and names files."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from facefinder_cli.images import InputError, NpyReader, load_stack, stacks


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test inside its tmp_path so messages show short relative paths."""
    monkeypatch.chdir(tmp_path)


def pixels(k=11, h=5, w=6, seed=0, high=256):
    return np.random.default_rng(seed).integers(0, high, (k, h, w))


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
    real = stacks._read_at
    monkeypatch.setattr(stacks, "_read_at", lambda *a: calls.append(len(a[1])) or real(*a))
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
        "read s.npy as 4 images of 5x6 (K, H, W); pass layout='hwk' if the images are along "
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
