#!/usr/bin/env python3
"""Write REPORT.md for experiments/Makefile: tables, face montages, error curves and a verdict
on each of the original study's conclusions, all from the runs of this build.

No EM here. Every fitted number is read from RUN/result.npz (written by `facefinder fit`), the
truth from DATA/truth.npz (`facefinder generate`). The one thing computed from the images is the
known-position oracle: the mean of each image's crop at its true position (and, for the
background, the mean of the pixels the face leaves visible). Verdicts follow the rules below,
applied to the numbers of this run, so a rerun with other numbers updates them.

Run by the Makefile; `python report.py --help` lists the options.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from facefinder_cli.synthetic import hidden_pixels  # noqa: E402

# The rules behind the verdicts (nats are per image and pixel: log-likelihood / (K H W)).
SAME_BOUND = 1e-5  # final log-likelihoods closer than this: the same optimum
NEAR_BOUND = 1e-4  # closer than this (but not SAME_BOUND): nearby optima, "partly"
AT_OPTIMUM = 1e-6  # EM at most this far below EM-from-the-truth: it found the optimum
RECOGNISABLE = 0.8  # correlation of the recovered face with the true face
CLEAR = 0.95  # ... and a clear face
SPEEDUP = (1.5, 2.0)  # the study's hard-EM speed-up; within 10% of this range "agrees"
ROUGH = 0.6  # a rough face: below RECOGNISABLE but clearly more than noise
SAME_ITERS = 1.5  # iteration counts within this factor: "practically the same convergence"
BETTER = 0.1  # a face correlation higher by this much is "better"

SECTIONS = [
    "## The study's conclusions",
    "## 1. Initialisations",
    "## 2. Sample size and noise",
    "## 3. Soft, hard and Monte-Carlo EM",
    "## 4. Yardsticks: the oracle and EM from the truth",
    "## 5. A larger, realistic case",
    "## Rules",
    "## How long it took",
]
CLAIMS = {  # the study's conclusions, in the order of the verdict table
    "same-bound": "All initialisations reach the same lower bound.",
    "smooth-fastest": "The smoothed (Gaussian-filtered) start converges fastest.",
    "zeros-bright": "Zeros and bright starts behave identically.",
    "random-slowest": "The random start needs the most iterations.",
    "low-noise-few": "At the lowest noise even the fewest images give a recognisable face.",
    "high-noise-fails": "At the highest noise (1000) even the most images (1500) are not enough.",
    "iterations": "At low noise small and large samples converge alike; at higher noise the "
    "smallest sample needs more iterations.",
    "all-iterations": "At the highest noise EM runs (nearly) all its iterations.",
    "noise-hurts": "F and B errors grow with the noise.",
    "f-not-b": "More images improve F but not always B.",
    "hard-faster": "Hard EM is 1.5-2 times faster than soft EM.",
    "hard-zeros": "Hard EM fails from the zero start.",
    "hard-others": "Hard EM works from the bright, random and smoothed starts.",
    "mc": "Monte-Carlo EM (positions drawn from the posteriors: the study's proposal) reaches "
    "soft EM's optimum.",
    "resolution": "At a higher resolution EM copes better with strong noise.",
    "photo-k": "A realistic face can be made out from about 300 images and is beyond doubt at "
    "about 1000.",
}
STARTS = {  # what each run name's start means, for the tables
    "zeros": "zeros (F = B = 0)",
    "bright": "bright (F = B = 255)",
    "random": "random (uniform 0..255)",
    "smooth": "smooth (filtered random images)",
    "median": "median (the tool's default)",
    "truth": "the true parameters (yardstick)",
}
STUDY_STARTS = ["zeros", "bright", "random", "smooth"]


# ---------------------------------------------------------------------------------------------
# Reading runs and data
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    face: np.ndarray
    n_iter: int
    converged: bool
    seconds: float  # EM time, without start-up and writing
    ll: float  # final log-likelihood per image and pixel
    elbo: float  # final ELBO (hard EM: the MAP objective) per image and pixel
    elbo_curve: np.ndarray  # the ELBO per image and pixel, per iteration
    history: dict  # per iteration: face_rmse, background_rmse, ..._seen, ..._hidden
    corr: float  # correlation of the face with the true face

    @property
    def iterations(self) -> str:
        return str(self.n_iter) if self.converged else f"{self.n_iter} (max)"

    @property
    def ms_per_iteration(self) -> float:
        return 1000 * self.seconds / max(self.n_iter, 1)

    def final(self, key: str) -> float:
        return float(self.history[key][-1])


class Build:
    """The data sets and runs under the build folder, loaded on demand."""

    def __init__(self, out: Path) -> None:
        self.out = out

    @functools.cache  # noqa: B019 (one Build per run of the script)
    def truth(self, data: str) -> dict:
        with np.load(self.out / "data" / data / "truth.npz") as z:
            return {k: z[k] for k in z.files}

    @functools.cache  # noqa: B019 (one Build per run of the script)
    def run(self, data: str, name: str) -> Run:
        with np.load(self.out / "runs" / data / name / "result.npz") as z:
            n_values = z["positions"].shape[0] * z["background"].size
            return Run(
                face=z["face"],
                n_iter=int(z["n_iter"]),
                converged=bool(z["converged"]),
                seconds=float(z["seconds"][-1]),
                ll=float(z["log_likelihood"][-1]) / n_values,
                elbo=float(z["elbo"][-1]) / n_values,
                elbo_curve=z["elbo"] / n_values,
                history={k: z[k] for k in z.files if k.startswith(("face_", "background_"))},
                corr=correlation(z["face"], self.truth(data)["face"]),
            )

    @functools.cache  # noqa: B019 (one Build per run of the script)
    def oracle(self, data: str) -> dict:
        """The known-position oracle: face = mean of the crops at the true positions,
        background = mean of the visible pixels; errors against the truth."""
        t = self.truth(data)
        h, w = t["face"].shape
        face_sum = np.zeros((h, w))
        bg_sum = np.zeros(t["background"].shape)
        bg_count = np.zeros(t["background"].shape)
        files = sorted((self.out / "data" / data).glob("img*.tif"))
        assert len(files) == len(t["positions"]), f"{data}: images and truth differ"
        for f, (r, c) in zip(files, t["positions"]):
            x = iio.imread(f).astype(np.float64)
            face_sum += x[r : r + h, c : c + w]
            visible = np.ones(x.shape, bool)
            visible[r : r + h, c : c + w] = False
            bg_sum += np.where(visible, x, 0)
            bg_count += visible
        face = face_sum / len(files)
        seen = ~hidden_pixels(t["prior"], (h, w)) & (bg_count > 0)
        return {
            "face": face,
            "corr": correlation(face, t["face"]),
            "face_rmse": rms(face - t["face"]),
            "background_rmse_seen": rms(bg_sum[seen] / bg_count[seen] - t["background"][seen]),
        }


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    d = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / d) if d > 0 else float("nan")


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


# ---------------------------------------------------------------------------------------------
# Formatting and figures
# ---------------------------------------------------------------------------------------------


def table(headers: str, rows: list[list]) -> str:
    """A Markdown table; ``headers`` separated by " | "."""
    lines = [f"| {headers} |", "|" + "---|" * len(headers.split(" | "))]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n"


def f1(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.1f}"


def f2(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.2f}"


def sci(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def listing(xs) -> str:
    return ", ".join(str(x) for x in xs)


def montage(path: Path, rows: list[list], row_labels: list[str]) -> None:
    """Faces in a grid, one grey scale (0..255) for all; a cell is (image, title) or None."""
    n_cols = max(len(r) for r in rows)
    h, w = next(c for c in rows[0] if c is not None)[0].shape
    fig, axes = plt.subplots(
        len(rows),
        n_cols,
        figsize=(1.25 * n_cols * max(1.0, w / h) + 0.6, 1.6 * len(rows)),
        squeeze=False,
    )
    for i, row in enumerate(rows):
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            cell = row[j] if j < len(row) else None
            if cell is None:
                ax.set_frame_on(False)
                continue
            ax.imshow(cell[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(cell[1], fontsize=7)
        axes[i][0].set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def error_curves(path: Path, runs: dict, ks: list[int], noises: list[int]) -> None:
    """The study's figures 6 and 7: ||F - F_true|| and ||B - B_true|| (as RMS) per iteration of
    the study's EM for every sample size and noise level; B over all pixels and over the
    identifiable ones (those some position leaves visible)."""
    quantities = [
        ("face_rmse", "face RMSE"),
        ("background_rmse", "background RMSE, all pixels"),
        ("background_rmse_seen", "background RMSE,\nidentifiable pixels"),
    ]
    fig, axes = plt.subplots(3, len(noises), figsize=(3.6 * len(noises), 7.5), squeeze=False)
    for j, s in enumerate(noises):
        for i, (key, label) in enumerate(quantities):
            ax = axes[i][j]
            for k in ks:
                y = runs[(k, s)].history[key]
                ax.plot(np.arange(1, len(y)), y[1:], label=f"K = {k}")
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"noise std {s}")
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            if i == 2:
                ax.set_xlabel("iteration")
    axes[0][0].legend(fontsize="small")
    fig.suptitle("soft EM from zeros (the study's EM): errors against the truth", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def elbo_curves(path: Path, runs: dict, ks: list[int], noises: list[int]) -> None:
    """The study's figure 5: ELBO per image and pixel of the study's EM for every sample size,
    one column per noise level; below, each curve's distance to its own final value."""
    fig, axes = plt.subplots(2, len(noises), figsize=(3.6 * len(noises), 5.6), squeeze=False)
    for j, s in enumerate(noises):
        for k in ks:
            y = runs[(k, s)].elbo_curve
            t = np.arange(1, len(y))
            axes[0][j].plot(t, y[1:], label=f"K = {k}")
            gap = y[-1] - y[1:-1]
            axes[1][j].plot(t[:-1], np.where(gap > 0, gap, np.nan), label=f"K = {k}")
        axes[0][j].set_title(f"noise std {s}")
        axes[1][j].set_yscale("log")
        axes[1][j].set_xlabel("iteration")
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ELBO per image and pixel", fontsize=8)
    axes[1][0].set_ylabel("final − ELBO (nats per image\nand pixel)", fontsize=8)
    axes[0][0].legend(fontsize="small")
    fig.suptitle("soft EM from zeros (the study's EM)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def verdict(ok: bool, partly: bool = False) -> str:
    return "agrees" if ok else "partly" if partly else "disagrees"


def falls(xs: list[float]) -> bool:
    """Non-increasing (more images never worse)."""
    return all(b <= a for a, b in zip(xs, xs[1:]))


# ---------------------------------------------------------------------------------------------
# The report, section by section
# ---------------------------------------------------------------------------------------------


class Report:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.build = Build(a.out)
        self.md: list[str] = []
        self.verdicts: dict[str, tuple[str, str]] = {}  # claim id -> (verdict, evidence)
        a.fig.mkdir(parents=True, exist_ok=True)

    def add(self, *text: str) -> None:
        self.md.extend(text)

    def figure(self, name: str, alt: str) -> str:
        return f"![{alt}]({os.path.relpath(self.a.fig / name, self.a.report.parent)})"

    def conclude(self, claim: str, v: str, evidence: str) -> None:
        self.verdicts[claim] = (v, evidence)

    # --- 1 -------------------------------------------------------------------------------------
    def initialisations(self) -> None:
        a, d = self.a, self.a.init_data
        _, k0, s0 = d.split("-")
        soft = {i: self.build.run(d, f"soft-{i}") for i in [*a.inits, "truth"]}
        best = max(r.ll for r in soft.values())
        self.add(
            f"{SECTIONS[1]}\n\nSoft EM on {k0} images at noise std {s0} (`{d}`), from each start. "
            "The study's starts learn the prior from the first iteration, as the study did; the "
            "default start holds it until the rest converges.\n\n",
            table(
                "start | prior learnt | seconds | iterations | final ELBO | final log-lik. | "
                "below best | face corr.",
                [
                    [
                        STARTS[i],
                        "always" if i in STUDY_STARTS else "late",
                        f"{r.seconds:.2f}",
                        r.iterations,
                        f"{r.elbo:.7f}",
                        f"{r.ll:.7f}",
                        sci(best - r.ll),
                        f"{r.corr:.3f}",
                    ]
                    for i, r in soft.items()
                ],
            ),
            "ELBO and log-likelihood in nats per image and pixel (÷ K·H·W); *below best*: the gap "
            "to the highest final log-likelihood in the table; *face corr.*: correlation of the "
            "recovered face with the true one; seconds: EM only (`result.npz`), without starting "
            "the tool.\n\n",
        )
        study = {i: soft[i] for i in STUDY_STARTS}
        lls = [r.ll for r in study.values()]
        spread = max(lls) - min(lls)
        fewest = min(r.n_iter for r in study.values())
        fastest = [i for i in study if study[i].n_iter == fewest]
        slowest = max(study, key=lambda i: study[i].n_iter)
        corrs = [r.corr for r in study.values()]
        self.add(
            f"The study's four starts end within {sci(spread)} nats per image and pixel of each "
            f"other, with face correlations {min(corrs):.3f} to {max(corrs):.3f}. The "
            f"{' and '.join(fastest)} start{'s need' if len(fastest) > 1 else ' needs'} the "
            f"fewest iterations ({fewest}), the {slowest} start "
            f"the most ({study[slowest].n_iter}). The default start ends "
            f"{sci(best - soft['median'].ll)} below the best and EM from the true parameters "
            f"{sci(best - soft['truth'].ll)}.\n\n"
        )
        montage(
            a.fig / "inits-faces.png",
            [
                [(self.build.truth(d)["face"], "truth")]
                + [(soft[i].face, f"{i}\ncorr {soft[i].corr:.3f}") for i in a.inits]
            ],
            [f"K={k0}, s={s0}"],
        )
        self.add(
            self.figure("inits-faces.png", "faces from each start"),
            "\n\nThe recovered faces beside the truth, on one grey scale (0..255): the study's "
            "figure 2. Starts that reach the same bound give the same face.\n\n",
            self.figure("inits-elbo.png", "ELBO from each start"),
            "\n\nThe study's figure 3, drawn by `facefinder plot-elbo --gap --per-pixel`: how far "
            "each start's ELBO lies below the best final value, per image and pixel, on a log "
            "scale. A curve that levels off above the others has stopped at a lower optimum; a "
            "circle marks where the default start begins to learn the prior.\n\n",
        )
        z, b = study["zeros"], study["bright"]
        self.conclude(
            "same-bound",
            verdict(spread <= SAME_BOUND, spread <= NEAR_BOUND),
            f"final log-likelihoods of the four starts span {sci(spread)} nats per image and "
            f"pixel; face correlations {min(corrs):.3f}-{max(corrs):.3f}. Rule: ≤ {SAME_BOUND:g} "
            f"agrees, ≤ {NEAR_BOUND:g} partly.",
        )
        by_time = min(study, key=lambda i: study[i].seconds)
        self.conclude(
            "smooth-fastest",
            verdict(fastest == ["smooth"], by_time == "smooth"),
            "iterations "
            + listing(f"{i} {r.n_iter}" for i, r in study.items())
            + "; seconds "
            + listing(f"{i} {r.seconds:.2f}" for i, r in study.items())
            + ". Rule: fewest iterations agrees; fewest seconds only, partly.",
        )
        self.conclude(
            "zeros-bright",
            verdict(
                abs(z.ll - b.ll) <= 1e-9 and z.n_iter == b.n_iter, abs(z.ll - b.ll) <= SAME_BOUND
            ),
            f"{z.n_iter} and {b.n_iter} iterations, final log-likelihoods {abs(z.ll - b.ll):.0e} "
            "apart: with a constant face and background every position is equally likely, so "
            "both first posteriors are the prior. Rule: same iterations and within 1e-9 agrees.",
        )
        self.conclude(
            "random-slowest",
            verdict(slowest == "random"),
            f"the most iterations: {slowest} ({study[slowest].n_iter}).",
        )

    # --- 2 -------------------------------------------------------------------------------------
    def grid(self) -> None:
        a, build = self.a, self.build
        ks, noises = a.ks, a.noises
        cells = [(k, s) for k in ks for s in noises]
        name = {c: f"study-{c[0]}-{c[1]}" for c in cells}
        self.em = em = {c: build.run(name[c], "soft-zeros") for c in cells}
        self.default = {c: build.run(name[c], "soft-median") for c in cells}
        self.yard = {c: build.run(name[c], "soft-truth") for c in cells}
        self.oracle = {c: build.oracle(name[c]) for c in cells}
        self.cells = cells
        dflt, yard, orc = self.default, self.yard, self.oracle
        self.add(
            f"{SECTIONS[2]}\n\nK ∈ {{{listing(ks)}}} images × noise std ∈ {{{listing(noises)}}}, "
            "a 16x16 face on 20x30 bricks. *Study EM*: soft EM from zeros, the prior learnt from "
            "the first iteration; *default*: the tool's default start and prior schedule; *from "
            "truth*: EM started at the true parameters; *oracle*: the mean of the crops at the "
            "true positions (no EM). Errors are those of the study EM (of the oracle in "
            "brackets).\n\n",
            table(
                "K | noise | iterations | seconds | corr. study EM | corr. default | "
                "corr. from truth | corr. oracle | F RMSE | B RMSE identifiable (oracle) | "
                "B RMSE hidden block | B RMSE all",
                [
                    [
                        k,
                        s,
                        em[c].iterations,
                        f"{em[c].seconds:.1f}",
                        f2(em[c].corr),
                        f2(dflt[c].corr),
                        f2(yard[c].corr),
                        f2(orc[c]["corr"]),
                        f1(em[c].final("face_rmse")),
                        f"{f1(em[c].final('background_rmse_seen'))} "
                        f"({f1(orc[c]['background_rmse_seen'])})",
                        f1(em[c].final("background_rmse_hidden")),
                        f1(em[c].final("background_rmse")),
                    ]
                    for c in cells
                    for k, s in [c]
                ],
            ),
            "Errors are root mean squares in grey levels (the study plotted norms: the same up to "
            "a factor √pixels).\n\n",
        )
        rows = []
        for k in ks:
            row = [(build.truth(name[(k, noises[0])])["face"], "truth")]
            for s in noises:
                c = (k, s)
                row += [
                    (em[c].face, f"s={s} study EM\n{em[c].corr:.2f}"),
                    (dflt[c].face, f"default\n{dflt[c].corr:.2f}"),
                    (yard[c].face, f"from truth\n{yard[c].corr:.2f}"),
                    (orc[c]["face"], f"oracle\n{orc[c]['corr']:.2f}"),
                ]
            rows.append(row)
        montage(a.fig / "grid-faces.png", rows, [f"K = {k}" for k in ks])
        lo, hi = (ks[0], noises[0]), (ks[-1], noises[-1])
        self.add(
            self.figure("grid-faces.png", "faces for every sample size and noise"),
            "\n\nThe study's figure 4 with the yardsticks beside it: one row per sample size, "
            "four faces per noise level (numbers: correlation with the truth). "
            f"At noise {lo[1]}, {lo[0]} images give a face of correlation {em[lo].corr:.2f}; at "
            f"noise {hi[1]}, {hi[0]} images give {em[hi].corr:.2f}, EM from the truth "
            f"{yard[hi].corr:.2f} and the oracle, which knows the positions, "
            f"{orc[hi]['corr']:.2f}: what the data cannot pin down is where the face is.\n\n",
        )
        iters = {s: [em[(k, s)].n_iter for k in ks] for s in noises}
        elbo_curves(a.fig / "grid-elbo.png", em, ks, noises)
        self.add(
            self.figure("grid-elbo.png", "ELBO per iteration for every sample size and noise"),
            "\n\nThe study's figure 5: the study EM's ELBO per image and pixel for each sample "
            "size (top; from iteration 1, as the zero start lies thousands of nats below) and "
            "its distance to the run's own final value on a log scale (bottom), which shows the "
            "speed of convergence. Iterations to convergence: "
            + "; ".join(f"noise {s}: {listing(iters[s])}" for s in noises)
            + f" for K = {listing(ks)} (at most {a.max_iter}; tolerance {a.tol:g} nats per image "
            "and pixel per iteration). Drawn by the report script: `plot-elbo` has no way to "
            "leave out the start or to measure each curve from its own end.\n\n",
        )
        error_curves(a.fig / "grid-errors.png", em, ks, noises)
        hidden_n = int(hidden_pixels(build.truth(name[lo])["prior"], (16, 16)).sum())
        f_err = {s: [em[(k, s)].final("face_rmse") for k in ks] for s in noises}
        b_all = {s: [em[(k, s)].final("background_rmse") for k in ks] for s in noises}
        b_seen = {s: [em[(k, s)].final("background_rmse_seen") for k in ks] for s in noises}
        b_hidden = em[lo].final("background_rmse_hidden")
        f_down = [s for s in noises if falls(f_err[s])]
        seen_down = [s for s in noises if falls(b_seen[s])]
        all_down = [s for s in noises if falls(b_all[s])]
        n_pixels = build.truth(name[lo])["background"].size
        share = (
            b_hidden**2 * hidden_n / (em[(ks[-1], lo[1])].final("background_rmse") ** 2 * n_pixels)
        )
        self.add(
            self.figure("grid-errors.png", "errors per iteration"),
            "\n\nThe study's figures 6 and 7 as RMS per iteration (log scale): the face, the "
            "background over all pixels and over the identifiable ones. "
            f"The face covers the same {hidden_n} background pixels (a 12x2 block) at every "
            "position, so no image ever shows them and B is not identifiable there. The tool "
            "reports them as unknown (0) instead of guessing: their error is the RMS of the true "
            f"background there, {b_hidden:.1f}, in every run, {share:.0%} of B's squared error "
            f"with {ks[-1]} images at noise {noises[0]}. On the identifiable pixels B's error "
            f"falls with K at noise {listing(seen_down) or 'no level'}, and F's at "
            f"{listing(f_down) or 'no level'}. The study's estimator divides by the expected "
            "number of images that show a pixel, which is zero on the block, so its values there "
            "are an artefact of the arithmetic (or of the start) and can make the total B error "
            "go either way with more images"
            + (
                ": this explains the study's finding, since on the identifiable pixels more "
                "images always helped here.\n\n"
                if len(seen_down) == len(noises)
                else "; but here B does not always improve on the identifiable pixels either (at "
                f"noise {listing(s for s in noises if s not in seen_down)}), so the block "
                "explains the finding only in part.\n\n"
            ),
        )
        blur = {c: float(em[c].history["face_rmse"][1]) for c in cells}
        worse = [c for c in cells if em[c].final("face_rmse") > blur[c]]
        self.add(
            "After the first iteration every position is equally likely and the face is a blur "
            f"of the images (error {min(blur.values()):.0f} to {max(blur.values()):.0f}). EM "
            "then commits to positions and sharpens it. Where the positions can be found, the "
            "error falls far below the blur's; "
            + (
                f"where the noise hides them ({'; '.join(f'K={k} s={s}' for k, s in worse)}), EM "
                "sharpens noise and ends further from the truth than the blur, while its ELBO "
                "rises throughout: the likelihood prefers a sharp wrong face.\n\n"
                if worse
                else "here it does so in every cell.\n\n"
            )
        )
        s_lo, s_hi = noises[0], noises[-1]
        ratio = max(iters[s_lo]) / max(min(iters[s_lo]), 1)
        s_mid = noises[1] if len(noises) > 2 else noises[-1]
        more_small = iters[s_mid][0] > max(iters[s_mid][1:], default=0)
        at_max = [
            em[(k, s_hi)].n_iter >= 0.9 * a.max_iter or not em[(k, s_hi)].converged for k in ks
        ]
        grows = all(
            all(y >= x for x, y in zip(v, v[1:]))
            for k in ks
            for v in (
                [em[(k, s)].final("face_rmse") for s in noises],
                [em[(k, s)].final("background_rmse_seen") for s in noises],
            )
        )
        self.conclude(
            "low-noise-few",
            verdict(em[lo].corr >= RECOGNISABLE, em[lo].corr >= ROUGH),
            f"K = {lo[0]}, noise {lo[1]}: face correlation {em[lo].corr:.2f} (oracle "
            f"{orc[lo]['corr']:.2f}). Rule: ≥ {RECOGNISABLE} agrees, ≥ {ROUGH} (a rough face) "
            "partly.",
        )
        self.conclude(
            "high-noise-fails",
            verdict(em[hi].corr < ROUGH, em[hi].corr < RECOGNISABLE),
            f"K = {hi[0]}, noise {hi[1]}: study EM {em[hi].corr:.2f}, default "
            f"{dflt[hi].corr:.2f}, from the truth {yard[hi].corr:.2f}, oracle "
            f"{orc[hi]['corr']:.2f}. Rule: study EM < {ROUGH} agrees, < {RECOGNISABLE} partly.",
        )
        self.conclude(
            "iterations",
            verdict(ratio <= SAME_ITERS and more_small, ratio <= SAME_ITERS or more_small),
            f"iterations for K = {listing(ks)}: noise {s_lo}: {listing(iters[s_lo])} (most/fewest "
            f"{ratio:.1f}; rule ≤ {SAME_ITERS}); noise {s_mid}: {listing(iters[s_mid])} (rule: "
            f"K = {ks[0]} needs the most). Rule: both hold agrees, one partly.",
        )
        self.conclude(
            "all-iterations",
            verdict(all(at_max), any(at_max)),
            f"noise {s_hi}: {listing(iters[s_hi])} iterations of at most {a.max_iter}. Rule: "
            "≥ 90% of the maximum (or not converged) for every K agrees, for some partly. The "
            "study's own maximum is not stated.",
        )
        self.conclude(
            "noise-hurts",
            verdict(grows),
            "final F RMSE by noise "
            + listing(noises)
            + ": "
            + "; ".join(
                f"K={k}: " + listing(f1(f_err[s][i]) for s in noises) for i, k in enumerate(ks)
            )
            + ". Rule: F and identifiable-B errors never fall as the noise grows.",
        )
        self.conclude(
            "f-not-b",
            verdict(
                len(f_down) == len(noises) and len(seen_down) < len(noises),
                len(f_down) >= len(noises) - 1,
            ),
            f"final RMSE for K = {listing(ks)}: "
            + "; ".join(
                f"noise {s}: F {listing(f1(x) for x in f_err[s])}, identifiable B "
                f"{listing(f1(x) for x in b_seen[s])}"
                for s in noises
            )
            + f". The hidden block's error is {b_hidden:.1f} whatever K"
            + (
                ", and B's total error falls with K at every noise."
                if len(all_down) == len(noises)
                else "."
            )
            + " Rule: F falls with K at every noise and identifiable B does not at some, agrees; "
            "F falls at all noise levels but one, partly.",
        )

    # --- 3 -------------------------------------------------------------------------------------
    def methods(self) -> None:
        a, d = self.a, self.a.init_data
        runs = {
            (m, i): self.build.run(d, f"{m}-{i}")
            for i in a.inits
            for m in ("soft", "hard", "mc")
            if m != "mc" or i in a.mc_inits
        }
        best = max([r.ll for r in runs.values()] + [self.build.run(d, "soft-truth").ll])
        self.add(
            f"{SECTIONS[3]}\n\nEvery method from every start on `{d}`"
            + (
                ""
                if a.mc_inits == a.inits
                else f" (Monte-Carlo EM from {listing(a.mc_inits)} only)"
            )
            + ".\n\n",
            table(
                "start | method | seconds | iterations | ms / iteration | final log-lik. | "
                "below best | face corr.",
                [
                    [
                        STARTS[i] if m == "soft" else "",
                        m,
                        f"{r.seconds:.2f}",
                        r.iterations,
                        f"{r.ms_per_iteration:.1f}",
                        f"{r.ll:.7f}",
                        sci(best - r.ll),
                        f"{r.corr:.3f}",
                    ]
                    for (m, i), r in runs.items()
                ],
            ),
            "The log-likelihood log p(X | θ) is the number that compares the methods: each "
            "method's own bound differs (hard EM's is the MAP objective, Monte-Carlo EM's is "
            "computed on its draws). *Below best*: gap to the best final log-likelihood of any "
            "run on these data, EM from the truth included.\n\n",
        )

        def gaps(m: str) -> str:
            g = [best - r.ll for (mm, _), r in runs.items() if mm == m]
            return f"{sci(min(g))} to {sci(max(g))}"

        def ms(m: str) -> str:
            t = [r.ms_per_iteration for (mm, _), r in runs.items() if mm == m]
            return f"{min(t):.1f}-{max(t):.1f} ms"

        self.add(
            f"Below the best, soft EM ends {gaps('soft')} nats per image and pixel, hard EM "
            f"{gaps('hard')}, Monte-Carlo EM {gaps('mc')}; an iteration takes {ms('soft')} "
            f"(soft), {ms('hard')} (hard) and {ms('mc')} (Monte-Carlo). Hard EM also needs "
            "fewer iterations: its bound stops rising as soon as the positions stop changing.\n\n"
        )
        montage(
            a.fig / "methods-faces.png",
            [
                [
                    (runs[(m, i)].face, f"{i}\n{runs[(m, i)].corr:.2f}") if (m, i) in runs else None
                    for i in a.inits
                ]
                for m in ("soft", "hard", "mc")
            ],
            ["soft EM", "hard EM", "Monte-Carlo EM"],
        )
        self.add(
            self.figure("methods-faces.png", "faces by method and start"),
            "\n\nThe study's figure 8, with Monte-Carlo EM added: one row per method, one column "
            "per start (numbers: correlation with the truth).\n\n",
            "| "
            + " | ".join(f"from {i}" for i in a.method_figs)
            + " |\n|"
            + "---|" * len(a.method_figs)
            + "\n| "
            + " | ".join(
                self.figure(f"methods-{i}.png", f"methods from {i}") for i in a.method_figs
            )
            + " |\n\n",
            "The three methods from each start: log-likelihood gap to the best of each figure "
            "against seconds (`plot-elbo --quantity log-likelihood --x seconds --gap "
            "--per-pixel`). A curve that ends high stopped at a worse optimum; its end on the "
            "time axis is the time to convergence.\n\n",
            self.figure("hard-elbo.png", "hard EM from each start"),
            "\n\nThe study's figure 9: hard EM's own bound (the MAP objective) from each start, "
            "as a gap to the best (`plot-elbo --gap`).\n\n",
        )
        ok = {i: runs[("hard", i)].corr >= RECOGNISABLE for i in a.inits}
        ratios = [runs[("soft", i)].seconds / runs[("hard", i)].seconds for i in a.inits if ok[i]]
        speedup = float(np.median(ratios)) if ratios else float("nan")
        lo, hi = SPEEDUP[0] * 0.9, SPEEDUP[1] * 1.1
        per_it = [
            runs[("soft", i)].ms_per_iteration / runs[("hard", i)].ms_per_iteration for i in a.inits
        ]
        self.conclude(
            "hard-faster",
            verdict(lo <= speedup <= hi, speedup > 1),
            f"soft/hard time to convergence {f1(speedup)} times (median over the starts where hard "
            f"EM finds the face: {listing(i for i in a.inits if ok[i]) or 'none'}); per "
            f"iteration soft/hard time {min(per_it):.1f}-{max(per_it):.1f}. Rule: "
            f"{lo:.2f}-{hi:.1f} agrees, > 1 partly. Times vary a little between reruns.",
        )
        hz, sz = runs[("hard", "zeros")], runs[("soft", "zeros")]
        self.conclude(
            "hard-zeros",
            verdict(not ok["zeros"] and sz.corr >= RECOGNISABLE),
            f"from zeros hard EM stops after {hz.n_iter} iterations, {sci(best - hz.ll)} below "
            f"the best, face correlation {hz.corr:.2f} (soft EM from zeros: {sz.corr:.2f}). From "
            "a constant start every position ties in exact arithmetic, and floating-point "
            "rounding picks each image's first MAP position: whether hard EM then finds the "
            "face from zeros or bright is a matter of chance, not of the method (soft EM weighs "
            f"all positions equally instead). Rule: hard < {RECOGNISABLE} and soft ≥ "
            f"{RECOGNISABLE} agrees.",
        )
        others = [i for i in STUDY_STARTS if i != "zeros"]
        self.conclude(
            "hard-others",
            verdict(all(ok[i] for i in others), any(ok[i] for i in others)),
            "hard EM face correlations: "
            + listing(f"{i} {runs[('hard', i)].corr:.2f}" for i in others)
            + f". Rule: all ≥ {RECOGNISABLE} agrees, some partly."
            + " Bright is a constant start like zeros: its first positions are ties broken by "
            "rounding (see the previous row), so its outcome is luck.",
        )
        gaps = {i: runs[("soft", i)].ll - runs[("mc", i)].ll for i in a.mc_inits}
        same = [i for i in a.mc_inits if gaps[i] <= SAME_BOUND]
        near = [i for i in a.mc_inits if gaps[i] <= NEAR_BOUND]
        self.conclude(
            "mc",
            verdict(len(same) == len(gaps), 2 * len(near) >= len(gaps)),
            "Monte-Carlo EM's final log-likelihood below soft EM's from the same start: "
            + listing(f"{i} {sci(g)}" for i, g in gaps.items())
            + "; face correlations "
            + listing(f"{i} {runs[('mc', i)].corr:.3f}" for i in a.mc_inits)
            + f". Rule: ≤ {SAME_BOUND:g} from every start agrees; ≤ {NEAR_BOUND:g} (a nearby "
            "optimum) from at least half, partly.",
        )

    # --- 4 -------------------------------------------------------------------------------------
    def yardsticks(self) -> None:
        self.add(
            f"{SECTIONS[4]}\n\nFor every cell of experiment 2: the face error of the oracle "
            "(positions known), of EM started at the true parameters (the best optimum EM can be "
            "shown), and of the study EM and the default; and how far each EM's final "
            "log-likelihood lies below the truth-started one. Diagnosis (rule): an EM within "
            f"{AT_OPTIMUM:g} nats per image and pixel of the truth-started fit, or above it, is "
            "*at the optimum*: its distance from the truth is statistical (the data cannot tell "
            "more), and *EM / oracle* is the price of not knowing the positions. An EM further "
            "below is an *optimisation* failure: a better start or restarts would help, by up to "
            "*EM / from truth*.\n\n"
        )
        rows, count = [], {"at the optimum": 0, "optimisation": 0}
        for c in self.cells:
            o, y = self.oracle[c], self.yard[c]
            for label, r in (("study EM", self.em[c]), ("default", self.default[c])):
                dg = "at the optimum" if y.ll - r.ll <= AT_OPTIMUM else "optimisation"
                count[dg] += 1
                first = label == "study EM"
                rows.append(
                    [
                        c[0] if first else "",
                        c[1] if first else "",
                        label,
                        f1(o["face_rmse"]),
                        f1(y.final("face_rmse")),
                        f1(r.final("face_rmse")),
                        f2(r.final("face_rmse") / o["face_rmse"]),
                        f2(r.final("face_rmse") / y.final("face_rmse")),
                        sci(y.ll - r.ll),
                        dg,
                    ]
                )
        stat = [
            c
            for c in self.cells
            if self.yard[c].final("face_rmse") > 2 * self.oracle[c]["face_rmse"]
        ]
        costly = [
            (label, c)
            for c in self.cells
            for label, r in (("study EM", self.em[c]), ("default", self.default[c]))
            if self.yard[c].ll - r.ll > AT_OPTIMUM
            and r.final("face_rmse") > 1.1 * self.yard[c].final("face_rmse")
        ]
        self.add(
            table(
                "K | noise | EM | F RMSE oracle | F RMSE from truth | F RMSE EM | EM / oracle | "
                "EM / from truth | log-lik. below from-truth | diagnosis",
                rows,
            ),
            f"{count['at the optimum']} of {sum(count.values())} fits are at the optimum and "
            f"{count['optimisation']} are optimisation failures (a negative gap means EM found a "
            "higher optimum than EM from the truth); "
            + (
                f"{len(costly)} of those cost more than 10% in face error ("
                + "; ".join(f"{lb} at K={k} s={s}" for lb, (k, s) in costly)
                + "). "
                if costly
                else "none of those costs more than 10% in face error. "
            )
            + (
                f"In {len(stat)} cells ({'; '.join(f'K={k} s={s}' for k, s in stat)}) even EM "
                "from the truth is more than twice as far from the true face as the oracle: "
                "there the data do not determine the positions, and no start or restart can "
                "close that gap."
                if stat
                else "EM from the truth is everywhere within a factor 2 of the oracle."
            )
            + "\n\n",
        )

    # --- 5 -------------------------------------------------------------------------------------
    def photo(self) -> None:
        a, build = self.a, self.build
        cells = [(k, s) for s in a.photo_noises for k in a.photo_ks]
        fit = {c: build.run(f"photo-{c[0]}-{c[1]}", "soft-median") for c in cells}
        yard = {c: build.run(f"photo-{c[0]}-{c[1]}", "soft-truth") for c in cells}
        self.add(
            f"{SECTIONS[5]}\n\nThe bundled 40x30 photo face on the 72x96 brick background, "
            "fitted with the tool's defaults, and from the truth as a yardstick. *Recognisable*: "
            f"face correlation ≥ {RECOGNISABLE}; *clear*: ≥ {CLEAR}.\n\n"
        )
        rows, need = [], {}
        for s in a.photo_noises:
            corr = [fit[(k, s)].corr for k in a.photo_ks]
            rec = [k for k, x in zip(a.photo_ks, corr) if x >= RECOGNISABLE]
            clr = [k for k, x in zip(a.photo_ks, corr) if x >= CLEAR]
            need[s] = (rec[0] if rec else None, clr[0] if clr else None)
            rows.append(
                [s]
                + [
                    f"{fit[(k, s)].corr:.2f} ({yard[(k, s)].corr:.2f})"
                    + ("" if fit[(k, s)].converged else " max")
                    for k in a.photo_ks
                ]
                + [need[s][0] or f"> {a.photo_ks[-1]}", need[s][1] or f"> {a.photo_ks[-1]}"]
            )
        times = [r.seconds for r in fit.values()]
        self.add(
            table(
                " | ".join(["noise", *(f"K = {k}" for k in a.photo_ks)])
                + " | recognisable from K | clear from K",
                rows,
            ),
            "Face correlation with the truth of the default fit (EM from the truth in brackets; "
            f"*max*: stopped at the iteration limit). EM took {min(times):.1f} to "
            f"{max(times):.1f} s per fit.\n\n",
        )
        missed = [  # a better optimum, and a better face, that the default start did not find
            c
            for c in cells
            if yard[c].ll - fit[c].ll > AT_OPTIMUM and yard[c].corr - fit[c].corr > BETTER
        ]
        limit = a.photo_noises[-1]
        best_yard = max(yard[(k, limit)].corr for k in a.photo_ks)
        montage(
            a.fig / "photo-faces.png",
            [
                [(build.truth(f"photo-{a.photo_ks[0]}-{s}")["face"], "truth")]
                + [(fit[(k, s)].face, f"K={k}\n{fit[(k, s)].corr:.2f}") for k in a.photo_ks]
                for s in a.photo_noises
            ],
            [f"noise {s}" for s in a.photo_noises],
        )
        self.add(
            self.figure("photo-faces.png", "photo face by sample size and noise"),
            "\n\nThe default fit's face, one row per noise level, one column per sample size. "
            "The face has 1200 pixels instead of 256, so every image says more about where the "
            "face is: the same noise costs far fewer images than in the study's geometry. "
            + (
                "The default start stops at a lower optimum with a worse face than EM from "
                "the truth (log-likelihood lower by more than "
                f"{AT_OPTIMUM:g}, correlation by more than {BETTER}) at "
                + "; ".join(f"K={k} s={s}" for k, s in missed)
                + ": with few images a better start or restarts would help. "
                if missed
                else ""
            )
            + (
                f"At noise {limit} even EM from the truth reaches at most {best_yard:.2f}: the "
                "limit is statistical."
                if best_yard < RECOGNISABLE
                else ""
            )
            + "\n\n",
        )
        common = [c for c in self.cells if c in fit and c[1] > self.a.noises[0]]
        diff = [fit[c].corr - self.em[c].corr for c in common]
        self.conclude(
            "resolution",
            verdict(
                bool(common) and np.mean(diff) > BETTER and min(diff) > -0.05,
                bool(common) and np.mean(diff) > 0,
            ),
            "face correlation, photo vs study geometry at the same K and noise: "
            + (
                "; ".join(
                    f"K={k} s={s}: {fit[(k, s)].corr:.2f} vs {self.em[(k, s)].corr:.2f}"
                    for k, s in common
                )
                if common
                else "no common cell above the lowest noise"
            )
            + f". Rule: better by > {BETTER} on average over these cells and nowhere worse by "
            "0.05 agrees; better on average, partly. (The photo face also has other contrast "
            "with its background.)",
        )
        mid = a.photo_noises[len(a.photo_noises) // 2]
        rec, clr = need[mid]
        self.conclude(
            "photo-k",
            verdict(
                rec is not None and 100 < rec <= 500 and clr is not None and clr <= 1500,
                rec is not None,
            ),
            f"at noise {mid}: recognisable from K = {rec or f'(none up to {a.photo_ks[-1]})'}, "
            f"clear from K = {clr or f'(none up to {a.photo_ks[-1]})'}; other noise levels in the "
            "table. Rule: recognisable at "
            "100 < K ≤ 500 and clear by 1500 agrees; recognisable at some K, partly. The study "
            "does not give the noise of its photos.",
        )

    # --- the rest ------------------------------------------------------------------------------
    def finish(self) -> str:
        a = self.a
        assert list(self.verdicts) == [c for c in CLAIMS if c in self.verdicts]
        head = [
            "# The original study, rerun with facefinder\n\n",
            f"Made by `make -C experiments{' quick' if a.suite == 'quick' else ''}` with "
            f"`report.py` from the runs in `{a.out}/`: every number below comes from the runs "
            "that drew these figures. Data and starts are seeded, so a rerun gives the same "
            "numbers except the times. The study: a 16x16 face on 20x30 images, soft and hard "
            "EM from four starts, 100 to 1500 images at noise std 200 to 1000, and a photo. "
            "Every fit is plain EM (`--accelerate none`), one pass over the images per "
            "iteration, as in the study; the tool's default accelerates soft EM (see "
            "docs/PERFORMANCE.md).\n\n",
            f"{SECTIONS[0]}\n\nEach verdict follows the stated rule from this run's numbers "
            "(thresholds under *Rules*): "
            + ", ".join(
                f"{sum(v == x for v, _ in self.verdicts.values())} {x}"
                for x in ("agrees", "partly", "disagrees")
            )
            + ".\n\n",
            table(
                "verdict | the study's conclusion | evidence from this run",
                [[f"**{v}**", CLAIMS[c], e] for c, (v, e) in self.verdicts.items()],
            ),
        ]
        self.add(
            f"{SECTIONS[6]}\n\n"
            f"- Same bound: final log-likelihoods within {SAME_BOUND:g} nats per image and pixel "
            f"(partly: {NEAR_BOUND:g}); at the optimum: at most {AT_OPTIMUM:g} below EM from the "
            "truth.\n"
            f"- Recognisable face: correlation ≥ {RECOGNISABLE} with the true face; rough: "
            f"≥ {ROUGH}; clear: ≥ {CLEAR}; better: higher by {BETTER}.\n"
            f"- Practically the same convergence: iteration counts within a factor {SAME_ITERS}.\n"
            "- Hard EM speed-up: soft/hard time to convergence, median over the starts where hard "
            f"EM finds the face; agrees within {SPEEDUP[0]}-{SPEEDUP[1]} widened by 10%.\n"
            f"- Convergence: an iteration raising the bound by less than {a.tol:g} nats per image "
            f"and pixel; at most {a.max_iter} iterations.\n\n",
            f"{SECTIONS[7]}\n\n{self.timing()}\n",
        )
        return "".join(head + self.md)

    def timing(self) -> str:
        """The wall-clock time of this make run; a partial rerun quotes the last full run."""
        a = self.a
        results = list(a.out.glob("runs/*/*/result.npz"))
        em_minutes = sum(float(np.load(f)["seconds"][-1]) for f in results) / 60
        record = a.out / "full-run.txt"
        if a.started is None:
            return "Not timed."
        wall = (time.time() - a.started) / 60
        rebuilt = sum(1 for f in results if f.stat().st_mtime >= a.started)
        if rebuilt == len(results):
            text = (
                f"The full run (`make {a.make_flags}`, every data set and fit made afresh) took "
                f"{wall:.1f} minutes wall-clock on a {os.cpu_count()}-core machine, for "
                f"{len(results)} fits whose EM took {em_minutes:.1f} minutes in all; the rest "
                "is starting the tool (about a second per command), generating data and "
                "drawing figures."
            )
            record.write_text(text + "\n")
            return text
        last = record.read_text().strip() if record.exists() else "(no full run recorded)"
        return (
            f"This report came from a partial rerun ({rebuilt} of {len(results)} fits redone, "
            f"{wall:.1f} minutes). {last}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the build folder (data/, runs/)")
    p.add_argument("--fig", type=Path, required=True, help="folder of the figures")
    p.add_argument("--report", type=Path, required=True, help="the Markdown file to write")
    p.add_argument("--suite", default="full", help="full or quick (named in the report)")
    ints = lambda s: [int(x) for x in s.split()]  # noqa: E731
    p.add_argument("--ks", type=ints, required=True, help="sample sizes of experiment 2")
    p.add_argument("--noises", type=ints, required=True, help="noise levels of experiment 2")
    p.add_argument("--init-data", required=True, help="data set of experiments 1 and 3")
    p.add_argument("--inits", type=str.split, required=True, help="starts of experiments 1, 3")
    p.add_argument("--mc-inits", type=str.split, required=True, help="starts of Monte-Carlo EM")
    p.add_argument("--method-figs", type=str.split, default=[], help="starts with methods-*.png")
    p.add_argument("--photo-ks", type=ints, required=True, help="sample sizes of experiment 5")
    p.add_argument("--photo-noises", type=ints, required=True, help="noise levels of exp. 5")
    p.add_argument("--max-iter", type=int, required=True)
    p.add_argument("--tol", type=float, required=True)
    p.add_argument("--started", type=float, help="when make started (seconds since the epoch)")
    p.add_argument("--make-flags", default="", help="the -j option make ran with")
    a = p.parse_args()
    r = Report(a)
    r.initialisations()
    r.grid()
    r.methods()
    r.yardsticks()
    r.photo()
    a.report.write_text(r.finish())


if __name__ == "__main__":
    main()
