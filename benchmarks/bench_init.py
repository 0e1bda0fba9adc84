"""How often does each start reach the best fit? ``python benchmarks/bench_init.py``.

For every scene, noise level and seed, a data set is drawn, EM is run from the true parameters
(the yardstick for the global optimum), and then from every start under test. A start "reaches"
the optimum when its final log-likelihood is at least the yardstick's minus ``1e-6`` nats per
image and pixel. Prints one line per data set and a summary table (markdown).
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
REACH = 1e-6  # nats per image and pixel


def scenes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    face = iio.imread(SAMPLE / "face.png").astype(float)
    brick = iio.imread(SAMPLE / "background.png").astype(float)
    return {
        "photo face 40x30 on bricks 72x96": (face, brick),
        "study: drawn face 16x16 on stripes 20x30": (
            synthetic.cartoon_face(16, 16),
            synthetic.texture("stripes", (20, 30)),
        ),
        "drawn face 24x20 on checks 48x60": (
            synthetic.cartoon_face(24, 20),
            synthetic.texture("checker", (48, 60)),
        ),
        "photo face 20x15 on clouds 40x50": (face[::2, ::2], synthetic.texture("clouds", (40, 50))),
    }


STARTS = {
    "median, prior late (default)": dict(init="median", prior_update="late"),
    "median, prior always": dict(init="median", prior_update="always"),
    "zeros, prior late": dict(init="zeros", prior_update="late"),
    "zeros, prior always (study)": dict(init="zeros", prior_update="always"),
    "smooth, prior always (study)": dict(init="smooth", prior_update="always"),
    "random, prior always (study)": dict(init="random", prior_update="always"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--noise", default="50,150,300,450")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--method", default="soft", choices=engine.METHODS)
    args = ap.parse_args()
    noises = [float(v) for v in args.noise.split(",")]
    warnings.simplefilter("ignore", engine.ConvergenceWarning)
    reached = {(n, s): 0 for n in noises for s in STARTS}
    total = {n: 0 for n in noises}
    fit_kw = dict(method=args.method, max_iter=3000, tol=1e-9, restarts=1)  # (starts compared)
    for name, (face, background) in scenes().items():
        for noise in noises:
            for seed in range(args.seeds):
                data = synthetic.make_dataset(face, background, args.images, noise, seed=seed)
                X = data.images
                best = engine.fit(X, face.shape, init_params=data.truth, **fit_kw)
                line = [
                    f"{name} | noise {noise:g} | seed {seed} | truth-start "
                    f"corr {np.corrcoef(best.face.ravel(), face.ravel())[0, 1]:.3f}"
                ]
                total[noise] += 1
                for start, kw in STARTS.items():
                    t = time.perf_counter()
                    r = engine.fit(X, face.shape, seed=seed, **fit_kw, **kw)
                    gap = (best.log_likelihood[-1] - r.log_likelihood[-1]) / X.size
                    reached[noise, start] += gap <= REACH
                    corr = np.corrcoef(r.face.ravel(), face.ravel())[0, 1]
                    line.append(
                        f"{start}: gap {gap:+.1e} corr {corr:.3f} "
                        f"{r.n_iter} it {time.perf_counter() - t:.1f}s"
                    )
                print(" | ".join(line), flush=True)
    print(
        f"\nStarts reaching the truth-started fit's log-likelihood (within {REACH:g} nats per "
        f"image and pixel), {args.method} EM, K={args.images}, {args.seeds} seeds x "
        f"{len(scenes())} scenes per noise level:\n"
    )
    print("| start | " + " | ".join(f"noise {n:g}" for n in noises) + " |")
    print("|---|" + "---|" * len(noises))
    for start in STARTS:
        cells = " | ".join(f"{reached[n, start]}/{total[n]}" for n in noises)
        print(f"| {start} | {cells} |")


if __name__ == "__main__":
    main()
