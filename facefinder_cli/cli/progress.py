"""The progress display of ``facefinder fit``: the engine's progress callback as tqdm bars."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from facefinder_cli import engine, runs, synthetic

log = logging.getLogger("facefinder")


class ProgressBar:
    """The engine's progress callback as a tqdm bar on stderr (off when stderr is not a
    terminal); also collects per-iteration errors against a known truth."""

    def __init__(
        self,
        truth: runs.Truth | None,
        saver=None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        self.on_start = on_start
        self._tqdm = tqdm
        self.bar = None
        self.images = None  # a second bar: images through the current pass, if passes are slow
        self.truth = truth
        self.saver = saver
        self.restart = -1
        self.latest: engine.Checkpoint | None = None  # what Ctrl-C saves
        self.errors: dict[int, list[dict[str, float]]] = {}

    def __call__(self, p: engine.Progress) -> None:
        if self.on_start is not None:
            self.on_start()
            self.on_start = None
        self.track(p)
        self.latest = p.checkpoint
        if self.saver is not None:
            self.saver.maybe_save(p.checkpoint, self.errors)

    def track(self, p: engine.Progress) -> None:
        """Errors against the truth per iteration, and the bar."""
        if self.truth is not None:
            rows = self.errors.setdefault(p.restart, [])
            if p.positions is not None:  # the E-step of θ_{t-1}: its positions
                rows[-1]["positions_right"] = synthetic.errors(
                    p.params, p.positions, self.truth.params, self.truth.positions
                )["positions_right"]
            rows.append(synthetic.errors(p.params, None, self.truth.params, self.truth.positions))
        if p.iteration == 0 or p.restart != self.restart:  # a new restart, or a resumed one
            self.close()
            self.restart = p.restart
            desc = f"restart {p.restart + 1}/{p.restarts}" if p.restarts > 1 else "EM"
            self.bar = self._tqdm(
                total=p.max_iter,
                initial=max(p.iteration - 1, 0),
                desc=desc,
                unit="it",
                file=sys.stderr,
                disable=None,
                leave=False,
                dynamic_ncols=True,
            )
            if p.iteration == 0:
                return
        self.bar.set_postfix_str(f"ELBO {p.elbo:.6g}, gain {p.gain:.2g}/px", refresh=False)
        self.bar.update(1)
        log.debug(
            "restart %d, iteration %d: ELBO %.10g, log-likelihood of the previous %.10g, gain "
            "%.3g nats per image and pixel, noise std %.6g",
            p.restart + 1,
            p.iteration,
            p.elbo,
            p.log_likelihood,
            p.gain,
            p.params.noise_std,
        )

    def chunk(self, done: int, total: int) -> None:
        """The engine's per-chunk report: a bar of images through the current pass, shown
        only when a pass takes more than 2 seconds (large stacks)."""
        if self.images is None:
            self.images = self._tqdm(
                total=total,
                desc="images",
                unit="img",
                file=sys.stderr,
                disable=None,
                leave=False,
                dynamic_ncols=True,
                delay=2.0,
                position=1,
            )
        self.images.update(done - self.images.n)
        if done == total:  # a bar per pass, each shown only if that pass is slow
            self.images.close()
            self.images = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.images is not None:
            self.images.close()
            self.images = None
