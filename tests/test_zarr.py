"""Zarr stacks (issue 15): packed by ``pack``, read on demand by fit and detect, kept safe as
every output is."""

from __future__ import annotations

import os
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import cli, ok

from facefinder_cli.images import (
    InputError,
    ZarrReader,
    load_stack,
    pack_stack,
    write_stack,
)

zarr = pytest.importorskip("zarr", reason="the [dask] extra is not installed")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def png_folder(folder="imgs", k=150, names=None, size=(64, 48)):
    """K 8-bit images as PNGs, named img1..imgK or ``names`` (stems); their values."""
    arr = np.random.default_rng(0).integers(0, 256, (k, *size)).astype(np.uint8)
    if names is None:
        write_stack(folder, arr, names=[f"img{i}" for i in range(1, k + 1)], fmt="png")
    else:  # names that write_stack would not use
        os.mkdir(folder)
        for name, img in zip(names, arr):
            iio.imwrite(os.path.join(folder, name + ".png"), img)
    return arr


def test_pack_into_zarr_and_read_it_back():
    arr = png_folder()
    seen = []
    got = pack_stack("imgs", "s.zarr", progress=lambda *a: seen.append(a))
    assert seen[-1] == (150, 150)
    assert isinstance(got.images, ZarrReader) and got.images.shape == (150, 64, 48)
    # chunks of 85 whole images (as many pixels as the engine's chunks), files at the top of
    # the folder, beside Zarr's metadata
    assert sorted(os.listdir("s.zarr")) == [".facefinder", "0.0.0", "1.0.0", "zarr.json"]
    back = load_stack("s.zarr")
    assert back.names[:2] == ("img1.png", "img2.png") and len(back.names) == 150
    np.testing.assert_array_equal(back.images[0:150], arr.astype(np.float32))
    np.testing.assert_array_equal(back.images[[3, 140]], arr[[3, 140]])
    np.testing.assert_array_equal(back.images[7], arr[7])


def test_odd_names_and_skipped_files_survive_the_round_trip():
    odd = ["a,b", "line\nbreak", "ü"]
    arr = png_folder(k=3, names=odd)
    with open("imgs/broken.png", "wb") as f:
        f.write(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        pack_stack("imgs", "s.zarr")
    assert not os.path.exists("s.zarr") and os.listdir(".") == ["imgs"]  # nothing left
    got = pack_stack("imgs", "s.zarr", skip_unreadable=True)
    assert any("skipped 1 unreadable file" in n for n in got.notes)
    back = load_stack("s.zarr")
    assert back.images.shape == (3, 64, 48)
    assert set(back.names) == {n + ".png" for n in odd}
    order = [odd.index(n[:-4]) for n in back.names]
    np.testing.assert_array_equal(back.images[0:3], arr[order])


def test_a_zarr_folder_is_replaced_only_when_pack_made_it():
    png_folder(k=5)
    pack_stack("imgs", "s.zarr")
    with pytest.raises(InputError, match="folder is not empty"):
        pack_stack("imgs", "s.zarr")
    pack_stack("imgs", "s.zarr", overwrite=True)
    with open("s.zarr/notes.txt", "w") as f:
        f.write("mine")
    with pytest.raises(InputError, match=r"does not write there \(notes.txt\)"):
        pack_stack("imgs", "s.zarr", overwrite=True)
    assert open("s.zarr/notes.txt").read() == "mine"
    zarr.create_array("theirs.zarr", shape=(2, 64, 48), dtype="f4", chunk_key_encoding={
        "name": "v2", "separator": "."})  # fmt: skip
    with pytest.raises(InputError, match="was not made by facefinder"):
        pack_stack("imgs", "theirs.zarr", overwrite=True)
    assert zarr.open_array("theirs.zarr").shape == (2, 64, 48)


def test_zarr_inputs_that_cannot_be_read_are_one_line():
    group = zarr.open_group("g.zarr", mode="w")
    group.create_array("other", shape=(2, 3, 4), dtype="f4")
    with pytest.raises(InputError, match="^g.zarr: a Zarr group without an array named images"):
        load_stack("g.zarr")  # named as given, not by its absolute path
    group.create_array("images", shape=(2, 3, 4), dtype="f4")
    with pytest.raises(InputError, match="1 of its 1 chunks are missing"):
        load_stack("g.zarr")  # never written: Zarr would read zeros
    group["images"][:] = 7
    assert load_stack("g.zarr").images.shape == (2, 3, 4)
    zarr.create_array("flat.zarr", shape=(3, 4), dtype="f4")
    with pytest.raises(InputError, match=r"shape \(3, 4\); expected \(n_images"):
        load_stack("flat.zarr")
    with pytest.raises(InputError, match="--layout hwk is for"):
        load_stack("g.zarr", "hwk")


def test_fit_and_detect_read_a_zarr_stack_from_the_command_line(monkeypatch):
    ok("generate", "-n", 40, "--face-size", "8x8", "--size", "12x16", "--noise", 20, "-o", "d")
    ok("pack", "d", "d.zarr", "-q")
    ok("fit", "d.zarr", "--face-size", "8x8", "-o", "run", "-q", "--no-plots")
    with open("run/positions.csv", encoding="utf-8") as f:
        assert f.readline() == "image,row,column,probability\n"
        assert f.readline().startswith("img")  # the names packed with the images
    ok("detect", "run", "d.zarr", "-o", "found.csv")
    ok("fit", "d", "--face-size", "8x8", "-o", "from_folder", "-q", "--no-plots")
    a, b = np.load("run/result.npz"), np.load("from_folder/result.npz")
    np.testing.assert_allclose(a["face"], b["face"])  # float32 packing holds 8-bit values
    monkeypatch.setitem(sys.modules, "zarr", None)  # the [dask] extra missing
    r = cli("fit", "d.zarr", "--face-size", "8x8", "-o", "r2")
    assert r.exit_code == 1 and "pip install 'facefinder[dask]'" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and not os.path.exists("r2")
