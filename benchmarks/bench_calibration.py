"""Do reported probabilities mean what they say? ``python benchmarks/bench_calibration.py``.

For each scene and noise level: fit ``--images`` generated images (default start), then

- ``fit``: the training images' positions and probabilities as ``positions.csv`` reports them
  (held out: each image scored with what the other images fitted);
- ``detect``: ``--new`` new images of the same scene, with faces at positions drawn afresh,
  located with the smoothed prior (``detect``'s default) and with the prior as fitted; and,
  for the smoothed prior, the share of exactly right positions among the faces at positions
  no training face took.

Each cell is "share of exactly right positions / mean reported probability"; a calibrated
probability has the two within 0.05 (marked ✓, else ✗). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from facefinder_cli import engine, synthetic

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def _grey(path: Path) -> np.ndarray:
    img = iio.imread(path).astype(float)
    return img[..., :3] @ [0.299, 0.587, 0.114] if img.ndim == 3 else img


def scenes():
    """(name, face, background, noise levels): a photo face on bricks and two drawn faces on
    textures of different character; noise from easy to where fits start to fail."""
    photo = (_grey(SAMPLE / "face.png"), _grey(SAMPLE / "background.png"))
    yield "photo 40x30 on bricks 72x96", *photo, (60, 120, 180, 240)
    clouds = (synthetic.cartoon_face(20, 16), synthetic.texture("clouds", (40, 56), seed=3))
    yield "drawn 20x16 on clouds 40x56", *clouds, (120, 200, 280, 360)
    checker = (synthetic.cartoon_face(16, 16), synthetic.texture("checker", (30, 40)))
    yield "drawn 16x16 on checker 30x40", *checker, (120, 200, 280, 360)


def cell(right: float, p: float) -> str:
    return f"{right:.3f} / {p:.3f} {'✓' if abs(right - p) <= 0.05 else '✗'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="training images per fit")
    ap.add_argument("--new", type=int, default=500, help="new images per detection")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore", engine.ConvergenceWarning)
    t0 = time.perf_counter()
    print(f"{args.images} training images per fit, {args.new} new images; seed {args.seed}.")
    print("Cells: share of exactly right positions / mean reported probability.\n")
    print(
        "| scene | noise | fit (positions.csv) | detect, smoothed prior | detect, fitted prior "
        "| new faces at unseen positions: right (smoothed) |"
    )
    print("|---|---|---|---|---|---|")
    counts = {"fit": [0, 0], "smoothed": [0, 0], "fitted": [0, 0]}
    for name, face, background, noises in scenes():
        for noise in noises:
            train = synthetic.make_dataset(face, background, args.images, noise, seed=args.seed)
            new = synthetic.make_dataset(face, background, args.new, noise, seed=args.seed + 1)
            r = engine.fit(train.images, face.shape, seed=args.seed)
            fit_right = float((r.positions == train.positions).all(1).mean())
            row = [cell(fit_right, r.position_probability.mean())]
            ok = {"fit": abs(fit_right - r.position_probability.mean()) <= 0.05}
            seen = (new.positions[:, None] == train.positions[None]).all(axis=2).any(axis=1)
            for label, prior in (
                ("smoothed", engine.predictive_prior(r.prior, args.images)),
                ("fitted", r.prior),
            ):
                shrunk = engine.shrunk_face(r.face, r.noise_std, args.images)  # detect's default
                params = engine.Params(shrunk, r.background, r.noise_std, prior)
                found = engine.detect(new.images, params)
                hit = (found.positions == new.positions).all(1)
                row.append(cell(hit.mean(), found.probability.mean()))
                ok[label] = abs(hit.mean() - found.probability.mean()) <= 0.05
                if label == "smoothed":
                    unseen = f"{(~seen).mean():.0%}: {hit[~seen].mean():.3f}"
            row.append(unseen)
            for label, good in ok.items():
                counts[label][0] += good
                counts[label][1] += 1
            print(f"| {name} | {noise:g} | " + " | ".join(row) + " |", flush=True)
    summary = ", ".join(f"{k}: {a} of {b}" for k, (a, b) in counts.items())
    print(f"\nWithin 0.05: {summary}. {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
