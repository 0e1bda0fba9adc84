"""BLAS threads: held to one while the engine multiplies matrices, and asked about.

The box sums of the passes are products of small matrices (``model._box_valid``). Two things
make BLAS's threads matter to them. Speed: the passes run their chunks on the fit's own
``workers`` threads, and OpenBLAS splitting the larger products over every core as well works
against them (measured on 2 cores, 500 images of 80x80 with a 32x32 face, ``workers=1``: a
soft iteration took 119.7 ms that way and 105.5 ms on one BLAS thread). And the last bits: a
product large enough for OpenBLAS to split comes out in other last bits on another number of
threads (seen from 112x112 images with a 56x56 face). So the passes hold BLAS to one thread
(:func:`one_blas_thread`), and the box sums are products only where BLAS is on one thread
(:func:`on_one_thread`), else summed-area tables. So a fit from the main thread (the command
line's, a script's) gives the same bits whatever the machine's cores; one from another thread
does too where BLAS runs on one thread, and where it runs on several is summed by tables,
which differ from products in the last bits.
"""

from __future__ import annotations

import contextlib
import functools
import threading


@functools.lru_cache(maxsize=1)
def _blas():
    import scipy.fft  # noqa: F401  (imported on first use: it loads SciPy's own OpenBLAS)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def one_blas_thread():
    """A context in which the BLAS libraries loaded (NumPy's OpenBLAS, say) use one thread,
    process-wide, when entered from the main thread; elsewhere it changes nothing, since
    threadpoolctl lets one thread at a time set OpenBLAS's threads and limits set from fits
    side by side in other threads would restore one another's out of order. The libraries
    are looked up once (about 5 ms); each pass then sets their threads and puts them back."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return _blas().limit(limits=1)


def on_one_thread() -> bool:
    """Whether every BLAS library loaded runs on one thread now: in a pass entered from the
    main thread, in a Dask worker (its nanny starts workers with one), on a one-core machine.
    True when NumPy uses no BLAS that threadpoolctl knows."""
    return all(lib.num_threads == 1 for lib in _blas().lib_controllers)
