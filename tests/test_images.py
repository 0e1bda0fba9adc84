"""Tests of facefinder_cli.images: reading stacks and images, writing PNGs and stacks."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from facefinder_cli import images as im
from facefinder_cli.images import (
    InputError,
    Stack,
    load_stack,
    natural_sort_key,
    read_image,
    to_uint8,
    write_png,
    write_stack,
)
from facefinder_cli.outputs import atomic_write, write_marker


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


# ---------------------------------------------------------------------------- sorting


def test_natural_sort_key_orders_numbers_by_value():
    names = ["img10.png", "img2.png", "Img3.png", "img1.png", "img02b.png"]
    assert sorted(names, key=natural_sort_key) == [
        "img1.png",
        "img2.png",
        "img02b.png",
        "Img3.png",
        "img10.png",
    ]


# ---------------------------------------------------------------------------- round trips


def test_float_tiff_folder_round_trip_is_exact():
    rng = np.random.default_rng(1)
    stack = rng.normal(0, 500, (12, 5, 6)).astype(np.float32)
    stack[0, 0, 0], stack[1, 0, 0] = -3.25, 1000.5
    assert write_stack("out", stack) == 0
    assert listing("out") == [".facefinder"] + [f"img{k:02d}.tif" for k in range(1, 13)]
    got = load_stack("out")
    assert isinstance(got, Stack)
    assert got.images.dtype == np.float64 and got.images.flags.c_contiguous
    np.testing.assert_array_equal(got.images, stack)
    assert got.names == tuple(f"img{k:02d}.tif" for k in range(1, 13))
    assert got.source == "out"
    assert got.notes == ()


def test_folder_reads_in_natural_order_and_ignores_other_files():
    for k in (1, 2, 10):
        save_png(f"imgs/img{k}.png", gray(value=k))
    np.savez("imgs/truth.npz", face=np.zeros(3))
    with open("imgs/README", "w") as f:
        f.write("notes")
    got = load_stack("imgs")
    assert got.names == ("img1.png", "img2.png", "img10.png")
    assert got.images[:, 0, 0].tolist() == [1.0, 2.0, 10.0]
    assert "ignored 2 non-image files: README, truth.npz" in got.notes


def test_folder_extensions_are_case_insensitive_and_include_jpg_bmp():
    save_png("imgs/a1.PNG", gray(value=10))
    Image.fromarray(gray(value=20)).save("imgs/a2.bmp")
    Image.fromarray(gray(value=30)).save("imgs/a3.JPG", quality=100)
    got = load_stack("imgs")
    assert got.names == ("a1.PNG", "a2.bmp", "a3.JPG")
    assert got.images.shape == (3, 6, 7)
    assert abs(got.images[2].mean() - 30) < 1


def test_npy_round_trip_keeps_dtype_and_values():
    stack = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    write_stack("s.npy", stack)
    assert np.load("s.npy").dtype == np.float32
    got = load_stack("s.npy")
    assert got.images.dtype == np.float64
    np.testing.assert_array_equal(got.images, stack)
    assert got.names == tuple(f"s.npy[{k}]" for k in range(4))


def test_npy_2d_is_one_image():
    np.save("one.npy", np.arange(12.0).reshape(3, 4))
    got = load_stack("one.npy")
    assert got.images.shape == (1, 3, 4) and got.names == ("one.npy",)


def test_npz_round_trip_with_names():
    stack = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    write_stack("s.npz", stack, names=["a.png", "b.png"])
    with np.load("s.npz") as z:
        assert set(z.files) == {"images", "names"}
    got = load_stack("s.npz")
    np.testing.assert_array_equal(got.images, stack)
    assert got.names == ("a.png", "b.png")


def test_npz_key_choice_x_then_only_array():
    a = np.ones((2, 3, 4))
    np.savez("x.npz", X=a, other=np.zeros((2, 2)))
    assert load_stack("x.npz").images.shape == (2, 3, 4)
    np.savez("only.npz", data=2 * a)
    assert load_stack("only.npz").images[0, 0, 0] == 2.0


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


def test_folder_skips_hidden_files():
    save_png("imgs/img1.png", gray(value=3))
    with open("imgs/._img1.png", "wb") as f:
        f.write(b"\x00\x05\x16\x07 AppleDouble")
    got = load_stack("imgs")
    assert got.names == ("img1.png",) and got.notes == ()


def test_mat_file_hwk_is_transposed():
    X = np.random.default_rng(4).normal(size=(6, 7, 3))
    scipy.io.savemat("data.mat", {"X": X, "other": np.zeros(2)})
    got = load_stack("data.mat")
    assert got.images.shape == (3, 6, 7)
    for k in range(3):
        np.testing.assert_array_equal(got.images[k], X[:, :, k])
    assert load_stack("data.mat", layout="khw").images.shape == (6, 7, 3)


def test_mat_file_only_variable_is_used():
    scipy.io.savemat("y.mat", {"images": np.ones((4, 5, 2))})
    assert load_stack("y.mat").images.shape == (2, 4, 5)


def test_glob_pattern():
    for k in (1, 2, 10):
        save_png(f"imgs/img{k}.png", gray(value=k))
    save_png("imgs/other.png", gray(value=99))
    got = load_stack("imgs/img*.png")
    assert got.names == ("img1.png", "img2.png", "img10.png")
    assert got.images[:, 0, 0].tolist() == [1.0, 2.0, 10.0]


def test_read_image_single_file():
    save_png("face.png", gray(4, 5, value=77))
    face = read_image("face.png")
    assert face.shape == (4, 5) and face.dtype == np.float64 and face[0, 0] == 77.0


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


# ---------------------------------------------------------------------------- layout


def test_layout_auto_detects_hwk_with_note():
    X = np.random.default_rng(6).normal(size=(20, 30, 500)).astype(np.float32)
    np.save("hwk.npy", X)
    got = load_stack("hwk.npy")
    assert got.images.shape == (500, 20, 30)
    np.testing.assert_array_equal(got.images[7], X[:, :, 7])
    assert got.notes == (
        "read hwk.npy as 500 images of 20x30 (H, W, K) from its shape; "
        "pass --layout khw if the images are along the first axis",
    )
    assert load_stack("hwk.npy", layout="khw").notes == ()


def test_layout_small_stack_of_wide_images_stays_khw():
    np.save("khw.npy", np.zeros((20, 30, 40)))
    got = load_stack("khw.npy")
    assert got.images.shape == (20, 30, 40)
    # The guess is said, with the way out: the axis order of a bare array is ambiguous.
    assert got.notes == (
        "read khw.npy as 20 images of 30x40 (K, H, W); "
        "pass --layout hwk if the images are along the last axis",
    )
    assert load_stack("khw.npy", layout="hwk").images.shape == (40, 20, 30)
    np.savez("own.npz", images=np.zeros((20, 30, 40)))  # facefinder's own key: no guess
    assert load_stack("own.npz").notes == ()


def test_bad_layout_is_refused():
    np.save("s.npy", np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match=r"^layout: must be 'khw' or 'hwk', got 'kwh'$"):
        load_stack("s.npy", layout="kwh")


# ---------------------------------------------------------------------------- mmap


def test_mmap_returns_memmap_without_copy():
    stack = np.random.default_rng(7).normal(size=(6, 4, 5)).astype(np.float32)
    np.save("s.npy", stack)
    got = load_stack("s.npy", mmap=True)
    assert isinstance(got.images, np.memmap) and got.images.dtype == np.float32
    np.testing.assert_array_equal(got.images, stack)
    hwk = load_stack("s.npy", layout="hwk", mmap=True)
    assert not isinstance(hwk.images, np.memmap) and hwk.images.dtype == np.float64


def test_mmap_finite_check_works_in_chunks(monkeypatch):
    stack = np.zeros((10, 4, 5))
    stack[7, 2, 3] = np.inf
    np.save("s.npy", stack)
    monkeypatch.setattr(im, "_CHUNK_BYTES", 2 * stack[0].nbytes)  # 2 images per chunk
    msg = r"^s\.npy: image 7 \(counting from 0\) contains infinite values$"
    with pytest.raises(InputError, match=msg):
        load_stack("s.npy", mmap=True)


# ---------------------------------------------------------------------------- errors


def test_missing_path():
    with pytest.raises(InputError, match=r"^nope/imgs: no such file or folder$"):
        load_stack("nope/imgs")


def test_empty_folder():
    os.mkdir("empty")
    with open("empty/notes.txt", "w") as f:
        f.write("x")
    msg = r"^empty: no image files \(png, jpg, jpeg, tif, tiff, bmp\) in this folder$"
    with pytest.raises(InputError, match=msg):
        load_stack("empty")


def test_glob_without_match():
    with pytest.raises(InputError, match=r"^imgs/\*\.png: no image files match this pattern$"):
        load_stack("imgs/*.png")


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


def test_mixed_sizes_names_offender_and_first_image():
    for k in range(1, 8):
        save_png(f"imgs/img{k}.png", gray(40, 50 if k == 7 else 60))
    msg = r"^imgs/img7\.png: size 40x50 differs from 40x60 of imgs/img1\.png$"
    with pytest.raises(InputError, match=msg):
        load_stack("imgs")


def test_mixed_sizes_in_tiff_pages():
    os.mkdir("d")
    with tifffile.TiffWriter("d/m.tif") as w:
        w.write(np.zeros((8, 9), np.float32))
        w.write(np.zeros((8, 10), np.float32))
    msg = r"^d/m\.tif\[1\]: size 8x10 differs from 8x9 of d/m\.tif\[0\]$"
    with pytest.raises(InputError, match=msg):
        load_stack("d/m.tif")


def test_multipage_tiff_in_folder_is_refused():
    os.mkdir("imgs")
    tifffile.imwrite("imgs/s.tif", np.zeros((3, 4, 5), np.float32), photometric="minisblack")
    with pytest.raises(InputError, match=r"^imgs/s\.tif: holds 3 images"):
        load_stack("imgs")


def test_nan_in_npy_names_file_and_index():
    a = np.zeros((5, 3, 4))
    a[3, 1, 1] = np.nan
    np.save("data.npy", a)
    with pytest.raises(InputError, match=r"^data\.npy: image 3 \(counting from 0\) contains NaN$"):
        load_stack("data.npy")


def test_nan_in_float_tiff_in_folder_names_file():
    a = np.zeros((3, 4), np.float32)
    write_stack("imgs", np.stack([a, a]))
    a[1, 1] = np.nan
    tifffile.imwrite("imgs/img2.tif", a)
    with pytest.raises(InputError, match=r"^imgs/img2\.tif: contains NaN$"):
        load_stack("imgs")


def test_mat_without_x_lists_variables():
    scipy.io.savemat("d.mat", {"a": np.zeros((2, 2)), "b": np.ones((3, 3))})
    with pytest.raises(InputError, match=r"^d\.mat: no variable X among a, b; "):
        load_stack("d.mat")


def test_mat_v73_is_explained():
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    with open("v73.mat", "wb") as f:
        f.write(header.ljust(512, b"\0"))
    with pytest.raises(InputError, match=r"^v73\.mat: MATLAB v7\.3 \(HDF5\).*'-v7'.*\.npy$"):
        load_stack("v73.mat")


def test_object_array_is_refused():
    np.save("o.npy", np.array([[1, "a"], [2, None]], dtype=object), allow_pickle=True)
    msg = r"^o\.npy: array holds Python objects \(dtype object\), not numbers$"
    with pytest.raises(InputError, match=msg):
        load_stack("o.npy")


def test_complex_and_4d_arrays_are_refused_bool_and_int_accepted():
    np.save("c.npy", np.zeros((2, 3, 4), complex))
    with pytest.raises(InputError, match=r"^c\.npy: array holds complex numbers"):
        load_stack("c.npy")
    np.save("q.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(InputError, match=r"^q\.npy: array of shape \(2, 3, 4, 5\) is not 2-D"):
        load_stack("q.npy")
    np.save("b.npy", np.ones((2, 3, 4), bool))
    np.save("i.npy", np.full((2, 3, 4), -7, np.int16))
    assert load_stack("b.npy").images.sum() == 24
    assert load_stack("i.npy").images[0, 0, 0] == -7.0


def test_npz_with_several_arrays_lists_keys():
    np.savez("z.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"^z\.npz: no array named 'images' or 'X' among a, b"):
        load_stack("z.npz")


def test_read_image_refuses_a_stack():
    np.save("s.npy", np.zeros((3, 4, 5)))
    with pytest.raises(InputError, match=r"^s\.npy: holds 3 images; expected a single image$"):
        read_image("s.npy")


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
    monkeypatch.setattr(im, "_encode_png", _failing_encoder)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_png("face.png", np.zeros((3, 3)))
    assert listing() == []


def test_failed_png_write_keeps_existing_file(monkeypatch):
    with open("face.png", "wb") as f:
        f.write(b"old content")
    monkeypatch.setattr(im, "_encode_png", _failing_encoder)
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

    monkeypatch.setattr(im.np, "save", boom)
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

    monkeypatch.setattr(im, "_encode_tiff", fail_second)
    with pytest.raises(RuntimeError):
        write_stack("out", np.zeros((3, 4, 5)))
    assert listing() == []

    os.mkdir("old")
    write_marker("old", im.IMAGES_FOLDER.made_for)  # an earlier output: overwrite may replace it
    with open("old/img1.tif", "wb") as f:
        f.write(b"previous")
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
    msg = r"^out: folder is not empty; pass --overwrite to replace it$"
    with pytest.raises(InputError, match=msg):
        write_stack("out", np.zeros((2, 3, 4)))
    assert listing("out") == ["keep.txt"]
    # a folder facefinder did not make is never replaced, even with overwrite
    with pytest.raises(InputError, match=r"^out: holds files facefinder does not write there"):
        write_stack("out", np.ones((2, 3, 4)), overwrite=True)
    assert listing("out") == ["keep.txt"]
    os.remove("out/keep.txt")
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
    with pytest.raises(InputError, match=r"^s\.npy: file exists; pass --overwrite to replace it$"):
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
