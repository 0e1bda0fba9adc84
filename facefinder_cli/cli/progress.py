"""The progress display of ``facefinder fit``: the engine's progress reports as tqdm bars.

It only displays; what else a fit does with each report (errors against a known truth, the
checkpoint) is in :mod:`.fit`, which chains it with this bar.
"""

from __future__ import annotations

import logging
import sys

from facefinder_cli import engine

log = logging.getLogger("facefinder")


class ProgressBar:
    """The engine's progress callback as a tqdm bar on stderr (off when stderr is not a
    terminal), with a second bar of images through a slow pass (:meth:`chunk`), and a bar of
    the passes that build a restart's start (:meth:`start`)."""

    def __init__(self, restarts: int = 1) -> None:
        from tqdm import tqdm  # (not tqdm.auto: it imports asyncio and ssl, 50 ms)

        self._tqdm = tqdm
        self.restarts = restarts
        self.bar = None
        self.images = None  # a second bar: images through the current pass, if passes are slow
        self.restart = -1
        self.building: str | None = None  # the start under way, in words (see :meth:`start`)

    def __call__(self, p: engine.Progress) -> None:
        """The bar, and each iteration's numbers in the log at debug level (-v)."""
        if p.iteration == 0 or p.restart != self.restart:  # a new restart, or a resumed one
            self.close()
            self.building = None
            self.restart = p.restart
            self.restarts = p.restarts  # (as many as the fit knows it runs: --restarts auto)
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
        accelerated = p.checkpoint is not None and p.checkpoint.settings.accelerated
        measure = "to go" if accelerated else "gain"
        self.bar.set_postfix_str(f"ELBO {p.elbo:.6g}, {measure} {p.gain:.2g}/px", refresh=False)
        self.bar.update(1)
        log.debug(
            "restart %d, iteration %d: ELBO %.10g, log-likelihood of the previous %.10g, "
            "stopping measure (gain, or estimated distance to the optimum) %.3g nats per image "
            "and pixel, noise std %.6g",
            p.restart + 1,
            p.iteration,
            p.elbo,
            p.log_likelihood,
            p.gain,
            p.params.noise_std,
        )

    def start(self, restart: int, what: str, done: int, total: int) -> None:
        """The engine's report while restart ``restart``'s start is built (``what``: annealing,
        sampling positions): a bar of its ``total`` passes, and :attr:`building`, which the
        line of an interrupt says."""
        if done == 0:
            self.close()
            self.bar = self._tqdm(
                total=total,
                desc=f"restart {restart + 1}/{max(self.restarts, restart + 1)}: {what}",
                unit="pass",
                file=sys.stderr,
                disable=None,
                leave=False,
                dynamic_ncols=True,
            )
            log.debug("restart %d: %s (%d passes over the images)", restart + 1, what, total)
        elif self.bar is not None:
            self.bar.update(done - self.bar.n)
        self.building = f"restart {restart + 1}'s start ({what}, pass {done + 1} of {total})"
        if done == total:
            self.building = None

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
