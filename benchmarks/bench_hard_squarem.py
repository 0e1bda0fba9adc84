"""Would SQUAREM pay for hard EM? ``python benchmarks/bench_hard_squarem.py`` (about a minute).

A prototype of accelerated hard EM (two hard EM steps, the S3 jump of
``facefinder_cli.engine.accelerate``, the hard step from the jump kept when its MAP objective is
at least the bound of the second step) against plain hard EM, both from the default start with
the prior held, on the scenes of ``bench_convergence.py`` at noise 200, 400 and 1000 with K = 500
and 1500. Prints per data set plain hard EM's passes (one per iteration) and seconds, the
prototype's passes and seconds, and how much higher the prototype's final MAP objective is
(nats per image and pixel); then the ratio of passes. Not part of the tool: hard EM is not
accelerated (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _args import no_options  # noqa: E402
from bench_convergence import FACE, scenes  # noqa: E402

from facefinder_cli import engine, synthetic  # noqa: E402
from facefinder_cli.engine import accelerate  # noqa: E402
from facefinder_cli.engine.data import _Data  # noqa: E402
from facefinder_cli.engine.loop import _start  # noqa: E402
from facefinder_cli.engine.passes import _pass  # noqa: E402

TOL = 1e-7


def hard_squarem(data: _Data, p: engine.Params, most: int = 500) -> tuple[int, float]:
    """Accelerated hard EM from ``p`` until a cycle gains less than ``TOL`` per image and
    pixel: its passes and final MAP objective."""
    passes = 0
    for _ in range(most):
        s0 = _pass(data, p, "hard", True)
        p1, _ = s0.m_step(p, update_prior=False)
        s1 = _pass(data, p1, "hard", True)
        p2, info2 = s1.m_step(p1, update_prior=False)
        passes += 2
        alpha, r, v = accelerate.step_length(p, p1, p2, data, False)
        jump = accelerate.extrapolate(p, p2, r, v, alpha, data)
        new = p2
        if jump is not None and alpha < -1:
            s = _pass(data, jump, "hard", True)
            passes += 1
            if s.elbo >= info2["elbo"]:
                new, _ = s.m_step(jump, update_prior=False)
        p = new
        if (info2["elbo"] - s0.elbo) / (data.K * data.H * data.W) < TOL:
            break
    return passes, _pass(data, p, "hard", False).elbo


def main() -> None:
    warnings.simplefilter("ignore", engine.ConvergenceWarning)
    ratios = []
    print("noise K scene | plain passes, s | prototype passes, s | objective gain")
    for noise in (200.0, 400.0, 1000.0):
        for K in (500, 1500):
            for i, (name, (face, background)) in enumerate(scenes().items()):
                data_set = synthetic.make_dataset(face, background, K, noise, seed=100 + i)
                X, n = data_set.images, data_set.images.size
                t = time.perf_counter()
                plain = engine.fit(X, FACE, method="hard", seed=0, prior_update="never",
                                   max_iter=500, tol=TOL, restarts=1)  # fmt: skip
                plain_s = time.perf_counter() - t
                data = _Data(X, FACE)
                start = _start(data, "median", np.random.default_rng(0), 0, {})[0]
                t = time.perf_counter()
                passes, objective = hard_squarem(data, start)
                fast_s = time.perf_counter() - t
                ratios.append(plain.n_iter / passes)
                print(
                    f"{noise:g} {K} {name} | {plain.n_iter}, {plain_s:.2f} | {passes}, "
                    f"{fast_s:.2f} | {(objective - plain.final_elbo) / n:+.1e}",
                    flush=True,
                )
    print(
        f"\nplain passes / prototype passes: median {statistics.median(ratios):.2f}, "
        f"range {min(ratios):.2f} to {max(ratios):.2f}"
    )


if __name__ == "__main__":
    no_options(__doc__)
    main()
