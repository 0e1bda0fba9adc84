"""Small helpers shared by the test modules."""

from __future__ import annotations

import warnings

from facefinder_cli import engine as E


def quiet_fit(X, face_shape, **kw):
    """``engine.fit`` without its ConvergenceWarning: the tests often stop EM on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", E.ConvergenceWarning)
        return E.fit(X, face_shape, **kw)
