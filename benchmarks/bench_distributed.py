"""A fit on a Dask cluster against the local fit: ``python benchmarks/bench_distributed.py``.

Generates ``--images`` images of 64x64 (a 24x24 drawn face on a cloud texture, noise 100) into
a float32 ``.npy`` stack, then runs, in one process and one run:

- the local fit on all cores (threads), with every image's spectrum cached, as the cluster's
  workers cache theirs;
- the same fit on a ``LocalCluster`` of 2 worker processes (one thread each), at several chunk
  sizes (images per task).

Each fit is plain soft EM for ``--iterations`` iterations (``tol`` -1: the same work in every
run). It prints, per run: the first pass (reading, spectra), seconds per iteration, the bytes
between the client and the workers per iteration (pickled: the function with the parameters
out once per pass, every chunk's sums back), the bytes moved between workers (their transfer
logs: chunks do not move, so this stays near zero), the workers' peak resident memory, and
the scheduler's overhead: seconds per task of a pass of empty tasks on the same chunks, and
that overhead as a share of a pass (tasks x overhead / pass time). It checks that every
cluster fit equals the local fit of the same chunk size, bit for bit.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import tempfile
import time
import warnings

import cloudpickle
import numpy as np

from facefinder_cli import engine, synthetic
from facefinder_cli.engine import cluster
from facefinder_cli.engine.machine import _chunk_for
from facefinder_cli.images import NpyReader

H = W = 64
FACE = (24, 24)


def _make_stack(path: str, n: int, seed: int = 0) -> None:
    """``n`` images into a float32 .npy file, in blocks (memory stays small)."""
    face = synthetic.cartoon_face(*FACE)
    background = synthetic.texture("clouds", (H, W), seed=1)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, H, W))
    block = 5000
    for i, a in enumerate(range(0, n, block)):
        b = min(a + block, n)
        data = synthetic.make_dataset(face, background, b - a, 100.0, seed=seed + i)
        out[a:b] = data.images
    out.flush()
    del out


class _Counted:
    """Bytes that cross between the client and the workers, as pickled (the function out once
    per pass, every chunk's result back), counted by wrapping ``_ClusterData.map``; and bytes
    between workers, from the workers' transfer logs."""

    def __init__(self) -> None:
        self.total = 0
        self._map = cluster._ClusterData.map
        counter = self

        def map(data, fn, extra=None):
            counter.total += len(cloudpickle.dumps(fn))
            for a, b, result in counter._map(data, fn, extra):
                counter.total += len(pickle.dumps(result))
                yield a, b, result

        cluster._ClusterData.map = map

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        cluster._ClusterData.map = self._map


def _between_workers(client) -> int:
    if client is None:
        return 0
    logs = client.run(
        lambda dask_worker: sum(t["total"] for t in dask_worker.transfer_incoming_log)
    )
    return int(sum(logs.values()))


def _noop(chunk) -> None:
    return None


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _fit(X, chunk, iterations, client=None):
    """A fit, with the time of its first pass and of every iteration, and the loopback bytes
    of every iteration."""
    marks: list[tuple[float, int, int]] = []
    counted = _Counted()

    def callback(progress):
        marks.append((time.perf_counter(), counted.total, _between_workers(client)))

    t0 = time.perf_counter()
    with warnings.catch_warnings(), counted:
        warnings.simplefilter("ignore", engine.ConvergenceWarning)
        result = engine.fit(
            X,
            FACE,
            chunk_size=chunk,
            accelerate="none",
            restarts=1,
            tol=-1.0,
            max_iter=iterations,
            cache_fft=True,
            callback=callback,
            client=client,
        )
    # marks[0]: the start reported (after the first pass and the start's statistics)
    first = marks[0][0] - t0
    steps = np.diff([m[0] for m in marks])
    moved = np.diff([m[1] for m in marks])
    shuffled = np.diff([m[2] for m in marks])
    return result, first, float(np.median(steps)), float(np.median(moved)), float(shuffled.sum())


def _overhead(client, X, chunk) -> tuple[float, int]:
    """Seconds per empty task run on each block of chunks where it lives, and the number of
    tasks (blocks) per pass."""
    data = cluster._ClusterData(X, FACE, client, chunk_size=chunk, cache_fft=False)
    try:
        futures = [client.submit(_noop, c, pure=False) for c in data._blocks]
        client.gather(futures)  # warm
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            futures = [client.submit(_noop, c, pure=False) for c in data._blocks]
            client.gather(futures)
            best = min(best, time.perf_counter() - t)
        return best / len(futures), len(futures)
    finally:
        data.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--chunks", default="64,128,256,1024", help="images per chunk, comma-separated")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the cluster")
    args = ap.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stack.npy")
        t = time.perf_counter()
        _make_stack(path, args.images)
        print(
            f"{args.images} images of {H}x{W} (float32, {os.path.getsize(path) / 1e9:.2f} GB), "
            f"face {FACE[0]}x{FACE[1]}, {args.iterations} plain soft EM iterations per fit; "
            f"made in {time.perf_counter() - t:.0f} s. Machine: {os.cpu_count()} cores.\n"
        )
        X = NpyReader(path)
        print("| run | images per chunk | tasks per pass | first pass (s) | s per iteration "
              "| MB client-workers per iteration | MB between workers (all iterations) "
              "| peak memory per process (GB) | overhead per task (ms) "
              "| overhead share of a pass |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        local = {}
        D = H - FACE[0] + 1, W - FACE[1] + 1
        for chunk in chunks:
            r, first, step, _, _ = _fit(X, chunk, args.iterations)
            local[chunk] = r
            size = _chunk_for(chunk, H, W, *D)  # (at most what a chunk's temporaries allow)
            tasks = -(-args.images // size)
            print(
                f"| local, {engine.available_cores()} threads | {size} | {tasks} | {first:.1f} "
                f"| {step:.2f} | - | - | {_peak_rss() / 1e9:.2f} (this process, so far) | - | - |",
                flush=True,
            )
        client = cluster.connect(f"local:{args.workers}")
        try:
            for chunk in chunks:
                r, first, step, moved, shuffled = _fit(X, chunk, args.iterations, client)
                same = all(
                    np.array_equal(getattr(r, f), getattr(local[chunk], f))
                    for f in ("face", "background", "prior", "elbo", "positions")
                )
                peaks = client.run(_peak_rss)
                per_task, tasks = _overhead(client, X, chunk)
                print(
                    f"| cluster, {args.workers} processes{'' if same else ' (DIFFERS!)'} "
                    f"| {_chunk_for(chunk, H, W, *D)} | {tasks} | {first:.1f} | {step:.2f} "
                    f"| {moved / 1e6:.1f} | {shuffled / 1e6:.1f} "
                    f"| {max(peaks.values()) / 1e9:.2f} | {per_task * 1e3:.2f} "
                    f"| {tasks * per_task / step:.1%} |",
                    flush=True,
                )
                client.restart()  # fresh workers: each run's peak memory is its own
        finally:
            cluster.close_client(client)
        X.close()


if __name__ == "__main__":
    main()
