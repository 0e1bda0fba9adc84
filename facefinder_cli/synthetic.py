"""Synthetic data with a known truth: noisy images of a face pasted on a background.

Used by ``facefinder generate``, the tests and the benchmarks. NumPy only, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facefinder_cli.engine import Params
from facefinder_cli.engine.model import _box_full, uniform_prior

__all__ = [
    "Dataset",
    "cartoon_face",
    "centred_prior",
    "errors",
    "hidden_pixels",
    "make_dataset",
    "paste",
    "resize",
    "texture",
]


@dataclass(frozen=True)
class Dataset:
    """A synthetic stack and the truth behind it.

    Attributes
    ----------
    images : ndarray of shape (K, H, W)
    positions : int ndarray of shape (K, 2)
        The face's top-left corner ``(row, column)`` in every image.
    truth : Params
        The face, background, noise std and prior the images were drawn from.
    """

    images: np.ndarray
    positions: np.ndarray
    truth: Params


def paste(background: np.ndarray, face: np.ndarray, position: tuple[int, int]) -> np.ndarray:
    """The background with the face pasted at ``position`` (top-left corner), as a new array."""
    out = np.array(background, dtype=np.float64)
    r, c = position
    h, w = face.shape
    out[r : r + h, c : c + w] = face
    return out


def centred_prior(
    face_shape: tuple[int, int], image_shape: tuple[int, int], spread: float = 0.25
) -> np.ndarray:
    """A prior over positions peaked at the centre: a separable Gaussian whose std is ``spread``
    times the range of positions along each axis.

    Returns
    -------
    ndarray of shape (H-h+1, W-w+1), summing to one.
    """
    if spread <= 0:
        raise ValueError(f"spread must be positive, got {spread}")
    axes = []
    for n_img, n_face in zip(image_shape, face_shape):
        n = n_img - n_face + 1
        x = np.arange(n) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (x / max(spread * n, 0.5)) ** 2))
    prior = np.outer(*axes)
    return prior / prior.sum()


def make_dataset(
    face: np.ndarray,
    background: np.ndarray,
    n_images: int,
    noise_std: float,
    *,
    prior: np.ndarray | None = None,
    seed: int | np.random.SeedSequence | None = None,
    dtype: type = np.float64,
) -> Dataset:
    """Draw ``n_images`` noisy images: positions from ``prior`` (uniform by default), the face
    pasted on the background there, plus Gaussian noise of std ``noise_std``.

    Parameters
    ----------
    face : ndarray of shape (h, w)
    background : ndarray of shape (H, W)
    n_images : int
    noise_std : float
        In the images' own units (the study used 200, 400 and 1000 on the 0..255 scale).
    prior : ndarray of shape (H-h+1, W-w+1), optional
    seed : int or SeedSequence, optional
    dtype : float dtype of the images
    """
    face = np.asarray(face, dtype=np.float64)
    background = np.asarray(background, dtype=np.float64)
    if face.ndim != 2 or background.ndim != 2:
        raise ValueError("face and background must be 2-D images")
    (h, w), (H, W) = face.shape, background.shape
    if h > H or w > W:
        raise ValueError(f"the face ({h}x{w}) is larger than the background ({H}x{W})")
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if not (noise_std >= 0 and np.isfinite(noise_std)):
        raise ValueError(f"noise_std must be a non-negative finite number, got {noise_std}")
    shape = (H - h + 1, W - w + 1)
    if prior is None:
        prior = uniform_prior(shape)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != shape:
        raise ValueError(f"prior has shape {prior.shape}, expected {shape} for these sizes")
    if (prior < 0).any() or not np.isfinite(prior).all() or prior.sum() <= 0:
        raise ValueError("prior must be finite, non-negative and not all zero")
    prior = prior / prior.sum()
    rng = np.random.default_rng(seed)
    flat = rng.choice(prior.size, size=n_images, p=prior.ravel())
    positions = np.column_stack(np.unravel_index(flat, shape))
    images = np.empty((n_images, H, W), dtype=dtype)
    with np.errstate(over="ignore"):
        for k, (r, c) in enumerate(positions):
            images[k] = paste(background, face, (r, c)) + rng.normal(0.0, noise_std, (H, W))
            if not np.isfinite(images[k]).all():
                raise ValueError(
                    f"image {k} holds values beyond the range of {images.dtype.name} (face, "
                    "background and noise are too large)"
                )
    return Dataset(images, positions, Params(face, background, float(noise_std), prior))


def make_mixture(
    faces: list[np.ndarray],
    background: np.ndarray,
    n_images: int,
    noise_std: float,
    *,
    prior: np.ndarray | None = None,
    seed: int | None = None,
    dtype: type = np.float64,
) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Draw ``n_images`` noisy images of several faces (all the same size): each shows one,
    chosen uniformly, at a position drawn from ``prior``, on the background.

    Returns
    -------
    (Dataset, faces, labels)
        The images, positions and truth (whose ``face`` is the first face) as
        :func:`make_dataset` gives them; the faces as one (N, h, w) array; each image's face.
    """
    faces = [np.asarray(f, dtype=np.float64) for f in faces]
    if not faces or any(f.shape != faces[0].shape for f in faces):
        raise ValueError("the faces must all have the same size")
    ss = np.random.SeedSequence(seed)
    positions_seed, labels_seed, noise_seed = ss.spawn(3)
    base = make_dataset(faces[0], background, n_images, 0.0, prior=prior, seed=positions_seed)
    labels = np.random.default_rng(labels_seed).integers(len(faces), size=n_images)
    rng = np.random.default_rng(noise_seed)
    H, W = base.truth.background.shape
    images = np.empty((n_images, H, W), dtype=dtype)
    with np.errstate(over="ignore"):
        for k, (r, c) in enumerate(base.positions):
            images[k] = paste(base.truth.background, faces[labels[k]], (r, c))
            images[k] += rng.normal(0.0, noise_std, (H, W))
    if not np.isfinite(images).all():
        raise ValueError(f"the images hold values beyond the range of {images.dtype.name}")
    truth = Params(faces[0], base.truth.background, float(noise_std), base.truth.prior)
    return Dataset(images, base.positions, truth), np.array(faces), labels


def cartoon_face(h: int, w: int) -> np.ndarray:
    """A simple drawn face (head, eyes, brows, nose, mouth) on the 0..255 scale, ``h x w``."""
    y, x = np.mgrid[0:h, 0:w]
    y = (y + 0.5) / h * 2 - 1
    x = (x + 0.5) / w * 2 - 1
    img = np.full((h, w), 40.0)
    img[x**2 / 0.8**2 + y**2 / 0.95**2 <= 1] = 200.0  # head
    for ex in (-0.35, 0.35):
        img[(x - ex) ** 2 / 0.16**2 + (y + 0.25) ** 2 / 0.1**2 <= 1] = 20.0  # eyes
        img[(np.abs(x - ex) < 0.2) & (np.abs(y + 0.48) < 0.04)] = 90.0  # brows
    img[(np.abs(x) < 0.07) & (y > -0.15) & (y < 0.2)] = 150.0  # nose
    img[(x**2 / 0.45**2 + (y - 0.35) ** 2 / 0.25**2 <= 1) & (y > 0.42)] = 60.0  # mouth
    return img


def texture(kind: str, shape: tuple[int, int], seed: int | None = 0) -> np.ndarray:
    """A background texture on the 0..255 scale.

    ``kind``: ``"stripes"`` (a repetitive diagonal grating), ``"checker"`` (a chequerboard with
    a cell of 6 pixels), ``"clouds"`` (smoothed noise), ``"flat"`` (uniform grey).
    """
    H, W = shape
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    if kind == "stripes":
        return 128 + 60 * np.sin(2 * np.pi * (x + 0.5 * y) / 7.0)
    if kind == "checker":
        return np.where(((y // 6) + (x // 6)) % 2 == 0, 170.0, 90.0)
    if kind == "clouds":
        from scipy import ndimage  # here: importing it costs every command 0.1 s of start-up

        rng = np.random.default_rng(seed)
        field_ = ndimage.gaussian_filter(rng.normal(size=shape), 3.0, mode="wrap")
        return 128 + 60 * field_ / field_.std()
    if kind == "flat":
        return np.full(shape, 128.0)
    raise ValueError(f"unknown texture {kind!r}")


def errors(
    params: Params, positions: np.ndarray | None, truth: Params, true_positions: np.ndarray
) -> dict[str, float]:
    """How far fitted parameters are from the truth.

    Returns root mean square differences in pixel units: ``face_rmse``, ``background_rmse``
    over all pixels, ``background_rmse_seen`` over the pixels that some possible face position
    (one the true prior allows) leaves uncovered, and ``background_rmse_hidden`` over those that
    every position covers (not identifiable from any data; NaN when there are none); and
    ``positions_right``, the share of images whose position is exactly right (NaN without
    ``positions``).
    """
    if params.face.shape != truth.face.shape or params.background.shape != truth.background.shape:
        raise ValueError(
            f"the truth has a {truth.face.shape[0]}x{truth.face.shape[1]} face on "
            f"{truth.background.shape[0]}x{truth.background.shape[1]} images; the fit has "
            f"{params.face.shape[0]}x{params.face.shape[1]} on "
            f"{params.background.shape[0]}x{params.background.shape[1]}"
        )
    right = math.nan
    if positions is not None:
        if len(positions) != len(true_positions):
            raise ValueError(
                f"the truth has {len(true_positions)} images, the fit {len(positions)}"
            )
        right = float(np.mean(np.all(positions == true_positions, axis=1)))
    hidden = hidden_pixels(truth.prior, truth.face.shape)
    sq = (params.background - truth.background) ** 2
    return {
        "face_rmse": float(np.sqrt(np.mean((params.face - truth.face) ** 2))),
        "background_rmse": float(np.sqrt(np.mean(sq))),
        "background_rmse_seen": float(np.sqrt(np.mean(sq[~hidden])))
        if (~hidden).any()
        else math.nan,
        "background_rmse_hidden": float(np.sqrt(np.mean(sq[hidden]))) if hidden.any() else math.nan,
        "positions_right": right,
    }


def hidden_pixels(prior: np.ndarray, face_shape: tuple[int, int]) -> np.ndarray:
    """Background pixels that every face position allowed by ``prior`` covers: shape (H, W).

    With a 16x16 face on 20x30 images and any prior of full support, rows 4..15 of columns
    14..15: no image ever shows the background there.
    """
    allowed = np.asarray(prior) > 0
    return _box_full(allowed.astype(float), *face_shape) >= allowed.sum() - 0.5


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a 2-D image to ``shape`` (linear interpolation; smoothed first when shrinking,
    so that downsizing averages rather than aliases)."""
    from scipy import ndimage  # here: importing it costs every command 0.1 s of start-up

    image = np.asarray(image, dtype=np.float64)
    factors = [n / m for n, m in zip(shape, image.shape)]
    sigma = [max(0.0, (1 / f - 1) / 2) for f in factors]
    if any(sigma):
        image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    return ndimage.zoom(image, factors, order=1, mode="nearest", grid_mode=True)
