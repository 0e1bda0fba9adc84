"""Results pinned bit for bit: refactoring must not change a single number.

``tests/data/pinned_input.npz`` holds a small fixed stack (integer grey values, so it is
exact in any float format) and ``tests/data/pinned_results.npz`` what the engine and the
command line made of it before the refactor of the settings and the loop state. A change that
is *meant* to change results regenerates them with ``python tests/test_pinned.py`` and says why
in its commit; any other difference is a bug.

Bit for bit on the machine that pinned them; elsewhere NumPy's ``exp`` and ``log`` may take
another SIMD path (AVX-512 or not) and round a last bit differently (seen: one ulp in a prior
of 1e-176, on a machine without AVX-512). So integers (positions, iterations) must be equal
and floats within ``RTOL``, a few hundred ulps: far below any change a refactor could make
(the smallest deliberate change so far moved a probability by 6e-13 absolute).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"
INPUT = DATA / "pinned_input.npz"
RESULTS = DATA / "pinned_results.npz"

#: name -> keyword arguments of ``engine.fit`` on the pinned stack (face size 10x8)
#: (plain soft EM is "accelerate none": pinned before accelerated EM became the default)
CASES = {
    "soft": dict(seed=0, restarts=2, max_iter=12, tol=-np.inf, accelerate="none"),
    "soft_tol": dict(seed=3, init="random", tol=1e-5, max_iter=200, accelerate="none"),
    "hard": dict(method="hard", seed=1, init="smooth", max_iter=10, tol=-np.inf),
    "mc": dict(method="mc", seed=2, max_iter=9, tol=-np.inf),
    "always": dict(
        prior_update="always", init="bright", max_iter=8, tol=-np.inf, accelerate="none"
    ),
    "float32": dict(
        dtype="float32", seed=4, max_iter=6, tol=-np.inf, chunk_size=7, accelerate="none"
    ),
}
FIELDS = ("face", "background", "noise_std", "prior", "elbo", "log_likelihood", "positions",
          "position_probability", "final_elbo", "n_iter", "best_restart")  # fmt: skip
FACE = (10, 8)
RTOL = 1e-13  # relative, for floats: a last-bit rounding of exp/log, carried over iterations


def _assert_same(actual, desired, err_msg: str) -> None:
    actual, desired = np.asarray(actual), np.asarray(desired)
    if actual.dtype.kind == "f":
        np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=0, err_msg=err_msg)
    else:
        np.testing.assert_array_equal(actual, desired, err_msg=err_msg)


def _engine_fit(X, name):
    from facefinder_cli import engine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return engine.fit(X, FACE, **CASES[name])


def _results(X) -> dict[str, np.ndarray]:
    out = {}
    for name in CASES:
        r = _engine_fit(X, name)
        for f in FIELDS:
            out[f"{name}.{f}"] = np.asarray(getattr(r, f))
        out[f"{name}.restart_elbo"] = np.concatenate([h.elbo for h in r.restarts])
    return out


@pytest.fixture(scope="module")
def pinned():
    X = np.load(INPUT)["X"].astype(np.float64)
    with np.load(RESULTS) as z:
        return X, dict(z)


@pytest.mark.parametrize("name", list(CASES))
def test_engine_results_are_as_pinned(pinned, name):
    X, want = pinned
    r = _engine_fit(X, name)
    for f in FIELDS:
        _assert_same(getattr(r, f), want[f"{name}.{f}"], f)
    _assert_same(np.concatenate([h.elbo for h in r.restarts]), want[f"{name}.restart_elbo"], "")


def test_command_line_results_are_as_pinned(pinned, tmp_path, monkeypatch):
    from helpers import ok

    monkeypatch.chdir(tmp_path)
    X, want = pinned
    np.save("stack.npy", X)
    ok("fit", "stack.npy", "--face-size", "10x8", "--restarts", "2", "--max-iter", "12",
       "--tol", "-1", "--accelerate", "none", "-o", "run", "-q")  # fmt: skip
    with np.load("run/result.npz") as z:
        for f in ("face", "background", "noise_std", "prior", "elbo", "log_likelihood"):
            _assert_same(z[f], want[f"soft.{f}"], f)
        np.testing.assert_array_equal(z["positions"], want["soft.positions"])


def _regenerate() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from facefinder_cli import synthetic

    if not INPUT.exists():
        face = synthetic.cartoon_face(*FACE)
        background = synthetic.texture("stripes", (24, 32))
        d = synthetic.make_dataset(face, background, 30, 40.0, seed=11)
        X = np.clip(np.round(d.images), 0, 255).astype(np.uint8)
        np.savez_compressed(INPUT, X=X)
    X = np.load(INPUT)["X"].astype(np.float64)
    np.savez_compressed(RESULTS, **_results(X))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    _regenerate()
