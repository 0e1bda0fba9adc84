"""float32 against float64: accuracy by noise level, and speed, measured in one run.

    python benchmarks/bench_precision.py

The same fit (soft EM from the median start, to convergence) in both precisions on 2000 images
of 64x64 with a 24x24 face on a 0..255 scene (face and background contrast: their pixel std is
about 55), at noise std 1 to 150. Printed per noise level: the difference of the final ELBO in
nats per image and pixel (to compare with the default ``tol`` of 1e-7), the largest difference
of face and background pixels (0..255 scale), the relative difference of the noise std, the
share of images whose MAP position agrees, the iterations each took, and the ratio of float64
to float32 seconds per iteration.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _args import no_options  # noqa: E402
from bench_engine import cpu_name  # noqa: E402

from facefinder_cli import engine, synthetic  # noqa: E402

K, SIZE, FACE = 2000, 64, 24


def main() -> None:
    face = synthetic.cartoon_face(FACE, FACE)
    background = synthetic.texture("clouds", (SIZE, SIZE), seed=1)
    contrast = np.std(np.concatenate([face.ravel(), background.ravel()]))
    print(f"# float32 vs float64: K={K} images of {SIZE}x{SIZE}, face {FACE}x{FACE}, soft EM")
    print(
        f"machine: {cpu_name()}, {engine.available_cores()} threads; NumPy {np.__version__}; "
        f"pixel std of face and background {contrast:.0f}"
    )
    print()
    print(
        "noise  ELBO diff/px  face max diff  background max diff  noise rel diff  same MAP  "
        "iterations  speed"
    )
    for noise in (1.0, 10.0, 40.0, 150.0):
        data = synthetic.make_dataset(face, background, K, noise, seed=3)
        r = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", engine.ConvergenceWarning)
            for dtype in ("float64", "float32"):
                r[dtype] = engine.fit(data.images, (FACE, FACE), seed=0, dtype=dtype, restarts=1)
        a, b = r["float64"], r["float32"]
        speed = np.median(np.diff(a.seconds)) / np.median(np.diff(b.seconds))
        print(
            f"{noise:5g}  {(b.final_elbo - a.final_elbo) / data.images.size:+12.1e}  "
            f"{np.abs(a.face - b.face).max():13.1e}  "
            f"{np.abs(a.background - b.background).max():19.1e}  "
            f"{abs(b.noise_std / a.noise_std - 1):14.1e}  "
            f"{np.mean((a.positions == b.positions).all(axis=1)):8.4f}  "
            f"{a.n_iter:>4} {b.n_iter:>4}   {speed:5.2f}"
        )


if __name__ == "__main__":
    no_options(__doc__)
    main()
