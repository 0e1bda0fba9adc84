"""Engine speed, measured in one run: ``python benchmarks/bench_engine.py``.

K = 500 images of 80x80 with a 32x32 face. Prints seconds per soft and hard iteration, the
ratio of an iteration to one ``rfft2`` + one ``irfft2`` over the whole stack (the floor of
the algorithm; both on the same number of threads; the median over rounds that measure both
moments apart, and their range), the speed-up of all cores over one thread,
and the speed-up over a straightforward implementation (``naive.py``: one ``fftconvolve`` call
per image and term), whose results are checked against the engine's.

``--workers N``: threads for the engine (chunks in parallel) and for ``scipy.fft`` in the
floor; default every core this process may use.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
from scipy import fft as sfft

sys.path.insert(0, str(Path(__file__).parent))
import naive  # noqa: E402

from facefinder_cli import engine, synthetic  # noqa: E402


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def per_iteration(X, face_shape, start, method, n_iter, **kw) -> float:
    """Seconds per plain EM iteration: one pass over the images (an accelerated iteration is
    two or three of them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", engine.ConvergenceWarning)
        r = engine.fit(
            X,
            face_shape,
            method=method,
            init_params=start,
            max_iter=n_iter,
            tol=-np.inf,
            accelerate="none",
            **kw,
        )
    return float(np.median(np.diff(r.seconds)))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--size", default="80", help="image size: N (square) or HxW")
    ap.add_argument("--face", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of all measurements")
    args = ap.parse_args()
    K, m = args.images, args.face
    H, W = (int(v) for v in (args.size.split("x") * 2)[:2])
    face = synthetic.cartoon_face(m, m)
    background = synthetic.texture("stripes", (H, W))
    data = synthetic.make_dataset(face, background, K, 100.0, seed=0)
    X = data.images
    start = engine.Params(
        synthetic.texture("clouds", (m, m), seed=1),
        np.full((H, W), 128.0),
        100.0,
        data.truth.prior,
    )
    workers = args.workers or engine.available_cores()
    kw = {"workers": workers}
    xf = sfft.rfft2(X, workers=workers)

    def floor_once() -> float:
        return best_of(lambda: sfft.rfft2(X, workers=workers), 3) + best_of(
            lambda: sfft.irfft2(xf, s=(H, W), workers=workers), 3
        )

    # Rounds alternate the floor and the iterations, so that a ratio compares times taken
    # moments apart: this machine's speed drifts by a third over minutes.
    rounds = {"floor": [], "soft": [], "hard": [], "soft_1": []}
    for _ in range(args.rounds):
        rounds["floor"].append(floor_once())
        rounds["soft"].append(per_iteration(X, (m, m), start, "soft", args.iterations, **kw))
        rounds["hard"].append(per_iteration(X, (m, m), start, "hard", args.iterations, **kw))
        rounds["soft_1"].append(per_iteration(X, (m, m), start, "soft", args.iterations, workers=1))
    times = {k: np.asarray(v) for k, v in rounds.items()}
    soft, hard, soft_1, floor = (
        float(np.median(times[k])) for k in ("soft", "hard", "soft_1", "floor")
    )

    def ratio(k: str) -> str:
        r = times[k] / times["floor"]
        return f"{np.median(r):8.2f}   (rounds: {r.min():.2f}-{r.max():.2f})"

    # The straightforward implementation, from the same start; results must agree.
    t = time.perf_counter()
    F, B, s, A = naive.iteration(X, start.face, start.background, start.noise_std, start.prior)
    naive_s = time.perf_counter() - t
    r1 = engine.fit(
        X,
        (m, m),
        init_params=start,
        max_iter=1,
        tol=-np.inf,
        prior_update="always",
        accelerate="none",
        **kw,
    )
    agree = max(
        np.abs(r1.face - F).max() / np.abs(F).max(),
        np.abs(r1.background - B).max() / np.abs(B).max(),
        abs(r1.noise_std - s) / s,
        np.abs(r1.prior - A).max() / A.max(),
    )

    print(
        f"# Engine benchmark: K={K} images of {H}x{W}, face {m}x{m}; "
        f"medians of {args.rounds} rounds"
    )
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"NumPy {np.__version__}, SciPy {scipy.__version__}; {workers} threads"
    )
    print(f"soft EM iteration          {soft * 1e3:8.1f} ms")
    print(f"  on one thread            {soft_1 * 1e3:8.1f} ms  ({soft_1 / soft:.2f}x slower)")
    print(f"hard EM iteration          {hard * 1e3:8.1f} ms")
    print(f"rfft2 + irfft2 of stack    {floor * 1e3:8.1f} ms")
    print(f"soft iteration / FFT floor {ratio('soft')}")
    print(f"hard iteration / FFT floor {ratio('hard')}")
    print(f"naive soft iteration       {naive_s * 1e3:8.1f} ms")
    print(f"speed-up over naive        {naive_s / soft:8.1f}x")
    print(f"  both on one thread       {naive_s / soft_1:8.1f}x")
    print(f"max relative difference engine vs naive after one iteration: {agree:.1e}")
    if not agree < 1e-8:
        sys.exit("engine and naive implementation disagree")


if __name__ == "__main__":
    main()
