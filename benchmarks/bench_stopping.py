"""Accelerated EM's stopping rule: one estimate below ``tol``, or several in a row, measured
in one run: ``python benchmarks/bench_stopping.py`` (about 10 minutes on 2 cores).

The 36 data sets of ``bench_convergence.py`` (4 scenes x noise 200, 400, 1000 x K = 100, 500,
1500; the same seeds). For each, the limit of the default's own run (the same start, run on
with ``tol=1e-12``), "the optimum" (the better of that and EM from the true parameters), and
the default fit with ``STOP_CYCLES`` = 1, 2 and 3 cycles in a row below ``tol``: how far below
its own run's limit and below the optimum it stops (nats per image and pixel), whether it
reaches EM-from-the-truth's log-likelihood (within 1e-6), and its passes and seconds.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _args import no_options  # noqa: E402
from bench_convergence import FACE, TRUTH_REACH, scenes  # noqa: E402

from facefinder_cli import engine, synthetic  # noqa: E402
from facefinder_cli.engine import accelerate  # noqa: E402

RULES = (1, 2, 3)


def main() -> None:
    warnings.simplefilter("ignore", engine.ConvergenceWarning)
    default = accelerate.STOP_CYCLES
    rows = []
    for noise in (200.0, 400.0, 1000.0):
        for K in (100, 500, 1500):
            for i, (name, (face, background)) in enumerate(scenes().items()):
                data = synthetic.make_dataset(face, background, K, noise, seed=100 + i)
                X, n = data.images, data.images.size
                accelerate.STOP_CYCLES = default
                truth = engine.fit(X, FACE, init_params=data.truth, tol=1e-12, max_iter=1000)
                own = engine.fit(X, FACE, seed=0, tol=1e-12, max_iter=1000, restarts=1)
                optimum = max(truth.log_likelihood.max(), own.log_likelihood.max())
                row = {}
                for k in RULES:
                    accelerate.STOP_CYCLES = k
                    t = time.perf_counter()
                    r = engine.fit(X, FACE, seed=0, restarts=1)  # (one run's stop)
                    end = r.log_likelihood[-1]
                    row[k] = dict(
                        gap=(optimum - end) / n,
                        own=(own.log_likelihood[-1] - end) / n,
                        truth=end >= truth.log_likelihood[-1] - TRUTH_REACH * n,
                        passes=int(r.passes[-1]),
                        seconds=time.perf_counter() - t,
                    )
                accelerate.STOP_CYCLES = default
                rows.append(row)
                said = [
                    f"{k} in a row: {row[k]['own']:.1e} below its run's limit, "
                    f"{row[k]['gap']:.1e} below the optimum, {row[k]['passes']} passes"
                    for k in RULES
                ]
                print(f"noise {noise:g} K {K} {name}: " + "; ".join(said), flush=True)
    print("\n| cycles in a row | within 1e-6 of the optimum | of its own run's limit | reaches "
          "EM from the truth | passes | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for k in RULES:
        got = [r[k] for r in rows]
        print(f"| {k}{' (default)' if k == default else ''} | "
              f"{sum(g['gap'] <= 1e-6 for g in got)}/{len(got)} | "
              f"{sum(g['own'] <= 1e-6 for g in got)}/{len(got)} | "
              f"{sum(g['truth'] for g in got)}/{len(got)} | {sum(g['passes'] for g in got)} | "
              f"{sum(g['seconds'] for g in got):.1f} |")  # fmt: skip


if __name__ == "__main__":
    no_options(__doc__)
    main()
