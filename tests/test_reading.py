"""Tests of facefinder_cli.images.reading: sources (folders, patterns, array files, TIFF
stacks) read into a Stack, the axis order of arrays, memory maps and the errors of each."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
import tifffile
from helpers import gray, listing, save_png
from PIL import Image

from facefinder_cli.errors import Hint
from facefinder_cli.images import (
    InputError,
    Stack,
    load_stack,
    natural_sort_key,
    read_image,
    write_stack,
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test inside its tmp_path so messages show short relative paths."""
    monkeypatch.chdir(tmp_path)


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


def test_folder_names_facefinders_own_truth_file_apart():
    save_png("imgs/img1.png", gray(value=1))
    np.savez("imgs/truth.npz", version=np.array("0.1.0"))  # as facefinder writes it
    (note,) = load_stack("imgs").notes
    assert note == (
        "not read: truth.npz, the truth of data made by facefinder generate "
        "(truth='imgs/truth.npz' measures the fit against it)"
    )
    assert note.hints == (Hint("truth", "imgs/truth.npz", command="fit"),)


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


# ---------------------------------------------------------------------------- layout


def test_layout_auto_detects_hwk_with_note():
    X = np.random.default_rng(6).normal(size=(20, 30, 500)).astype(np.float32)
    np.save("hwk.npy", X)
    got = load_stack("hwk.npy")
    assert got.images.shape == (500, 20, 30)
    np.testing.assert_array_equal(got.images[7], X[:, :, 7])
    assert got.notes == (
        "read hwk.npy as 500 images of 20x30 (H, W, K) from its shape; "
        "pass layout='khw' if the images are along the first axis",
    )
    assert got.notes[0].hints == (Hint("layout", "khw"),)  # the command line says --layout khw
    assert load_stack("hwk.npy", layout="khw").notes == ()


def test_layout_small_stack_of_wide_images_stays_khw():
    np.save("khw.npy", np.zeros((20, 30, 40)))
    got = load_stack("khw.npy")
    assert got.images.shape == (20, 30, 40)
    # The guess is said, with the way out: the axis order of a bare array is ambiguous.
    assert got.notes == (
        "read khw.npy as 20 images of 30x40 (K, H, W); "
        "pass layout='hwk' if the images are along the last axis",
    )
    assert got.notes[0].hints == (Hint("layout", "hwk"),)
    assert load_stack("khw.npy", layout="hwk").images.shape == (40, 20, 30)
    np.savez("own.npz", images=np.zeros((20, 30, 40)))  # facefinder's own key: no guess
    assert load_stack("own.npz").notes == ()


def test_a_stack_plainly_along_its_first_axis_is_read_without_a_note():
    """1000 images of 30x40 (a review: the note came with every .npy read, and drowned out
    the notes that matter): more than twice as many along the first axis as along either
    other is read as (K, H, W) unsaid, as the mirror case is read as (H, W, K)."""
    np.save("many.npy", np.zeros((81, 30, 40), dtype=np.float32))
    got = load_stack("many.npy")
    assert got.images.shape == (81, 30, 40) and got.notes == ()
    np.save("few.npy", np.zeros((80, 30, 40), dtype=np.float32))
    assert "(K, H, W); pass layout='hwk'" in load_stack("few.npy").notes[0]


def test_bad_layout_is_refused():
    np.save("s.npy", np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match=r"^layout: must be 'khw' or 'hwk', got 'kwh'$"):
        load_stack("s.npy", layout="kwh")


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


def test_folder_holding_only_stacks_names_them():
    """A folder with a stack but no image files: the error says which file to give."""
    os.mkdir("st")
    np.save("st/s.npy", np.zeros((2, 8, 8)))
    np.savez("st/s.truth.npz", x=0)  # a truth, not a stack
    msg = r"^st: no image files .* folder; it holds an image stack: give the file itself, st/s.npy$"
    with pytest.raises(InputError, match=msg):
        load_stack("st")
    os.mkdir("st/more.zarr")
    np.save("st/t.npy", np.zeros((2, 8, 8)))
    msg = r"it holds 3 image stacks: give one itself, e\.g\. st/more\.zarr, st/s\.npy, st/t\.npy$"
    with pytest.raises(InputError, match=msg):
        load_stack("st")


@pytest.mark.parametrize("how", ["load", "pack"])
def test_a_folder_replaced_while_it_is_read_is_refused(monkeypatch, how):
    """Files are opened by path one by one: a folder swapped for another of the same names
    (generate --overwrite renames the new one into place) gave a stack of both, exit 0."""
    from facefinder_cli.images import pack_stack, reading

    for folder, value in (("imgs", 10), ("new", 200)):
        for k in range(6):
            save_png(f"{folder}/img{k}.png", gray(8, 8, value))
    real, calls = reading._read_image_file, []

    def read(path, disp):
        calls.append(path)
        if len(calls) == 3:  # halfway: the folder is replaced
            os.rename("imgs", "old")
            os.rename("new", "imgs")
        return real(path, disp)

    monkeypatch.setattr(reading, "_read_image_file", read)
    with pytest.raises(InputError, match="^imgs: the folder was replaced while its images"):
        load_stack("imgs") if how == "load" else pack_stack("imgs", "p.npy")
    assert not os.path.exists("p.npy")
    calls.clear()
    monkeypatch.setattr(reading, "_read_image_file", real)
    assert (load_stack("imgs").images == 200).all()  # read again: the new one, whole


def _refused_as(how: str, pattern: str, msg: str) -> None:
    """The folder imgs/, read (``how``: "load", "pack" into p.npy, or "glob" by ``pattern``),
    is refused with ``msg``, and pack leaves nothing behind."""
    from facefinder_cli.images import pack_stack

    with pytest.raises(InputError, match=msg):
        if how == "pack":
            pack_stack("imgs", "p.npy")
        else:
            load_stack("imgs" if how == "load" else pattern)
    assert listing() == ["imgs"]


@pytest.mark.parametrize("how", ["load", "pack", "glob"])
def test_images_of_different_bit_depths_on_different_scales_are_refused(how):
    """Values are never rescaled: 8-bit images and 16-bit ones (here the same picture, x 257)
    read together are on two scales, which the stack cannot show; before, only a note said
    so."""
    for k in range(5):
        img = gray(8, 9, seed=k)
        save_png(f"imgs/img{k}.png", img if k % 2 else img.astype(np.uint16) * 257)
    msg = (
        r"^(imgs|imgs/\*\.png): images of different bit depths, whose values are on different "
        r"scales: 2 uint8 \(e\.g\. imgs/img1\.png; values \d+\.\.\d+\), 3 uint16 \(e\.g\. "
        r"imgs/img0\.png; values \d+\.\.\d+\); convert them to one bit depth \(8-bit values x "
        r"257 make 16-bit ones\)$"
    )
    _refused_as(how, "imgs/*.png", msg)


@pytest.mark.parametrize("how", ["load", "pack", "glob"])
def test_float_images_among_integer_ones_on_another_scale_are_refused(how):
    """Float TIFFs of values in 0..1 among 8-bit PNGs of the same pictures: fitted together
    they placed no face right at a mean probability of 0.99999, exit 0 (found in review)."""
    for k in range(4):
        img = gray(8, 9, seed=k)
        if k % 2:
            tifffile.imwrite(f"imgs/img{k}.tif", (img / 255).astype(np.float32))
        else:
            save_png(f"imgs/img{k}.png", img)
    msg = (
        r"^(imgs|imgs/img\*): float images among integer ones, whose values are on different "
        r"scales: 2 uint8 \(e\.g\. imgs/img0\.png; values \d+\.\.\d+\), 2 float \(e\.g\. "
        r"imgs/img1\.tif; values 0\.\.0\.\d+\); convert them to one scale"
    )
    _refused_as(how, "imgs/img*", msg)
    for k in (1, 3):  # the same pictures in 0..255: one scale, read as they are
        tifffile.imwrite(f"imgs/img{k}.tif", gray(8, 9, seed=k).astype(np.float32))
    stack = load_stack("imgs")
    for k in range(4):
        np.testing.assert_array_equal(stack.images[k], gray(8, 9, seed=k))


def test_16_bit_images_of_8_bit_values_share_the_8_bit_scale():
    """16-bit files whose values all lie in 0..255 among 8-bit ones: every file could have been
    8-bit with the same values, so they are read as they are, and a note says why."""
    for k in range(4):
        img = gray(8, 9, seed=k)
        save_png(f"imgs/img{k}.png", img if k % 2 else img.astype(np.uint16))
    stack = load_stack("imgs")
    for k in range(4):
        np.testing.assert_array_equal(stack.images[k], gray(8, 9, seed=k))
    assert stack.notes == (
        "the images have different bit depths (uint16, uint8), but all their values lie in "
        "0..255, which each holds: read on one scale",
    )
    save_png("imgs/img9.png", np.full((8, 9), 256, np.uint16))  # one value beyond 8 bits
    with pytest.raises(InputError, match=r"^imgs: images of different bit depths"):
        load_stack("imgs")


def test_glob_without_match():
    with pytest.raises(InputError, match=r"^imgs/\*\.png: no image files match this pattern$"):
        load_stack("imgs/*.png")


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


def test_a_folder_of_images_clipped_at_the_ends_of_their_bit_depth_says_so():
    """Noise cut off at 0 and 255 biases the fit (its noise std low: half the true one where
    56% of the values were cut, on a scene made from photographs); a folder where 5% or more
    of the values sit at the ends says so. A few (the bundled sample: 1.3%) pass quietly."""
    rng = np.random.default_rng(0)
    for name, noise in (("cut", 150.0), ("fine", 25.0)):
        for k in range(4):
            img = np.clip(np.rint(rng.normal(128, noise, (20, 30))), 0, 255).astype(np.uint8)
            save_png(f"{name}/img{k}.png", img)
    notes = load_stack("cut").notes
    (note,) = [n for n in notes if "ends of their bit depth" in n]
    assert note.startswith("40% of the values of the uint8 images are 0 or 255"), note
    assert "noise std comes out low" in note
    assert not any("ends of their bit depth" in n for n in load_stack("fine").notes)
