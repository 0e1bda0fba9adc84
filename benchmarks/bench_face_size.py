"""Choosing the face size (``fit --face-size auto``): right sizes, and the cost of the search.

``python benchmarks/bench_face_size.py`` (about a minute on 2 cores).

Scenes: the bundled photo face and drawn faces on textures made by the code (bricks from the
sample, clouds, stripes, a chequerboard) and, to show the ambiguity the search must admit, a
flat background with faces away from the border. For each scene and noise level, one data set
of K images is drawn and:

- ``engine.choose_face_size`` searches the default range (4x4 to the image size less a pixel);
- one default fit of the true size is timed, with the share of positions it places exactly.

Printed per cell, measured in this one run: the true and chosen sizes, whether the choice is
within a pixel in each dimension, whether the search called it clear, its fits, and its cost
against the one fit of the true size (passes over the images, and seconds).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from _args import no_options  # noqa: E402

from facefinder_cli import engine, synthetic

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
IMAGE, K = (40, 56), 200
SEEDS = 12


def _grey(path: Path) -> np.ndarray:
    img = iio.imread(path).astype(float)
    return img[..., :3] @ [0.299, 0.587, 0.114] if img.ndim == 3 else img


def scenes():
    """(name, face, background, prior or None, noise levels)."""
    photo = synthetic.resize(_grey(SAMPLE / "face.png"), (20, 16))
    bricks = synthetic.resize(_grey(SAMPLE / "background.png"), IMAGE)
    drawn = synthetic.cartoon_face(18, 14)
    centred = synthetic.centred_prior((20, 16), IMAGE, spread=0.12)
    return [
        ("photo face on bricks", photo, bricks, None, (60, 150)),
        (
            "drawn face on clouds",
            drawn,
            synthetic.texture("clouds", IMAGE, seed=3),
            None,
            (60, 150),
        ),
        ("drawn face on stripes", drawn, synthetic.texture("stripes", IMAGE), None, (60, 150)),
        ("photo face on checker", photo, synthetic.texture("checker", IMAGE), None, (60, 150)),
        ("photo face on flat, centred", photo, synthetic.texture("flat", IMAGE), centred, (60,)),
    ]


def main() -> None:
    warnings.simplefilter("ignore")
    print(
        "| scene | noise | exact positions (true size) | true | chosen | within 1 px | clear "
        "| fits | passes: search / one fit | seconds: search / one fit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    hits = cells = 0
    ratios = []
    for name, face, background, prior, noises in scenes():
        for noise in noises:
            data = synthetic.make_dataset(face, background, K, float(noise), prior=prior, seed=1)
            t = time.perf_counter()
            one = engine.fit(data.images, face.shape, seed=0)
            t_one = time.perf_counter() - t
            exact = float(np.mean(np.all(one.positions == data.positions, axis=1)))
            c = engine.choose_face_size(data.images, seed=0)  # (with the chosen size's fit)
            within = max(abs(c.size[0] - face.shape[0]), abs(c.size[1] - face.shape[1])) <= 1
            if prior is None:
                hits, cells = hits + within, cells + 1
                ratios.append(c.seconds / t_one)
            clear = "yes" if c.clear else (
                f"no: {c.larger_fits_as_well[0]}x{c.larger_fits_as_well[1]} fits as well"
                if c.larger_fits_as_well else f"no: margin {c.margin:.1f}")  # fmt: skip
            one_passes = int(sum(h.passes[-1] + 1 for h in one.restarts))  # (+ final pass)
            print(f"| {name} | {noise} | {exact:.2f} | {face.shape[0]}x{face.shape[1]} "
                  f"| {c.size[0]}x{c.size[1]} | {'yes' if within else 'NO'} | {clear} "
                  f"| {len(c.trials)} | {c.passes} / {one_passes} = {c.passes / one_passes:.1f}x "
                  f"| {c.seconds:.1f} / {t_one:.2f} = {c.seconds / t_one:.1f}x |",
                  flush=True)  # fmt: skip
    print(
        f"\nwithin a pixel: {hits} of {cells} textured cells; search cost: median "
        f"{np.median(ratios):.1f}x, max {max(ratios):.1f}x one fit of the true size"
    )
    # One scene, many draws: the photo face on bricks at noise 40 (where a review found a
    # draw whose size was chosen 2 pixels off, before the climb took two-pixel steps).
    face, background = scenes()[0][1:3]
    right = clear = 0
    for seed in range(SEEDS):
        data = synthetic.make_dataset(face, background, K, 40.0, seed=100 + seed)
        c = engine.choose_face_size(data.images, seed=0, fit_chosen=False)
        right += max(abs(c.size[0] - 20), abs(c.size[1] - 16)) <= 1
        clear += c.clear
    print(f"photo face on bricks, noise 40, {SEEDS} draws: within a pixel {right} of {SEEDS}, "
          f"called clear {clear} of {SEEDS}")  # fmt: skip


if __name__ == "__main__":
    no_options(__doc__)
    main()
