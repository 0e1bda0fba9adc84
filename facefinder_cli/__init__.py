"""facefinder: recover a face hidden at unknown positions in many noisy images, by EM.

The engine works on a stack ``X`` of shape ``(n_images, height, width)``::

    import facefinder_cli as ff
    result = ff.fit(X, face_shape=(40, 30))
    result.face, result.background, result.noise_std, result.prior, result.positions

``X`` may also be a stack on disk, read chunk by chunk: ``ff.fit(ff.NpyReader("stack.npy"), ...)``.
See :func:`fit` for the options, :mod:`facefinder_cli.compat` for the course's (H, W, K) API.

The names below are imported on first use, so that ``import facefinder_cli`` (and the start of
the command line, which must handle Ctrl-C from its first moment) does not wait for NumPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "ConvergenceWarning": "engine",
    "FitResult": "engine",
    "FitSettings": "engine",
    "NoiseFloorWarning": "engine",
    "Params": "engine",
    "choose_face_size": "engine",
    "choose_faces": "engine",
    "detect_mixture": "engine",
    "elbo": "engine",
    "fit": "engine",
    "fit_mixture": "engine",
    "initialize": "engine",
    "locate": "engine",
    "position_log_likelihood": "engine",
    "m_step": "engine",
    "map_positions": "engine",
    "posterior": "engine",
    "NpyReader": "images",
    "make_dataset": "synthetic",
    "make_mixture": "synthetic",
}

__all__ = [
    "ConvergenceWarning",
    "FitResult",
    "FitSettings",
    "NoiseFloorWarning",
    "NpyReader",
    "Params",
    "__version__",
    "choose_face_size",
    "choose_faces",
    "detect_mixture",
    "elbo",
    "fit",
    "fit_mixture",
    "initialize",
    "locate",
    "position_log_likelihood",
    "m_step",
    "make_dataset",
    "make_mixture",
    "map_positions",
    "posterior",
]

if TYPE_CHECKING:  # pragma: no cover
    from facefinder_cli.engine import (
        ConvergenceWarning,
        FitResult,
        FitSettings,
        NoiseFloorWarning,
        Params,
        choose_face_size,
        choose_faces,
        detect_mixture,
        elbo,
        fit,
        fit_mixture,
        initialize,
        locate,
        m_step,
        map_positions,
        position_log_likelihood,
        posterior,
    )
    from facefinder_cli.images import NpyReader
    from facefinder_cli.synthetic import make_dataset, make_mixture


def __getattr__(name: str) -> Any:
    if name == "log_likelihood":  # renamed: FitResult.log_likelihood is log p(X | θ)
        import warnings

        warnings.warn(
            "facefinder_cli.log_likelihood is now position_log_likelihood (it returns log "
            "p(X_k | d, θ) for every image and position)",
            DeprecationWarning,
            stacklevel=2,
        )
        name = "position_log_likelihood"
    if name in _API:
        value = getattr(importlib.import_module(f"facefinder_cli.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'facefinder_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
