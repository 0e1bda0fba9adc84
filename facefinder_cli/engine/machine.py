"""Sizing the work to this machine, apart from the maths: the cores a fit may use, its default
memory limit, how many images go in a chunk, and the process-wide allocator setting
(``mallopt``) that keeps the streaming pass from paging memory in afresh every chunk."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import sys

from facefinder_cli.engine.model import CHUNK_VALUES

#: Chunks with fewer pixels and positions than this (summed over their images) are processed on
#: one thread. Measured on 2 cores, 1 thread / 2 threads for chunks of 32 images: 0.74-0.82 for
#: 24x32 images (31,000 values), 1.18-1.34 for 48x48 (101,000), 1.48 for 64x64, 1.60-1.76 for
#: 72x96.
THREAD_MIN_VALUES = 100_000

#: Working memory of one chunk of the streaming pass, at most (the chunk shrinks to fit).
CHUNK_BYTES = 256 * 2**20

#: Memory a fit may use for its chunks and its FFT cache by default, at most (an eighth of the
#: machine's memory if that is less); see :func:`default_memory_limit`.
DEFAULT_MEMORY_LIMIT = 2**30


def default_memory_limit() -> int:
    """The default ``memory_limit`` of :func:`fit` in bytes: ``DEFAULT_MEMORY_LIMIT`` (1 GiB),
    or an eighth of this machine's physical memory if that is less.

    The working memory of the chunks in flight (``workers * chunk_size`` images' temporaries)
    comes out of it first; the cache of ``rfft2(X)`` gets the rest. With it a fit of 100,000
    images of 64x64 peaked at 1.07 GiB of resident memory on 2 threads
    (``benchmarks/bench_scale.py``); a larger limit caches more spectra and saves one FFT per
    cached image and iteration.
    """
    total = _physical_memory()
    return min(DEFAULT_MEMORY_LIMIT, total // 8) if total else DEFAULT_MEMORY_LIMIT


def available_cores() -> int:
    """The CPU cores this process may use: its affinity mask where the system has one, capped by
    a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return available_cores()
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return int(workers)


def _check_limit(limit: int) -> int:
    if not int(limit) >= 0:
        raise ValueError(f"memory_limit must be a number of bytes >= 0, got {limit}")
    return int(limit)


def _working_bytes(H: int, W: int, Dh: int, Dw: int) -> int:
    """Working memory of the pass per image, about: 16 image-sized and 8 position-table-sized
    float64 arrays (spectra, products, summed-area tables, the posterior and its transforms)."""
    return 8 * (16 * H * W + 8 * Dh * Dw)


def _chunk_for(chunk_size: int | None, H: int, W: int, Dh: int, Dw: int) -> int:
    """Images per chunk: at most ``chunk_size`` (None: ``CHUNK_VALUES`` pixels' worth), and
    few enough that a chunk's temporaries fit in ``CHUNK_BYTES``; at least one. Refuses images
    too large for this machine's memory even one at a time."""
    per_image = _working_bytes(H, W, Dh, Dw)
    total = _physical_memory()
    if total and per_image > total // 2:
        raise ValueError(
            f"images of {H}x{W} with {Dh}x{Dw} face positions need about "
            f"{per_image / 2**30:.1f} GiB of working memory each, more than half of this "
            f"machine's {total / 2**30:.1f} GiB: crop or downsample them"
        )
    if chunk_size is None:
        chunk_size = max(1, CHUNK_VALUES // (H * W))
    return max(1, min(int(chunk_size), CHUNK_BYTES // per_image))


def _physical_memory() -> int:
    """Bytes of physical memory, or 0 where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


@functools.cache
def _retain_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse rather than give it back to the OS at once.

    The streaming pass allocates and frees temporaries of about a megabyte per chunk. With
    glibc's default thresholds each of them is mapped afresh, page faults and all, until the
    allocator's dynamic threshold happens to grow (measured: a soft iteration of
    ``benchmarks/bench_engine.py`` took 160 ms in a process's first fit, 102 ms after). Raising
    the mmap and trim thresholds to 32 and 128 MiB removes that. Once per process; a no-op where
    ``mallopt`` does not exist (other C libraries, other systems).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 128 * 2**20)
