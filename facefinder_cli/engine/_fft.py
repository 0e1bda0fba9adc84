"""``scipy.fft``, imported when a transform is first asked for.

Importing ``scipy.fft`` takes about 0.4 s (it pulls in ``scipy.special`` and SciPy's array-API
layer, which imports ``numpy.f2py`` and ``numpy.testing``), two thirds of the command line's
start-up. Commands that stop at an error, ``--help``, ``--version``, ``plot-elbo`` and ``pack``
never transform anything, so the engine's modules reach ``scipy.fft`` through this module:
``from facefinder_cli.engine import _fft as sfft``, then ``sfft.rfft2(...)`` as before. The first
use of a name imports ``scipy.fft`` and keeps the function here, so later uses cost what an
attribute of ``scipy.fft`` would."""

from __future__ import annotations


def __getattr__(name: str):
    if name.startswith("__"):  # copy, pickle, inspect ask for dunders: not transforms
        raise AttributeError(name)
    from scipy import fft

    value = getattr(fft, name)
    globals()[name] = value
    return value
