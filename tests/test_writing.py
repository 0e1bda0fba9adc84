"""Tests of facefinder_cli.images.writing: to_uint8, PNGs, stacks as files and folders, and
that a failed write leaves nothing behind."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tifffile
from helpers import listing
from PIL import Image

from facefinder_cli.images import (
    IMAGES_FOLDER,
    InputError,
    encode_stack,
    load_stack,
    to_uint8,
    write_png,
    write_stack,
    writing,
)
from facefinder_cli.outputs import atomic_write, write_marker


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test inside its tmp_path so messages show short relative paths."""
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------------------- to_uint8


def test_to_uint8_constant_arrays():
    np.testing.assert_array_equal(to_uint8(np.full((2, 3), 1000.0)), np.full((2, 3), 128))
    np.testing.assert_array_equal(to_uint8(np.full((2, 3), -5.0)), np.full((2, 3), 128))
    # pixel-scale constants keep their true brightness
    np.testing.assert_array_equal(to_uint8(np.full((2, 3), 40.0)), np.full((2, 3), 40))


def test_to_uint8_rounds_halves_up_whatever_the_last_bit():
    """Averages of whole grey levels end in .5; a last-bit difference between machines must not
    decide their rounding (it made `make -C docs` PNGs differ by one grey level)."""
    half = 127.5
    values = np.array([half, np.nextafter(half, 0), np.nextafter(half, 256), 0.5, 2.5, 127.49])
    assert to_uint8(values).tolist() == [128, 128, 128, 1, 3, 127]


def test_to_uint8_range_mapping():
    out = to_uint8(np.array([-1.0, 0.0, 1.0]))
    assert out.dtype == np.uint8 and out.tolist() == [0, 128, 255]
    assert to_uint8(np.array([0.0, 100.4, 255.0])).tolist() == [0, 100, 255]
    assert to_uint8(np.array([-50.0, 50.0, 150.0]), vmin=0, vmax=100).tolist() == [0, 128, 255]
    assert to_uint8(np.array([np.nan, np.inf, -np.inf, 2.0])).tolist() == [0, 255, 0, 2]
    with pytest.raises(InputError, match=r"^vmin \(3\) must not be greater than vmax \(1\)$"):
        to_uint8(np.zeros(3), vmin=3, vmax=1)


# ---------------------------------------------------------------------------- write_png


def test_write_png_to_bytesio_with_zoom():
    a = np.array([[0.0, 255.0], [100.0, 50.0]])
    buf = io.BytesIO()
    write_png(buf, a, zoom=3)
    data = buf.getvalue()
    assert data.startswith(b"\x89PNG")
    back = np.asarray(Image.open(io.BytesIO(data)))
    assert back.shape == (6, 6)
    np.testing.assert_array_equal(back, np.kron(a, np.ones((3, 3))).astype(np.uint8))


def test_write_png_to_stdout(capsysbinary):
    write_png("-", np.zeros((4, 5)))
    out = capsysbinary.readouterr().out
    assert out.startswith(b"\x89PNG")
    assert np.asarray(Image.open(io.BytesIO(out))).shape == (4, 5)
    assert listing() == []


def test_write_png_colour_is_kept():
    rgb = np.random.default_rng(8).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    write_png("heat.png", rgb, zoom=2)
    back = np.asarray(Image.open("heat.png"))
    np.testing.assert_array_equal(back, rgb.repeat(2, 0).repeat(2, 1))


def test_write_png_bad_zoom():
    with pytest.raises(InputError, match=r"^zoom: must be a positive integer, got 0$"):
        write_png("x.png", np.zeros((2, 2)), zoom=0)
    assert listing() == []


# ---------------------------------------------------------------------------- atomicity


def _failing_encoder(f, *args):
    f.write(b"partial data")
    raise RuntimeError("encoder exploded")


def test_failed_png_write_leaves_no_file(monkeypatch):
    monkeypatch.setattr(writing, "_encode_png", _failing_encoder)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_png("face.png", np.zeros((3, 3)))
    assert listing() == []


def test_failed_png_write_keeps_existing_file(monkeypatch):
    with open("face.png", "wb") as f:
        f.write(b"old content")
    monkeypatch.setattr(writing, "_encode_png", _failing_encoder)
    with pytest.raises(RuntimeError):
        write_png("face.png", np.zeros((3, 3)))
    assert listing() == ["face.png"]
    assert open("face.png", "rb").read() == b"old content"


def test_atomic_write_replaces_on_success_only():
    with open("f.bin", "wb") as f:
        f.write(b"old")
    with pytest.raises(KeyError):
        with atomic_write("f.bin", overwrite=True) as f:
            f.write(b"new")
            raise KeyError("boom")
    assert open("f.bin", "rb").read() == b"old" and listing() == ["f.bin"]
    with pytest.raises(InputError, match="file exists"):  # never replaced unless asked
        with atomic_write("f.bin") as f:
            f.write(b"new")
    with atomic_write("f.bin", overwrite=True) as f:
        f.write(b"new")
    assert open("f.bin", "rb").read() == b"new" and listing() == ["f.bin"]


def test_failed_npy_stack_write_leaves_no_file(monkeypatch):
    def boom(f, arr):
        f.write(b"\x93NUMPY partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(RuntimeError):
        write_stack("s.npy", np.zeros((2, 3, 4)))
    assert listing() == []


def test_failed_folder_write_leaves_nothing_and_keeps_existing(monkeypatch):
    calls = []

    def fail_second(f, arr):
        calls.append(1)
        if len(calls) == 2:
            _failing_encoder(f)
        f.write(b"ok")

    monkeypatch.setattr(writing, "_encode_tiff", fail_second)
    with pytest.raises(RuntimeError):
        write_stack("out", np.zeros((3, 4, 5)))
    assert listing() == []

    os.mkdir("old")
    with open("old/img1.tif", "wb") as f:
        f.write(b"previous")
    write_marker("old", IMAGES_FOLDER.made_for)  # an earlier output: overwrite may replace it
    calls.clear()
    with pytest.raises(RuntimeError):
        write_stack("old", np.zeros((3, 4, 5)), overwrite=True)
    assert listing() == ["old"]
    assert listing("old") == [".facefinder", "img1.tif"]
    assert open("old/img1.tif", "rb").read() == b"previous"


# ---------------------------------------------------------------------------- write_stack


def test_write_stack_refuses_non_empty_folder_without_overwrite():
    os.mkdir("out")
    with open("out/keep.txt", "w") as f:
        f.write("x")
    # a folder facefinder did not make is never replaced, even with overwrite: said at once
    # (before: "pass overwrite=True", then refused with it)
    foreign = r"^out: holds files facefinder does not write there"
    with pytest.raises(InputError, match=foreign):
        write_stack("out", np.zeros((2, 3, 4)))
    assert listing("out") == ["keep.txt"]
    with pytest.raises(InputError, match=foreign):
        write_stack("out", np.ones((2, 3, 4)), overwrite=True)
    assert listing("out") == ["keep.txt"]
    os.remove("out/keep.txt")
    write_stack("out", np.zeros((2, 3, 4)))
    msg = r"^out: folder is not empty; pass overwrite=True to replace it$"
    with pytest.raises(InputError, match=msg):  # its own: overwrite would replace it
        write_stack("out", np.zeros((2, 3, 4)))
    write_stack("out", np.ones((2, 3, 4)), overwrite=True)  # its own folder: replaced
    assert listing("out") == [".facefinder", "img1.tif", "img2.tif"]
    assert load_stack("out").images.min() == 1
    assert listing() == ["out"]


def test_write_stack_into_empty_folder():
    os.mkdir("out")
    write_stack("out", np.ones((2, 3, 4)))
    assert listing("out") == [".facefinder", "img1.tif", "img2.tif"]


def test_write_stack_refuses_existing_file_without_overwrite():
    np.save("s.npy", np.zeros(1))
    with pytest.raises(
        InputError, match=r"^s\.npy: file exists; pass overwrite=True to replace it$"
    ):
        write_stack("s.npy", np.zeros((2, 3, 4)))
    write_stack("s.npy", np.ones((2, 3, 4)), overwrite=True)
    assert np.load("s.npy").shape == (2, 3, 4)


def test_write_stack_png_clips_and_counts():
    stack = np.array([[[-3.0, 10.4, 300.0]], [[255.0, 254.6, 0.0]]])
    assert write_stack("png", stack, fmt="png") == 2
    got = load_stack("png")
    assert got.images.tolist() == [[[0.0, 10.0, 255.0]], [[255.0, 255.0, 0.0]]]


def test_write_stack_uses_plain_names_and_numbers_otherwise():
    stack = np.zeros((3, 2, 2))
    write_stack("a", stack, names=["img2.png", "img10.png", "x11.png"])
    assert listing("a") == [".facefinder", "img10.tif", "img2.tif", "x11.tif"]
    assert load_stack("a").names == ("img2.tif", "img10.tif", "x11.tif")
    write_stack("b", stack, names=["s.npy[0]", "s.npy[1]", "s.npy[2]"])
    assert listing("b") == [".facefinder", "img1.tif", "img2.tif", "img3.tif"]


def test_write_stack_format_must_fit_path():
    msg = r"^s\.npy: the extension \.npy does not match format 'png'$"
    with pytest.raises(InputError, match=msg):
        write_stack("s.npy", np.zeros((1, 2, 2)), fmt="png")
    assert listing() == []


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_tiff_stack_has_one_grey_page_per_image(k):
    """3 or 4 images are not taken for the colour planes of one page."""
    stack = np.random.default_rng(k).normal(0, 300, (k, 5, 6)).astype(np.float32)
    write_stack("s.tif", stack)
    with tifffile.TiffFile("s.tif") as tif:
        assert len(tif.pages) == k
        assert all(p.photometric == 1 and p.samplesperpixel == 1 for p in tif.pages)
    np.testing.assert_array_equal(load_stack("s.tif").images, stack)
    buf = io.BytesIO()
    encode_stack(buf, stack, "tiff")
    assert buf.getvalue() == open("s.tif", "rb").read()


def test_generate_writes_a_tiff_stack_file(tmp_path):
    """Through outputs.atomic_files, whose files have a descriptor for a name: tifffile
    2026.3 failed on it ("cannot write ... initializing plugin tifffile")."""
    from helpers import ok

    ok("generate", "-n", 3, "--seed", 2, "-o", tmp_path / "s.tif", "-q")
    stack = tifffile.imread(tmp_path / "s.tif")
    assert stack.shape == (3, 72, 96) and stack.dtype == np.float32
    ok("pack", tmp_path / "s.tif", tmp_path / "again.npy", "-q")
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), stack)
