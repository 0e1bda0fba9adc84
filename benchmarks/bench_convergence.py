"""Time to the best fit, accelerated against plain soft EM.

``python benchmarks/bench_convergence.py`` (about 15 minutes on 2 cores; ``--help`` for a subset).

Scenes in the study's geometry (a 16x16 face in 20x30 images): the bundled photo face and
bricks scaled down, and faces and backgrounds drawn by ``facefinder_cli.synthetic``. For every
scene, noise level and number of images K, one data set is drawn and fitted by:

- one run of the default (accelerated EM, default ``tol`` and ``max_iter``, ``restarts=1``),
  the default itself (``restarts="auto"``: three restarts where the first one's positions
  are unsure), and ``--restarts 5``;
- plain EM (``accelerate="none"``, one run) with its defaults, and for longer (``tol=0``,
  ``--long`` iterations) so that its history says when it reached any log-likelihood;
- long runs that find "the optimum": the best final log-likelihood of any run here,
  including accelerated EM run long from the default start and from the true parameters
  ("EM from the truth").

Per cell it prints, measured in this one run (gaps in nats per image and pixel):

- ``gap``: how far one default run's final log-likelihood is below the optimum (target:
  ≤ 1e-6);
- ``passes``/``time to default``: passes over the images and seconds until one default run's
  final log-likelihood, for it and for plain EM (from the long plain run's history; "never"
  when it did not get there);
- ``truth``: whether one run, the default (``restarts="auto"``), and 2 and 5 restarts
  reached the log-likelihood of EM from the truth (within ``TRUTH_REACH``), and the
  default's passes (all its restarts) over one run's;
- ``converged``: passes and seconds of one default run and of plain EM run to their own
  stopping rules, and plain EM's iterations times the straightforward per-iteration cost of
  ``benchmarks/naive.py`` measured on the same images.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from facefinder_cli import engine, synthetic

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
FACE, IMAGE = (16, 16), (20, 30)
REACH = 1e-7  # nats per image and pixel: "reached" the default's final log-likelihood
TRUTH_REACH = 1e-6  # ... and EM-from-the-truth's (the stopping target, as bench_init.py)


def _grey(path: Path) -> np.ndarray:
    img = iio.imread(path).astype(float)
    return img[..., :3] @ [0.299, 0.587, 0.114] if img.ndim == 3 else img


def scenes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    photo = _grey(SAMPLE / "face.png")
    bricks = _grey(SAMPLE / "background.png")
    return {
        "photo face on bricks": (synthetic.resize(photo, FACE), synthetic.resize(bricks, IMAGE)),
        "drawn face on stripes": (
            synthetic.cartoon_face(*FACE),
            synthetic.texture("stripes", IMAGE),
        ),
        "photo face on clouds": (
            synthetic.resize(photo, FACE),
            synthetic.texture("clouds", IMAGE, seed=3),
        ),
        "drawn face on checks": (
            synthetic.cartoon_face(*FACE),
            synthetic.texture("checker", IMAGE),
        ),
    }


def _first(result: engine.FitResult, target: float, n: int) -> tuple[int, float] | None:
    """Passes and seconds until ``result``'s log-likelihood first reached ``target``."""
    at = np.flatnonzero(result.log_likelihood >= target - REACH * n)
    if not len(at):
        return None
    return int(result.passes[at[0]]), float(result.seconds[at[0]])


def _naive_seconds(X: np.ndarray, params: engine.Params, repeats: int = 3) -> float:
    sys.path.insert(0, str(Path(__file__).parent))
    import naive

    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        naive.iteration(X, params.face, params.background, params.noise_std, params.prior)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", default="200,400,1000")
    ap.add_argument("--images", default="100,500,1500")
    ap.add_argument("--scenes", type=int, default=len(scenes()), help="use the first N scenes")
    ap.add_argument("--long", type=int, default=3000, help="iterations of the long plain runs")
    ap.add_argument(
        "--data-seed",
        type=int,
        default=100,
        help="scene i's images are drawn with seed DATA_SEED + i (other values: fresh data sets "
        "to check a choice made on the default ones)",
    )
    args = ap.parse_args()
    warnings.simplefilter("ignore", engine.ConvergenceWarning)
    noises = [float(v) for v in args.noise.split(",")]
    sizes = [int(v) for v in args.images.split(",")]
    chosen = dict(list(scenes().items())[: args.scenes])
    rows = []
    for noise in noises:
        for K in sizes:
            for i, (name, (face, background)) in enumerate(chosen.items()):
                data = synthetic.make_dataset(face, background, K, noise, seed=args.data_seed + i)
                X, n = data.images, data.images.size

                def fit(X=X, restarts=1, **kw):
                    return engine.fit(X, FACE, seed=0, restarts=restarts, **kw)

                default = fit()  # one run of the default
                auto = fit(restarts="auto")  # the default
                restarts = fit(restarts=5)
                plain = fit(accelerate="none")
                plain_long = fit(accelerate="none", tol=1e-13, max_iter=args.long)
                long = fit(tol=1e-12, max_iter=args.long // 3)
                truth = engine.fit(
                    X, FACE, init_params=data.truth, tol=1e-12, max_iter=args.long // 3
                )
                optimum = max(
                    r.log_likelihood.max()
                    for r in (default, auto, restarts, plain_long, long, truth)
                )
                ll_truth = truth.log_likelihood[-1]
                target = default.log_likelihood[-1]
                row = dict(
                    noise=noise,
                    K=K,
                    scene=name,
                    gap=(optimum - target) / n,
                    default_to=_first(default, target, n),
                    plain_to=_first(plain_long, target, n),
                    truth=target >= ll_truth - TRUTH_REACH * n,
                    truth_auto=auto.log_likelihood[-1] >= ll_truth - TRUTH_REACH * n,
                    auto_passes=(sum(int(h.passes[-1]) for h in auto.restarts), len(auto.restarts)),
                    truth5=restarts.log_likelihood[-1] >= ll_truth - TRUTH_REACH * n,
                    # restarts are the same whatever their number: the best of the first two
                    truth2=max(h.log_likelihood[-1] for h in restarts.restarts[:2])
                    >= ll_truth - TRUTH_REACH * n,
                    default_end=(int(default.passes[-1]), float(default.seconds[-1])),
                    plain_end=(int(plain.passes[-1]), float(plain.seconds[-1])),
                    plain_gap=(optimum - plain.log_likelihood[-1]) / n,
                    naive=plain.n_iter
                    * _naive_seconds(X[: min(K, 100)], plain.params)
                    * K
                    / min(K, 100),
                )
                rows.append(row)
                print(
                    f"noise {noise:g} K {K} {name}: gap {row['gap']:.1e} (plain "
                    f"{row['plain_gap']:.1e}); to the default's end: default "
                    f"{row['default_to']}, plain {row['plain_to']}; truth reached "
                    f"{row['truth']}, auto {row['truth_auto']} ({row['auto_passes'][1]} restarts, "
                    f"{row['auto_passes'][0]} passes), 2 restarts {row['truth2']}, 5 restarts "
                    f"{row['truth5']}; "
                    f"converged: default "
                    f"{row['default_end']}, plain {row['plain_end']}, naive x plain iterations "
                    f"{row['naive']:.1f} s",
                    flush=True,
                )
    _table(rows, noises, sizes)


def _table(rows: list[dict], noises: list[float], sizes: list[int]) -> None:
    def ratio(a: tuple | None, b: tuple | None, k: int) -> str:
        if a is None or b is None:
            return "never" if b is None else "-"
        return f"{b[k] / max(a[k], 1e-9):.1f}x"

    print(
        "\n| noise | K | worst gap, default (plain) | passes to the default's end: plain / "
        "default | time: plain / default | truth reached: one run, default (auto), 2, 5 "
        "restarts | passes of the default (auto) over one run's | seconds to converge: one run, "
        "plain, straightforward x plain's iterations |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for noise in noises:
        for K in sizes:
            cell = [r for r in rows if r["noise"] == noise and r["K"] == K]
            passes = ", ".join(ratio(r["default_to"], r["plain_to"], 0) for r in cell)
            times = ", ".join(ratio(r["default_to"], r["plain_to"], 1) for r in cell)
            truth = ", ".join(
                f"{sum(r[k] for r in cell)}/{len(cell)}"
                for k in ("truth", "truth_auto", "truth2", "truth5")
            )
            auto = sum(r["auto_passes"][0] for r in cell) / sum(r["default_end"][0] for r in cell)
            seconds = (
                f"{np.mean([r['default_end'][1] for r in cell]):.2f}, "
                f"{np.mean([r['plain_end'][1] for r in cell]):.2f}, "
                f"{np.mean([r['naive'] for r in cell]):.1f}"
            )
            gap = f"{max(r['gap'] for r in cell):.1e} ({max(r['plain_gap'] for r in cell):.1e})"
            print(
                f"| {noise:g} | {K} | {gap} | {passes} | {times} | {truth} | {auto:.1f}x | "
                f"{seconds} |"
            )
    total = len(rows)
    print(
        f"\nOne default run reached EM-from-the-truth in {sum(r['truth'] for r in rows)}/{total} "
        f"data sets, the default (auto) in {sum(r['truth_auto'] for r in rows)}/{total} for "
        f"{sum(r['auto_passes'][0] for r in rows) / sum(r['default_end'][0] for r in rows):.1f}x "
        f"the passes, with 2 restarts in {sum(r['truth2'] for r in rows)}/{total}, with 5 in "
        f"{sum(r['truth5'] for r in rows)}/{total}; one run within 1e-6 of the optimum "
        f"in {sum(r['gap'] <= 1e-6 for r in rows)}/{total}."
    )


if __name__ == "__main__":
    main()
