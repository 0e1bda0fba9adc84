"""Tests of facefinder_cli.images.decoding: single image files (PNG, JPEG, BMP, TIFF) read as
grey, the conversions said in notes, and unreadable files refused in one line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from facefinder_cli.images import InputError, load_stack, write_stack


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test inside its tmp_path so messages show short relative paths."""
    monkeypatch.chdir(tmp_path)


def save_png(path, array, mode=None):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = Image.fromarray(np.asarray(array))
    if mode is not None:
        img = img.convert(mode)
    img.save(path)


def gray(h=6, w=7, value=None, seed=0):
    if value is not None:
        return np.full((h, w), value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


def listing(folder="."):
    return sorted(os.listdir(folder))


def test_multipage_tiff_file():
    stack = np.random.default_rng(3).normal(size=(5, 4, 3)).astype(np.float32)
    tifffile.imwrite("s.tif", stack, photometric="minisblack")
    got = load_stack("s.tif")
    np.testing.assert_array_equal(got.images, stack)
    assert got.names == tuple(f"s.tif[{k}]" for k in range(5))
    write_stack("t.tiff", stack)
    np.testing.assert_array_equal(load_stack("t.tiff").images, stack)


def test_lzw_tiff_falls_back_to_pillow():
    a = gray(8, 9, seed=9)
    Image.fromarray(a).save("lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(load_stack("lzw.tif").images[0], a)


# ---------------------------------------------------------------------------- conversions


def test_colour_becomes_luminance():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    save_png("imgs/c1.png", rgb)
    save_png("imgs/c2.png", rgb[..., ::-1].copy())
    got = load_stack("imgs")
    assert got.images[0, 0, 0] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert got.images[1, 0, 0] == pytest.approx(0.299 * 50 + 0.587 * 100 + 0.114 * 200)
    assert "converted 2 colour images to grayscale (luminance)" in got.notes


def test_grey_stored_as_rgb_keeps_exact_values():
    g = gray(seed=5)
    save_png("g.png", np.stack([g, g, g], axis=-1))
    got = load_stack("g.png")
    np.testing.assert_array_equal(got.images[0], g)
    assert not any("colour" in n for n in got.notes)


def test_rgba_alpha_is_dropped():
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 7
    save_png("a.png", rgba)
    got = load_stack("a.png")
    assert got.images[0, 1, 1] == pytest.approx(0.299 * 10 + 0.587 * 20 + 0.114 * 30)
    assert any("alpha" in n for n in got.notes)


def test_palette_image_is_expanded():
    img = Image.new("P", (2, 2))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putdata([0, 1, 1, 0])
    img.save("p.png")
    assert Image.open("p.png").mode == "P"
    got = load_stack("p.png")
    assert got.images[0, 0, 0] == pytest.approx(0.299 * 255)
    assert got.images[0, 0, 1] == pytest.approx(0.114 * 255)
    assert any("palette" in n for n in got.notes)


def test_sixteen_bit_png_keeps_values_above_255():
    a = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(a).save("d.png")
    got = load_stack("d.png")
    np.testing.assert_array_equal(got.images[0], a)
    assert got.images.max() == 57000


def test_one_bit_image_reads_as_0_and_255():
    b = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    Image.fromarray(b).save("b.png")
    assert Image.open("b.png").mode == "1"
    np.testing.assert_array_equal(load_stack("b.png").images[0], b * 255.0)


# ---------------------------------------------------------------------------- errors


def test_zero_byte_image():
    save_png("imgs/a.png", gray())
    open("imgs/b.png", "wb").close()
    msg = r"^imgs/b\.png: cannot read image \(empty file, 0 bytes\)$"
    with pytest.raises(InputError, match=msg):
        load_stack("imgs")


def test_text_file_with_image_extension():
    save_png("imgs/a.png", gray())
    with open("imgs/x.png", "w") as f:
        f.write("this is not an image\n")
    with pytest.raises(InputError, match=r"^imgs/x\.png: cannot read image \(not an image file"):
        load_stack("imgs")


def test_truncated_png():
    save_png("imgs/a.png", gray(40, 50, seed=1))
    data = open("imgs/a.png", "rb").read()
    with open("imgs/b.png", "wb") as f:
        f.write(data[: len(data) // 2])
    msg = r"^imgs/b\.png: cannot read image \(truncated or corrupt file\)$"
    with pytest.raises(InputError, match=msg):
        load_stack("imgs")


def test_truncated_tiff():
    tifffile.imwrite("s.tif", np.zeros((4, 30, 30), np.float32), photometric="minisblack")
    data = open("s.tif", "rb").read()
    with open("s.tif", "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"^s\.tif: cannot read image \("):
        load_stack("s.tif")
