"""Soft, hard and Monte-Carlo EM compared: ``python benchmarks/bench_methods.py``.

On each data set every method runs from the default start; the comparable number is the final
log-likelihood ``log p(X | θ)`` (per image and pixel), and the time to get within ``NEAR`` nats
per image and pixel of the best final value any method reached. Prints a markdown table.
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
NEAR = 1e-5

METHODS = {
    "soft (accelerated, default)": dict(method="soft"),
    "soft, plain": dict(method="soft", accelerate="none"),
    "hard": dict(method="hard"),
    "mc 3 x1.05 to 30 (default)": dict(method="mc"),
    "mc 3 fixed": dict(method="mc", samples=3, samples_growth=1.0, max_samples=3),
    "mc 10 x1.2 to 1000": dict(method="mc", samples=10, samples_growth=1.2, max_samples=1000),
}


def scenes(n_images: int):
    face = iio.imread(SAMPLE / "face.png").astype(float)
    brick = iio.imread(SAMPLE / "background.png").astype(float)
    study = (synthetic.cartoon_face(16, 16), synthetic.texture("stripes", (20, 30)))
    for noise in (200.0, 400.0):
        yield f"study 16x16 on 20x30, noise {noise:g}", *study, noise
    for noise in (150.0, 300.0):
        yield f"photo 40x30 on bricks 72x96, noise {noise:g}", face, brick, noise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore", engine.ConvergenceWarning)
    print(f"K = {args.images} images per data set; seed {args.seed}; tol 1e-7 (the default)\n")
    print(
        "| data | method | iterations | s/iteration | total s | final log-lik. per px "
        f"| gap to best | s to within {NEAR:g} of best | face corr. |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, face, background, noise in scenes(args.images):
        data = synthetic.make_dataset(face, background, args.images, noise, seed=args.seed)
        X, n = data.images, data.images.size
        results = {}
        for label, kw in METHODS.items():
            t = time.perf_counter()
            r = engine.fit(X, face.shape, seed=args.seed, max_iter=500, restarts=1, **kw)
            results[label] = (r, time.perf_counter() - t)
        best = max(r.log_likelihood[-1] for r, _ in results.values()) / n
        for label, (r, total) in results.items():
            ll = r.log_likelihood / n
            reached = np.flatnonzero(ll >= best - NEAR)
            when = f"{r.seconds[reached[0]]:.2f}" if reached.size else "never"
            corr = np.corrcoef(r.face.ravel(), face.ravel())[0, 1]
            print(
                f"| {name} | {label} | {r.n_iter} | {np.median(np.diff(r.seconds)):.3f} | "
                f"{total:.2f} | {ll[-1]:.6f} | {best - ll[-1]:.1e} | {when} | {corr:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
