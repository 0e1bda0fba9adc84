"""Would SQUAREM pay for Monte-Carlo EM? ``python benchmarks/bench_mc_squarem.py`` (about 4
minutes on 2 cores).

A prototype of accelerated Monte-Carlo EM against plain Monte-Carlo EM, both from the default
start with the prior held, with the tool's schedule of draws (``MC_SAMPLES`` per image in the
first pass, times ``MC_GROWTH`` per pass, at most ``MC_MAX_SAMPLES``) and the same random
generator. A cycle of the prototype is two Monte-Carlo EM steps, the S3 jump of
``facefinder_cli.engine.accelerate`` from them, and a Monte-Carlo step from the jump, kept when
the jump's log-likelihood (exact: the E-step is) is at least that of the second step's start;
else the cycle ends at the second step.

Every pass computes the exact log-likelihood of the parameters it starts from. The benchmark
prints, per data set of ``bench_convergence.py``'s scenes (noise 200, 400, 1000; K = 500 and
1500), the passes each needed to come within 1e-5 and 1e-6 nats per image and pixel of soft
EM's optimum (run long from the same start, prior held), "-" when not within ``PASSES``
passes, the best either reached, and how many of the prototype's cycles jumped. Not part of
the tool: Monte-Carlo EM is not accelerated (docs/PERFORMANCE.md says why).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _args import no_options  # noqa: E402
from bench_convergence import FACE, scenes  # noqa: E402

from facefinder_cli import engine, synthetic  # noqa: E402
from facefinder_cli.engine import accelerate  # noqa: E402
from facefinder_cli.engine.data import _Data  # noqa: E402
from facefinder_cli.engine.loop import _samples_at, _start  # noqa: E402
from facefinder_cli.engine.model import MC_GROWTH, MC_MAX_SAMPLES, MC_SAMPLES  # noqa: E402
from facefinder_cli.engine.passes import _pass  # noqa: E402

PASSES = 300
LEVELS = (1e-5, 1e-6)


class _Draws:
    """Passes of Monte-Carlo EM with the tool's schedule of draws; records each pass's exact
    log-likelihood."""

    def __init__(self, data: _Data, seed: int) -> None:
        self.data, self.rng, self.lls = data, np.random.default_rng(seed), []

    def step(self, p: engine.Params) -> tuple[engine.Params, float]:
        samples = _samples_at(len(self.lls) + 1, MC_SAMPLES, MC_GROWTH, MC_MAX_SAMPLES)
        s = _pass(self.data, p, "mc", True, rng=self.rng, samples=samples)
        self.lls.append(s.log_likelihood)
        new, _ = s.m_step(p, update_prior=False)
        return new, s.log_likelihood


def plain(data: _Data, p: engine.Params, seed: int) -> list[float]:
    run = _Draws(data, seed)
    while len(run.lls) < PASSES:
        p, _ = run.step(p)
    return run.lls


def squarem(data: _Data, p: engine.Params, seed: int) -> tuple[list[float], list[int]]:
    """The log-likelihoods, and per cycle 0 (no jump: the S3 step length was 1), 1 (a jump,
    refused) or 2 (a jump, kept)."""
    run, cycles = _Draws(data, seed), []
    while len(run.lls) < PASSES - 2:
        p1, _ = run.step(p)
        p2, ll1 = run.step(p1)
        alpha, r, v = accelerate.step_length(p, p1, p2, data, False)
        jump = accelerate.extrapolate(p, p2, r, v, alpha, data)
        p = p2
        cycles.append(0)
        if jump is not None and alpha < -1:
            after, ll_jump = run.step(jump)
            cycles[-1] = 1
            if ll_jump >= ll1:
                p, cycles[-1] = after, 2
    return run.lls, cycles


def _first(lls: list[float], target: float) -> str:
    at = np.flatnonzero(np.asarray(lls) >= target)
    return str(int(at[0]) + 1) if len(at) else "-"


def main() -> None:
    warnings.simplefilter("ignore", engine.ConvergenceWarning)
    print(f"passes to within {LEVELS} nats per image and pixel of soft EM's optimum")
    print("noise K scene | plain | prototype | best gap: plain, prototype | cycles with a jump, "
          "jumps kept")  # fmt: skip
    tried = total = 0
    for noise in (200.0, 400.0, 1000.0):
        for K in (500, 1500):
            for i, (name, (face, background)) in enumerate(scenes().items()):
                X = synthetic.make_dataset(face, background, K, noise, seed=100 + i).images
                data = _Data(X, FACE)
                start = _start(data, "median", np.random.default_rng(0), 0, {})[0]
                soft = engine.fit(X, FACE, init_params=start, prior_update="never", tol=1e-12,
                                  max_iter=1000)  # fmt: skip
                top, n = float(soft.log_likelihood[-1]), X.size
                fast, cycles = squarem(data, start, seed=1)
                runs = [plain(data, start, seed=1), fast]
                cells = [
                    ", ".join(_first(lls, top - level * n) for level in LEVELS) for lls in runs
                ]
                gaps = ", ".join(f"{(top - max(lls)) / n:.1e}" for lls in runs)
                jumps = f"{cycles.count(1) + cycles.count(2)}/{len(cycles)}, {cycles.count(2)}"
                print(f"{noise:g} {K} {name} | {cells[0]} | {cells[1]} | {gaps} | {jumps}",
                      flush=True)  # fmt: skip
                tried += cycles.count(1) + cycles.count(2)
                total += len(cycles)
    print(f"\ncycles with a jump: {tried} of {total}")


if __name__ == "__main__":
    no_options(__doc__)
    main()
