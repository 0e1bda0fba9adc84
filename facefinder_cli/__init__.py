"""facefinder: recover a face hidden at unknown positions in many noisy images, by EM.

The engine works on a stack ``X`` of shape ``(n_images, height, width)``::

    import facefinder_cli as ff
    result = ff.fit(X, face_shape=(40, 30))
    result.face, result.background, result.noise_std, result.prior, result.positions

``X`` may also be a stack on disk, read chunk by chunk: ``ff.fit(ff.NpyReader("stack.npy"), ...)``.
See :func:`fit` for the options, :mod:`facefinder_cli.compat` for the course's (H, W, K) API.
"""

__version__ = "0.1.0"

from facefinder_cli.engine import (  # noqa: E402
    ConvergenceWarning,
    FitResult,
    NoiseFloorWarning,
    Params,
    elbo,
    fit,
    initialize,
    locate,
    log_likelihood,
    m_step,
    map_positions,
    posterior,
)
from facefinder_cli.images import NpyReader  # noqa: E402
from facefinder_cli.synthetic import make_dataset  # noqa: E402

__all__ = [
    "ConvergenceWarning",
    "FitResult",
    "NoiseFloorWarning",
    "NpyReader",
    "Params",
    "__version__",
    "elbo",
    "fit",
    "initialize",
    "locate",
    "log_likelihood",
    "m_step",
    "make_dataset",
    "map_positions",
    "posterior",
]
