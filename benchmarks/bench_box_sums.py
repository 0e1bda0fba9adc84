"""Box sums by banded matrix products against summed-area tables, measured in one run:
``python benchmarks/bench_box_sums.py`` (about 2 minutes on 2 cores).

1. Per image, for image and face sizes on both sides of ``PRODUCT_MACS_PER_PIXEL``: the
   valid sums (E-step) and the full sums (M-step) each way, and which way the engine takes;
   on one thread, BLAS included, as in a pass.
2. Per plain EM iteration (soft and hard, min of 4 rounds of 8 iterations), the engine with
   the tables alone against the engine as it is, on 2 threads and on 1, and each as a ratio to
   the FFT floor (one ``rfft2`` + one ``irfft2`` of the stack on as many threads).
"""

from __future__ import annotations

import sys
import timeit
import warnings
from pathlib import Path

import numpy as np
from scipy import fft as sfft

sys.path.insert(0, str(Path(__file__).parent))
from _args import no_options  # noqa: E402
from bench_engine import best_of  # noqa: E402

from facefinder_cli import engine, synthetic  # noqa: E402
from facefinder_cli.engine import model as M  # noqa: E402
from facefinder_cli.engine.blas import one_blas_thread  # noqa: E402


def per_image(fn, n: int, *args) -> float:
    return min(timeit.repeat(lambda: fn(*args), number=3, repeat=3)) / 3 / n * 1e6


def sums() -> None:
    rng = np.random.default_rng(0)
    print("| image | face | MACs per pixel | valid: tables / products (us) | full | engine |")
    print("|---|---|---|---|---|---|")
    for H, W, h, w in [(20, 30, 16, 16), (72, 96, 40, 30), (80, 80, 32, 32), (64, 64, 8, 8),
                       (100, 100, 32, 32), (128, 128, 64, 64), (160, 160, 40, 40),
                       (256, 256, 64, 64)]:  # fmt: skip
        n = max(4, int(2e6 / (H * W)))
        Dh, Dw = H - h + 1, W - w + 1
        y, q = rng.standard_normal((n, H, W)), rng.random((n, Dh, Dw))
        macs = max(Dh * W * (H + Dw), H * Dw * (Dh + W)) / (H * W)
        way = "products" if M._by_products(H, W, Dh, Dw) else "tables"
        times = {}
        for name, limit in (("tables", 0), ("products", np.inf)):
            M.PRODUCT_MACS_PER_PIXEL = limit
            with one_blas_thread():
                valid = per_image(M._box_valid, n, y, h, w)
                times[name] = (valid, per_image(M._box_full, n, q, h, w))
        M.PRODUCT_MACS_PER_PIXEL = PRODUCTS
        (tv, tf), (pv, pf) = times["tables"], times["products"]
        print(f"| {H}x{W} | {h}x{w} | {macs:.0f} | {tv:.1f} / {pv:.1f} | {tf:.1f} / {pf:.1f} "
              f"| {way} |")  # fmt: skip


def fft_floor(X: np.ndarray, workers: int) -> float:
    """Seconds of one ``rfft2`` and one ``irfft2`` of the stack ``X``."""
    xf = sfft.rfft2(X, workers=workers)
    forward = best_of(lambda: sfft.rfft2(X, workers=workers), 5)
    return forward + best_of(lambda: sfft.irfft2(xf, s=X.shape[-2:], workers=workers), 5)


def iterations() -> None:
    print("\n| images | threads | method | tables (x floor) | engine (x floor) | speed-up |")
    print("|---|---|---|---|---|---|")
    for H, W, h, w, K in [(20, 30, 16, 16, 1500), (72, 96, 40, 30, 200), (80, 80, 32, 32, 500)]:
        face, background = synthetic.cartoon_face(h, w), synthetic.texture("stripes", (H, W))
        d = synthetic.make_dataset(face, background, K, 100.0, seed=0)
        start = engine.Params(synthetic.texture("clouds", (h, w), seed=1),
                              np.full((H, W), 128.0), 100.0, d.truth.prior)  # fmt: skip
        for workers in (2, 1):
            floor = fft_floor(d.images, workers)
            got: dict = {}
            for _ in range(4):  # rounds, alternating, so that drifts of the machine hit both
                for name, limit in (("tables", 0), ("engine", PRODUCTS)):
                    M.PRODUCT_MACS_PER_PIXEL = limit
                    for method in ("soft", "hard"):
                        r = engine.fit(d.images, (h, w), init_params=start, max_iter=8,
                                       tol=-np.inf, accelerate="none", method=method,
                                       workers=workers)  # fmt: skip
                        t = float(np.median(np.diff(r.seconds)))
                        got[name, method] = min(got.get((name, method), np.inf), t)
            M.PRODUCT_MACS_PER_PIXEL = PRODUCTS
            for method in ("soft", "hard"):
                t, e = got["tables", method], got["engine", method]
                print(
                    f"| {K} of {H}x{W}, face {h}x{w} | {workers} | {method} | {t * 1e3:.1f} ms "
                    f"({t / floor:.2f}) | {e * 1e3:.1f} ms ({e / floor:.2f}) | {t / e:.2f}x |"
                )


PRODUCTS = M.PRODUCT_MACS_PER_PIXEL

if __name__ == "__main__":
    no_options(__doc__)
    warnings.simplefilter("ignore", engine.ConvergenceWarning)
    sums()
    iterations()
