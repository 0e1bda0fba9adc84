"""Tests of facefinder_cli.images.decoding: single image files (PNG, JPEG, BMP, TIFF) read as
grey, the conversions said in notes, and unreadable files refused in one line."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tifffile
from helpers import gray, save_png
from PIL import Image

from facefinder_cli.images import InputError, load_stack, write_stack


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test inside its tmp_path so messages show short relative paths."""
    monkeypatch.chdir(tmp_path)


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


# ---------------------------------------------------------------------------- kept through imageio


def png_chunk(kind, data):
    body = kind + data
    return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")


def raw_png(path, array, depth, colour_type, width=None, height=None):
    """A PNG written byte by byte (Pillow writes no 16-bit colour PNG); width and height, when
    given, are what the header claims."""
    a = np.asarray(array)
    h, w = a.shape[:2]
    header = struct.pack(">IIBBBBB", width or w, height or h, depth, colour_type, 0, 0, 0)
    rows = a.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header))
        f.write(png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def luminance(rgb):
    r, g, b = (rgb[..., i] for i in range(3))
    return 0.299 * r.astype(np.float64) + 0.587 * g + 0.114 * b


def test_decompression_bomb_is_refused_in_one_line():
    raw_png("bomb.png", np.zeros((1, 1), np.uint8), 8, 0, width=20_000, height=20_000)
    msg = r"^bomb\.png: cannot read image \(too many pixels: .*decompression bomb[^\n]*\)$"
    with pytest.raises(InputError, match=msg):
        load_stack("bomb.png")


def test_sixteen_bit_colour_png_comes_at_8_bits_with_a_note():
    rgb = np.random.default_rng(10).integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    raw_png("c16.png", rgb, 16, 2)
    got = load_stack("c16.png")
    np.testing.assert_array_equal(got.images[0], luminance((rgb >> 8).astype(np.uint8)))
    assert got.notes == (
        "converted 1 colour image to grayscale (luminance)",
        "read 1 16-bit colour PNG image at 8-bit precision (0..255): Pillow cannot decode them "
        "at 16 bits",
    )


def test_grey_with_alpha_keeps_its_grey_values():
    g = gray(seed=11)
    Image.fromarray(np.dstack([g, np.full_like(g, 9)])).save("la.png")
    assert Image.open("la.png").mode == "LA"
    got = load_stack("la.png")
    np.testing.assert_array_equal(got.images[0], g)
    assert got.notes == ("dropped the alpha (transparency) channel of 1 image",)


def test_palette_with_transparency_is_expanded_and_its_alpha_dropped():
    img = Image.new("P", (2, 2))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putdata([0, 1, 1, 0])
    img.save("pt.png", transparency=1)
    got = load_stack("pt.png")
    red, blue = [255, 0, 0], [0, 0, 255]
    want = luminance(np.array([[red, blue], [blue, red]], dtype=np.uint8))
    np.testing.assert_array_equal(got.images[0], want)
    assert got.notes == (
        "converted 1 colour image to grayscale (luminance)",
        "expanded the colour palette of 1 image",
        "dropped the alpha (transparency) channel of 1 image",
    )


def test_exif_orientation_is_not_applied():
    """Images are read as stored: a camera's orientation tag would turn some images of a stack
    and not others."""
    g = gray(6, 7, seed=12)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(g).save("o.png", exif=exif.tobytes())
    Image.fromarray(np.dstack([g, g, g])).save("o.jpg", exif=exif.tobytes(), quality=100)
    np.testing.assert_array_equal(load_stack("o.png").images[0], g)
    assert load_stack("o.jpg").images.shape == (1, 6, 7)


def test_cmyk_jpeg_becomes_the_luminance_of_its_rgb():
    Image.fromarray(
        np.random.default_rng(13).integers(0, 256, (8, 8, 4)).astype(np.uint8), mode="CMYK"
    ).save("k.jpg")
    want = luminance(np.asarray(Image.open("k.jpg").convert("RGB")))
    np.testing.assert_array_equal(load_stack("k.jpg").images[0], want)


def test_white_is_zero_and_palette_tiffs():
    a = np.random.default_rng(14).integers(0, 65536, (5, 6)).astype(np.uint16)
    tifffile.imwrite("w.tif", a, photometric="miniswhite")
    got = load_stack("w.tif")
    np.testing.assert_array_equal(got.images[0], 65535.0 - a)
    assert got.notes == ("inverted 1 white-is-zero TIFF image",)
    cmap = np.random.default_rng(15).integers(0, 65536, (3, 256)).astype(np.uint16)
    idx = gray(5, 6, seed=16)
    tifffile.imwrite("p.tif", idx, photometric="palette", colormap=cmap)
    got = load_stack("p.tif")
    np.testing.assert_array_equal(got.images[0], luminance(cmap.T[idx] / 257.0))
    assert "expanded the colour palette of 1 image" in got.notes


def test_a_grey_palette_tiff_from_pillow_reads_its_grey_levels_exactly():
    """Pillow stores a TIFF's 16-bit colour map as 8-bit values times 256, not 257: 219 was
    read as 218.15 (found in review)."""
    idx = np.arange(220, dtype=np.uint8).reshape(11, 20)
    img = Image.fromarray(idx, mode="L").convert("P")
    img.putpalette([v for i in range(256) for v in (i, i, i)])
    img.save("p.tif")
    got = load_stack("p.tif")
    np.testing.assert_array_equal(got.images[0], idx.astype(float))


def test_multipage_lzw_tiff_is_read_page_by_page_by_pillow():
    pages = [gray(5, 6, seed=s) for s in range(3)]
    first, *rest = (Image.fromarray(p) for p in pages)
    first.save("m.tif", save_all=True, append_images=rest, compression="tiff_lzw")
    got = load_stack("m.tif")
    np.testing.assert_array_equal(got.images, np.stack(pages))
    assert got.names == ("m.tif[0]", "m.tif[1]", "m.tif[2]")


@pytest.mark.parametrize("name", ["d.zip/img.png", "imageio:chelsea.png", "~x.png"])
def test_paths_that_look_like_urls_or_zip_members_are_plain_files(name):
    save_png(name, gray(value=21))
    np.testing.assert_array_equal(load_stack(name).images[0], gray(value=21))
