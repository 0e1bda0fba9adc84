"""Hostile inputs are refused cleanly; numbers at extremes stay finite; fuzzed files never crash.

Each refusal is one line on stderr with its exact text, exit status 1 or 2, no traceback and
no output left behind.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facefinder_cli import engine as E
from facefinder_cli.cli import main
from facefinder_cli.images import InputError, load_stack

RNG = np.random.default_rng(0)
HOSTILE = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def good(path):
    iio.imwrite(path, RNG.integers(0, 255, (24, 32)).astype(np.uint8))


def folder(name, files):
    os.makedirs(name)
    for file, write in files.items():
        write(os.path.join(name, file))
    return name


def truncated(path):
    good(path)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def fit(*args):
    return CliRunner().invoke(main, ["fit", *map(str, args), "-o", "out", "--max-iter", "5"])


def one_line(result, code, text):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [text]
    assert not Path("out").exists()


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# --- refused, with their exact messages --------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: folder("z", {"a1.png": good, "a2.png": lambda p: open(p, "wb").close()}),
            "Error: z/a2.png: cannot read image (empty file, 0 bytes)",
        ),
        (
            lambda: folder("t", {"a1.png": good, "a2.png": truncated}),
            "Error: t/a2.png: cannot read image (truncated or corrupt file)",
        ),
        (
            lambda: folder("x", {"a1.png": good, "a2.png": lambda p: Path(p).write_text("hello")}),
            "Error: x/a2.png: cannot read image (not an image file: it holds text)",
        ),
        (
            lambda: folder(
                "m",
                {"a1.png": good, "a2.png": lambda p: iio.imwrite(p, np.zeros((20, 32), np.uint8))},
            ),
            "Error: m/a2.png: size 20x32 differs from 24x32 of m/a1.png",
        ),
        (
            lambda: (
                np.save(
                    "nan.npy",
                    np.where(
                        np.arange(5)[:, None, None] == 3, np.nan, RNG.normal(size=(5, 24, 32))
                    ),
                )
                or "nan.npy"
            ),
            "Error: nan.npy: image 3 (counting from 0) contains NaN",
        ),
        (
            lambda: (
                np.save(
                    "inf.npy",
                    np.where(
                        np.arange(5)[:, None, None] == 1, np.inf, RNG.normal(size=(5, 24, 32))
                    ),
                )
                or "inf.npy"
            ),
            "Error: inf.npy: image 1 (counting from 0) contains infinite values",
        ),
        (
            lambda: (
                scipy.io.savemat("v.mat", {"Y": np.zeros((3, 3, 3)), "Z": np.ones(2)}) or "v.mat"
            ),
            "Error: v.mat: no variable X among Y, Z; save the images as X (height x width x number "
            "of images)",
        ),
    ],
    ids=["zero-byte", "truncated", "text", "mixed-sizes", "nan", "inf", "mat-without-X"],
)
def test_bad_inputs_are_one_line(make, message):
    one_line(fit(make(), "--face-size", "6x6"), 1, message)


def test_images_of_different_bit_depths_are_refused_by_fit_and_detect():
    """8-bit and 16-bit images in one folder hold values on two scales (an 8-bit 200 is about
    a 16-bit 51400): read as one they gave a garbage fit, exit 0, said only in a note that -q
    hid. Now one line naming the folder, each depth's count and an example, and the remedy."""
    ramp = np.arange(24 * 32).reshape(24, 32) % 200 + 20
    folder(
        "b",
        {
            "a1.png": lambda p: iio.imwrite(p, ramp.astype(np.uint8)),
            "a2.png": lambda p: iio.imwrite(p, (ramp * 257).astype(np.uint16)),
            "a3.png": lambda p: iio.imwrite(p, ramp[::-1].astype(np.uint8)),
        },
    )
    message = (
        "Error: b: images of different bit depths, whose values are on different scales: "
        "2 uint8 (e.g. b/a1.png; values 20..219), 1 uint16 (e.g. b/a2.png; values "
        "5140..56283); convert them to one bit depth (8-bit values x 257 make 16-bit ones)"
    )
    one_line(fit("b", "--face-size", "6x6", "-q"), 1, message)
    folder("g", {f"a{i}.png": good for i in range(4)})
    r = CliRunner().invoke(
        main, ["fit", "g", "--face-size", "6x6", "-o", "run", "-q", "--no-plots"]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["detect", "run", "b", "-o", "d.csv"])
    one_line(r, 1, message)
    assert not Path("d.csv").exists()


@pytest.mark.parametrize(
    "size, message",
    [
        ("0x5", "expected HEIGHTxWIDTH in pixels, like 40x30; got '0x5'"),
        # The error carries the note on how the bare array was read, in case that was wrong.
        (
            "25x5",
            "25x5 is larger than the images (24x32) of s.npy (read s.npy as 4 images of "
            "24x32 (K, H, W); pass --layout hwk if the images are along the last axis)",
        ),
    ],
)
def test_bad_face_sizes(size, message):
    np.save("s.npy", RNG.normal(size=(4, 24, 32)))
    one_line(
        fit("s.npy", "--face-size", size),
        2,
        f"Error: Invalid value for '--face-size': {message} (see 'main fit --help')",
    )


def test_junk_is_skipped_on_request():
    folder("j", {"a1.png": good, "a2.png": lambda p: Path(p).write_text("junk"), "a3.png": good})
    r = CliRunner().invoke(
        main,
        [
            "fit",
            "j",
            "--face-size",
            "6x6",
            "--skip-unreadable",
            "-o",
            "out",
            "--max-iter",
            "3",
            "--no-plots",
        ],  # fmt: skip
    )
    assert r.exit_code == 0, r.output
    assert (
        "warning: skipped 1 unreadable file: j/a2.png: cannot read image (not an image file: "
        "it holds text)"
    ) in r.stderr.splitlines()
    with np.load("out/result.npz") as z:
        assert list(z["names"]) == ["a1.png", "a3.png"]


# --- accepted ----------------------------------------------------------------------------------


def test_rgba_palette_and_16_bit_images_are_read():
    folder(
        "c",
        {
            f"a{i}.png": lambda p: iio.imwrite(
                p, RNG.integers(0, 255, (24, 32, 4)).astype(np.uint8)
            )
            for i in range(3)
        },
    )
    folder(
        "p",
        {
            f"a{i}.png": lambda p: (
                Image.fromarray(RNG.integers(0, 255, (24, 32)).astype(np.uint8))
                .convert("P")
                .save(p)
            )
            for i in range(3)
        },
    )
    folder(
        "s",
        {
            f"a{i}.png": lambda p: iio.imwrite(
                p, RNG.integers(300, 65535, (24, 32)).astype(np.uint16)
            )
            for i in range(3)
        },
    )
    assert any("alpha" in n for n in load_stack("c").notes)
    assert any("palette" in n for n in load_stack("p").notes)
    assert load_stack("s").images.min() >= 300  # 16-bit values kept, not scaled to 0..255
    for name in "cps":
        r = CliRunner().invoke(
            main,
            ["fit", name, "--face-size", "6x6", "-o", f"o{name}", "--max-iter", "3", "--no-plots"],
        )
        assert r.exit_code == 0, r.output


def test_one_image_and_constant_images():
    np.save("one.npy", RNG.normal(100, 10, (1, 24, 32)))
    np.save("flat.npy", np.full((6, 24, 32), 42.0))
    for name in ("one.npy", "flat.npy"):
        r = CliRunner().invoke(
            main, ["fit", name, "--face-size", "6x6", "-o", name + ".run", "--no-plots"]
        )
        assert r.exit_code == 0, r.output
        assert "noise std reached its floor" in r.stderr
        with np.load(f"{name}.run/result.npz") as z:
            assert all(np.isfinite(z[k]).all() for k in ("face", "background", "elbo"))
            assert float(z["noise_std"]) > 0


def test_images_ten_thousand_pixels_wide():
    np.save("wide.npy", RNG.normal(100, 10, (3, 12, 10_000)))
    r = CliRunner().invoke(
        main,
        [
            "fit",
            "wide.npy",
            "--layout",
            "khw",
            "--face-size",
            "6x6",
            "-o",
            "out",
            "--max-iter",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    with np.load("out/result.npz") as z:
        assert z["background"].shape == (12, 10_000) and np.isfinite(z["background"]).all()


def test_images_too_large_for_memory_are_refused_before_any_work():
    big = np.lib.format.open_memmap(
        "big.npy", mode="w+", dtype=np.float32, shape=(1, 20_000, 20_000)
    )
    del big  # a sparse file: nothing is written
    with pytest.raises(ValueError, match="working memory"):
        E.fit(np.load("big.npy", mmap_mode="r"), (5, 5))


# --- numbers at extremes -------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 255.0, 65535.0])
@pytest.mark.parametrize("noise", [1e-3, 1.0, 1e4])
def test_extreme_noise_and_pixel_scales_stay_finite(scale, noise):
    face = RNG.uniform(0, scale, (5, 4))
    background = RNG.uniform(0, scale, (12, 14))
    images = np.empty((20, 12, 14))
    for k in range(20):
        r, c = RNG.integers(8), RNG.integers(11)
        images[k] = background
        images[k, r : r + 5, c : c + 4] = face
    images += RNG.normal(0, noise * scale / 255, images.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (E.ConvergenceWarning, E.NoiseFloorWarning))
        res = E.fit(images, (5, 4), max_iter=20, seed=0)
    for a in (res.face, res.background, res.prior, res.elbo, res.log_likelihood):
        assert np.isfinite(a).all()
    assert np.all(np.diff(res.elbo) >= -1e-9 * np.abs(res.elbo).max())


@HOSTILE
@given(
    K=st.integers(1, 5),
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    fh=st.floats(0, 1),
    fw=st.floats(0, 1),
    scale=st.sampled_from([1e-3, 1.0, 255.0, 65535.0, 1e6]),
    offset=st.sampled_from([0.0, 1.0, -1e4, 1e6]),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(E.METHODS),
)
def test_engine_properties_on_random_inputs(K, H, W, fh, fw, scale, offset, seed, method):
    h, w = 1 + int(fh * (H - 1)), 1 + int(fw * (W - 1))
    X = offset + scale * np.random.default_rng(seed).random((K, H, W))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (E.ConvergenceWarning, E.NoiseFloorWarning, UserWarning))
        res = E.fit(X, (h, w), method=method, max_iter=8, seed=seed, tol=-np.inf)
    assert res.face.shape == (h, w) and res.background.shape == (H, W)
    assert res.prior.shape == (H - h + 1, W - w + 1) and res.positions.shape == (K, 2)
    for a in (
        res.face,
        res.background,
        res.prior,
        res.elbo,
        res.log_likelihood,
        res.position_probability,
    ):
        assert np.isfinite(a).all()
    assert res.noise_std > 0 and np.isclose(res.prior.sum(), 1)
    if method == "soft":  # the bound never decreases (up to rounding of its magnitude)
        assert np.all(np.diff(res.elbo) >= -1e-9 * np.abs(res.elbo).max())


# --- fuzzed files ------------------------------------------------------------------------------


def _png_bytes():
    buf = io.BytesIO()
    iio.imwrite(buf, RNG.integers(0, 255, (16, 20)).astype(np.uint8), extension=".png")
    return buf.getvalue()


PNG = _png_bytes()


@HOSTILE
@given(
    data=st.binary(max_size=400),
    ext=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".npy", ".npz", ".mat"]),
)
def test_random_bytes_are_a_clean_error_or_a_stack(tmp_path, data, ext):
    path = tmp_path / f"f{ext}"
    path.write_bytes(data)
    _load_cleanly(path)


@HOSTILE
@given(
    cuts=st.lists(st.tuples(st.integers(0, len(PNG) - 1), st.integers(0, 255)), max_size=8),
    keep=st.integers(1, len(PNG)),
)
def test_mangled_images_are_a_clean_error_or_a_stack(tmp_path, cuts, keep):
    data = bytearray(PNG)
    for at, value in cuts:
        data[at] = value
    (tmp_path / "d").mkdir(exist_ok=True)
    (tmp_path / "d" / "a.png").write_bytes(bytes(data[:keep]))
    _load_cleanly(tmp_path / "d")


def _load_cleanly(path):
    try:
        stack = load_stack(path)
    except InputError as err:
        assert "\n" not in str(err) and str(path.name) in str(err)
        return
    assert stack.images.ndim == 3 and stack.images.dtype == np.float64
    assert np.isfinite(stack.images).all()


def test_a_failed_write_leaves_no_run_behind(monkeypatch):
    folder("d", {f"a{i}.png": good for i in range(4)})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    r = CliRunner().invoke(
        main, ["fit", "d", "--face-size", "6x6", "-o", "out", "--max-iter", "2", "-qq"]
    )
    assert r.exit_code == 1 and "Traceback" not in r.output
    message = "Error: out/result.npz: cannot write (No space left on device)"
    assert r.stderr.splitlines() == [message]
    assert sorted(os.listdir()) == ["d"]  # no run folder, no temporary one


def test_a_run_folder_or_a_result_given_as_the_images_is_named():
    """A fit's own outputs given as the images: the run folder failed on the sizes of its
    face.png and background.png, result.npz on its keys (found in review)."""
    np.save("s.npy", RNG.normal(100, 10, (12, 16, 20)))
    r = CliRunner().invoke(main, ["fit", "s.npy", "--face-size", "6x6", "-o", "run", "-q"])
    assert r.exit_code == 0, r.output
    tail = ", not images: give the images (a folder, a pattern or a stack file)"
    folder_error = f"Error: run: a run folder that facefinder fit wrote{tail}"
    one_line(fit("run", "--face-size", "6x6"), 1, folder_error)
    what = "a file that facefinder wrote (a fit's result or checkpoint, or a truth)"
    one_line(fit("run/result.npz", "--face-size", "6x6"), 1, f"Error: run/result.npz: {what}{tail}")
    r = CliRunner().invoke(main, ["detect", "run", "run", "-o", "p.csv"])
    assert r.exit_code == 1 and r.stderr.splitlines() == [folder_error]
