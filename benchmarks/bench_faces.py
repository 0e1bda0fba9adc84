"""Several faces (``fit --faces N``): recovery and cost per iteration.

``python benchmarks/bench_faces.py`` (about a minute on 2 cores).

Three distinct real-looking faces: the bundled photo face (40x30), the same mirrored left to
right, and turned upside down (pairwise correlations 0.23 or less), pasted one per image on
the bundled bricks (72x96) and on drawn clouds, at noise 40, 60 and 90. Each face alone is
first fitted by the one-face model on images of it alone (the premise of the targets: its
correlation with the truth). Then ``engine.fit_mixture`` with 3 faces on the mixed images.

Printed per scene, measured in this one run: each face's correlation after matching labels
(the best of the 3! relabellings), the share of images given their true face, and of those
also at their true position; iterations; and the seconds per iteration of the mixture against
the one-face model's on the same images, each the best of 10 (target: at most N + 1 = 4x).
The mixture is fitted with 4 restarts (one restart found the three faces in 2 of these 6
scenes; see docs/METHODS.md).
"""

from __future__ import annotations

import itertools
import time
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from _args import no_options  # noqa: E402

from facefinder_cli import engine, synthetic

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
K = 300
RESTARTS = 4


def _grey(path: Path) -> np.ndarray:
    img = iio.imread(path).astype(float)
    return img[..., :3] @ [0.299, 0.587, 0.114] if img.ndim == 3 else img


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _per_pass(X: np.ndarray, p: engine.MixtureParams, repeat: int = 10) -> tuple[float, float]:
    """Seconds of one EM iteration (a pass with the M-step's sums, and the M-step) for one
    face and for the mixture ``p``, on the same images with their spectra cached; the best
    of ``repeat``."""
    from facefinder_cli.engine import mixture, passes
    from facefinder_cli.engine.data import _Data

    data = _Data(X, p.faces.shape[1:])
    one = engine.Params(p.faces[0], p.background, p.noise_std, p.prior)
    times = {"one": [], "mix": []}
    for _ in range(repeat):
        t = time.perf_counter()
        passes._pass(data, one, "soft", True).m_step(one)
        times["one"].append(time.perf_counter() - t)
        t = time.perf_counter()
        mixture._mix_pass(data, p, "soft", True)[0].m_step(p, update_prior=True)
        times["mix"].append(time.perf_counter() - t)
    return min(times["one"]), min(times["mix"])


def main() -> None:
    warnings.simplefilter("ignore")
    photo = _grey(SAMPLE / "face.png")
    faces = [photo, photo[:, ::-1], photo[::-1, ::-1]]
    backgrounds = {
        "bricks": _grey(SAMPLE / "background.png"),
        "clouds": synthetic.texture("clouds", (72, 96), seed=3),
    }
    print(
        "| background | noise | alone: face corr. | mixture: face corr. (matched) | images "
        "given their face | and position | iterations | per iteration: mixture / one face |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, background in backgrounds.items():
        for noise in (40, 60, 90):
            alone = []
            for i, f in enumerate(faces):
                d = synthetic.make_dataset(f, background, K // 3, float(noise), seed=10 + i)
                alone.append(_corr(engine.fit(d.images, f.shape, seed=0).face, f))
            data, true, labels = synthetic.make_mixture(faces, background, K, float(noise),
                                                        seed=1)  # fmt: skip
            best = engine.FitSettings(photo.shape, seed=0, restarts=RESTARTS)
            r = engine.fit_mixture(data.images, best, 3)
            per_one, per_mix = _per_pass(data.images, r.params)
            table = [[_corr(true[i], r.params.faces[j]) for j in range(3)] for i in range(3)]
            perm = max(itertools.permutations(range(3)),
                       key=lambda q: sum(table[i][q[i]] for i in range(3)))  # fmt: skip
            label_of = np.argsort(perm)
            right = label_of[r.faces_of_images] == labels
            exact = right & np.all(r.positions == data.positions, axis=1)
            print(f"| {name} | {noise} | {', '.join(f'{c:.3f}' for c in alone)} "
                  f"| {', '.join(f'{table[i][perm[i]]:.3f}' for i in range(3))} "
                  f"| {right.mean():.3f} | {exact.mean():.3f} | {r.n_iter} "
                  f"| {per_mix * 1e3:.0f} / {per_one * 1e3:.0f} ms = {per_mix / per_one:.1f}x |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    no_options(__doc__)
    main()
