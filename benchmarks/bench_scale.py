"""Scaling in K, peak memory, threads and float32, measured in one run.

    python benchmarks/bench_scale.py                      # K = 1k, 10k, 100k (about 15 min)
    python benchmarks/bench_scale.py --sizes 1000 10000   # quicker

Images are 64x64 with a 24x24 face (1681 positions), noise std 40 on a 0..255 scene. Stacks are
written once as float32 ``.npy`` files into ``--workdir`` (1.6 GB for 100k images) and read by
:class:`facefinder_cli.images.NpyReader`, as ``facefinder fit stack.npy`` does. Every
measurement runs in a fresh process, which reports its own peak resident memory (``VmHWM`` of
``/proc/self/status``, what ``/usr/bin/time -v`` prints as "Maximum resident set size"; not
``getrusage``, whose figure carries over the parent's peak through fork and exec), and seconds
per EM iteration (median of ``--iters`` soft iterations). The files sit in the page
cache after the first read: the times are compute, not disk.

Printed (``--sections`` picks some): seconds per iteration and per image for every K, peak RSS,
the ratio of time per image to the smallest K's (linear time: close to 1), with the default
memory limit and without an FFT cache; 1 thread versus all cores; float32 versus float64 speed
and accuracy; seconds per iteration for 32, 64 and 128 images per chunk; and a memory map
instead of plain reads (whose mapped pages count as resident memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import cpu_name  # noqa: E402

from facefinder_cli import engine, images, synthetic  # noqa: E402

SIZE, FACE, NOISE = 64, 24, 40.0
SECTIONS = ("scaling", "threads", "chunks", "mmap")
BLOCK = 2000  # images generated at a time


def make_stack(path: Path, n: int) -> None:
    """``n`` noisy 64x64 images as a float32 .npy, written block by block."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, SIZE, SIZE):
        return
    face = synthetic.cartoon_face(FACE, FACE)
    background = synthetic.texture("clouds", (SIZE, SIZE), seed=1)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, SIZE, SIZE))
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        out[a:b] = synthetic.make_dataset(face, background, b - a, NOISE, seed=a).images
    out.flush()
    del out
    os.replace(tmp, path)


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(spec: dict) -> dict:
    """One measurement, in this (fresh) process."""
    if spec["reader"] == "mmap":
        X = np.load(spec["path"], mmap_mode="r")
    else:
        X = images.NpyReader(spec["path"])
    start = {"face": np.asarray(spec["face"]), "background": np.asarray(spec["background"])}
    start["noise_std"] = spec["noise_std"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", engine.ConvergenceWarning)
        r = engine.fit(
            X,
            (FACE, FACE),
            init_params=start,
            max_iter=spec["iters"],
            tol=-np.inf,
            dtype=spec["dtype"],
            workers=spec["workers"],
            memory_limit=spec["memory_limit"],
            chunk_size=spec["chunk_size"],
            accelerate="none",  # one pass over the images per iteration
        )
    data_pass = float(np.median(np.diff(r.seconds)))
    return {
        "seconds": data_pass,
        "rss": peak_rss(),
        "elbo": float(r.final_elbo),
        "face": r.face.tolist(),
        "noise_std": r.noise_std,
    }


def measure(path: Path, start: engine.Params, iters: int, **kw) -> dict:
    spec = {
        "path": str(path),
        "iters": iters,
        "face": start.face.tolist(),
        "background": start.background.tolist(),
        "noise_std": start.noise_std,
        "dtype": "float64",
        "workers": None,
        "memory_limit": None,
        "chunk_size": engine.DEFAULT_CHUNK_SIZE,
        "reader": "plain",
    }
    spec.update(kw)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", f.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ff-bench")
    ap.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to measure (default: all)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(Path(args.child).read_text()))))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = sorted(args.sizes)
    paths = {}
    for n in sizes:
        paths[n] = args.workdir / f"stack-{n}.npy"
        t = time.perf_counter()
        make_stack(paths[n], n)
        print(f"# stack of {n} images ready ({time.perf_counter() - t:.0f} s)", flush=True)
    # Every run starts from the same parameters: those of the median start on 1000 images.
    start = engine.initialize(np.load(paths[sizes[0]], mmap_mode="r")[:1000], (FACE, FACE))
    print(
        f"# Scaling benchmark: {SIZE}x{SIZE} images, {FACE}x{FACE} face, soft EM, "
        f"median of {args.iters} iterations per run"
    )
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"Python {sys.version.split()[0]}, NumPy {np.__version__}; "
        f"default memory limit {gib(engine.default_memory_limit())}, "
        f"{engine.available_cores()} threads"
    )
    if "scaling" in args.sections:
        scaling(paths, sizes, start, args.iters)
    mid = sizes[len(sizes) // 2]
    if "threads" in args.sections:
        threads_and_precision(paths[mid], mid, start, args.iters)
    if "chunks" in args.sections:
        print()
        print(f"# K = {mid}: images per chunk (--chunk-size), s/iter, float64 and float32")
        for chunk in (32, 64, 128):
            r = [
                measure(paths[mid], start, args.iters, chunk_size=chunk, dtype=dtype)
                for dtype in ("float64", "float32")
            ]
            print(f"{chunk:<5} {r[0]['seconds']:8.3f} {r[1]['seconds']:8.3f}", flush=True)
    if "mmap" in args.sections:
        big = sizes[-1]
        print()
        print(f"# K = {big}: a memory map instead of plain reads")
        rp = measure(paths[big], start, args.iters)
        rm = measure(paths[big], start, args.iters, reader="mmap")
        print(f"plain reads (NpyReader)  peak RSS {gib(rp['rss'])}  {rp['seconds']:.3f} s/iter")
        print(f"np.load(mmap_mode='r')   peak RSS {gib(rm['rss'])}  {rm['seconds']:.3f} s/iter")
        print(f"stack file: {gib(paths[big].stat().st_size)}")


def scaling(paths: dict, sizes: list[int], start: engine.Params, iters: int) -> None:
    print()
    print("K        setting          s/iter   us/image  vs smallest K   peak RSS")
    for label, kw in (("default", {}), ("no FFT cache", {"memory_limit": 0})):
        base = None
        for n in sizes:
            r = measure(paths[n], start, iters, **kw)
            per = r["seconds"] / n
            base = base or per
            print(
                f"{n:<8} {label:<15} {r['seconds']:8.3f} {per * 1e6:10.1f} "
                f"{per / base:13.2f}   {gib(r['rss'])}",
                flush=True,
            )


def threads_and_precision(path: Path, n: int, start: engine.Params, iters: int) -> None:
    print()
    print(f"# K = {n}: threads and precision")
    r64 = measure(path, start, iters)
    r1 = measure(path, start, iters, workers=1)
    r32 = measure(path, start, iters, dtype="float32")
    cores = engine.available_cores()
    print(f"1 thread / {cores} threads      {r1['seconds'] / r64['seconds']:.2f}")
    print(f"float64 / float32 time       {r64['seconds'] / r32['seconds']:.2f}")
    n_values = n * SIZE * SIZE
    print(
        f"float32 - float64: final ELBO {(r32['elbo'] - r64['elbo']) / n_values:+.1e} nats per "
        f"image and pixel; face max |diff| "
        f"{np.abs(np.subtract(r32['face'], r64['face'])).max():.1e} (0..255 scale); noise std "
        f"relative diff {abs(r32['noise_std'] / r64['noise_std'] - 1):.1e}"
    )


if __name__ == "__main__":
    main()
