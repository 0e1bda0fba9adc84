"""The images as a fit streams them: :class:`_Data` holds what is computed once per fit (the
shift, per-image sums, the robust start, the fingerprint, the cache of ``rfft2(X)``), serves
chunks of images and their spectra, and maps a function over the chunks on worker threads,
reducing in chunk order so results do not depend on the threads."""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from facefinder_cli.engine import _fft as sfft
from facefinder_cli.engine.blas import one_blas_thread
from facefinder_cli.engine.machine import (
    THREAD_MIN_VALUES,
    _check_limit,
    _check_workers,
    _chunk_for,
    _working_bytes,
    default_memory_limit,
)
from facefinder_cli.engine.model import (
    NOISE_FLOOR,
    SLICE_THREADS,
    NonFiniteError,
    Params,
    ValueRangeError,
    _check_dtype,
)

# --------------------------------------------------------------------------------------------
# The data, prepared once per fit
# --------------------------------------------------------------------------------------------


class _Data:
    """The image stack, shifted, with what does not change between iterations.

    ``X`` may be any array-like of shape ``(K, H, W)`` that slices to NumPy (an in-memory array,
    a memory map, an :class:`~facefinder_cli.images.NpyReader` reading a file chunk by chunk);
    chunks are read and shifted on the fly, so the pass holds one chunk per thread, never the
    stack. The FFT cache holds ``rfft2`` of the first ``n_cached`` shifted images, as many as
    ``memory_limit`` allows; the spectra of the others are recomputed in every pass.

    ``dtype`` is the precision of the per-image work (reads, FFTs, posteriors): float64, or
    float32 for half the memory traffic. Sums over images are always accumulated in float64, and
    the per-fit sums (``sum_x``, ``sq_x``) are computed from float64 copies of the images.
    """

    def __init__(
        self,
        X: np.ndarray,
        face_shape: tuple[int, int],
        chunk_size: int | None = None,
        cache_fft: bool | None = None,
        workers: int | None = None,
        memory_limit: int | None = None,
        dtype: np.dtype | type | str = np.float64,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> None:
        if not (hasattr(X, "ndim") and hasattr(X, "dtype")):
            X = np.asarray(X)  # nested lists and other array-likes
        if X.ndim != 3:
            raise ValueError(f"X must have shape (n_images, height, width), got {np.shape(X)}")
        if np.dtype(X.dtype).kind not in "biuf":
            raise ValueError(f"X must hold real numbers, got dtype {X.dtype}")
        K, H, W = X.shape
        h, w = _check_face_shape(face_shape, (H, W))
        if K < 1:
            raise ValueError("X holds no images")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.dtype = _check_dtype(dtype)
        self.workers = _check_workers(workers)
        self.by_slices = self.workers <= SLICE_THREADS  # how to sum summed-area tables
        self.on_chunk = on_chunk
        self.on_start: Callable[[int, str, int, int], None] | None = None  # (``fit``'s)
        limit = default_memory_limit() if memory_limit is None else _check_limit(memory_limit)
        self.X = X
        self.K, self.H, self.W, self.h, self.w = K, H, W, h, w
        self.Dh, self.Dw = H - h + 1, W - w + 1
        per_image = _working_bytes(H, W, self.Dh, self.Dw)
        self.chunk = _chunk_for(chunk_size, H, W, self.Dh, self.Dw)
        first = np.asarray(X[: min(K, 16)], dtype=np.float64)
        self.offset = float(first.mean()) if np.isfinite(first).all() else 0.0  # else: error below
        self.n_cached = self._cache(cache_fft, limit, per_image)
        # One pass: sums over images (in float64) and the cached spectra.
        self.sum_x = np.zeros((H, W))
        self.sq_x = np.empty(K)  # Σ_ij X_k² per image (shifted)
        largest = 0.0
        for _, b, (part, top) in self._read_all():
            self.sum_x += part
            largest = max(largest, top)
            self.report(b)
        # float32 products of images, background and face, summed over a window, must not
        # overflow (largest: 3.4e38); values this large would lose all precision anyway.
        if self.dtype == np.float32 and largest**2 * H * W > 1e34:
            raise ValueRangeError(
                f"pixel values up to {largest:.3g} from their mean are too large for float32 "
                "arithmetic: use dtype float64"
            )
        if largest > LARGEST_VALUE:
            raise ValueRangeError(
                f"pixel values up to {largest:.3g} from their mean are too large: their squares "
                "overflow float64; divide the images by a constant"
            )
        self.total_sq = float(self.sq_x.sum())
        n = K * H * W
        var = self.total_sq / n - (self.sum_x.sum() / n) ** 2
        std = math.sqrt(max(var, 0.0))
        self.scale = std if std > 0 else (abs(self.offset) or 1.0)
        if self.scale < SMALLEST_SCALE:
            raise ValueRangeError(
                f"pixel values vary by only {self.scale:.3g}: too little for float64 (the "
                "noise variance would underflow); multiply the images by a constant"
            )
        self.noise_floor = NOISE_FLOOR * self.scale

    def resized(self, face_shape: Sequence[int]) -> _Data:
        """The same images (their sums and cached spectra shared, not read again) for a face of
        ``face_shape``, in the same chunks: for fits of several sizes. The chunks were sized
        for this data's face; a smaller face needs more memory per image."""
        h, w = _check_face_shape(face_shape, (self.H, self.W))
        other = object.__new__(type(self))  # (not copy.copy: a cluster's data pickles as a view)
        other.__dict__.update(self.__dict__)
        other.h, other.w, other.Dh, other.Dw = h, w, self.H - h + 1, self.W - w + 1
        return other

    def _cache(self, cache_fft: bool | None, limit: int, per_image: int) -> int:
        """Make room for the spectra of as many images as ``limit`` leaves room for (or as
        ``cache_fft`` forces): their number, a multiple of the chunk size unless all."""
        K, H, W = self.K, self.H, self.W
        spectrum_bytes = H * (W // 2 + 1) * 2 * self.dtype.itemsize
        if cache_fft is None:
            room = max(0, limit - self.workers * self.chunk * per_image) // spectrum_bytes
            n_cached = K if room >= K else (room // self.chunk) * self.chunk
        else:
            n_cached = K if cache_fft else 0
        complex_type = np.complex64 if self.dtype == np.float32 else np.complex128
        self._xf = np.empty((int(n_cached), H, W // 2 + 1), complex_type)
        return int(n_cached)

    def _read_all(self):
        """The first pass: ``(start, stop, (Σ_k X_k, max |X|))`` of every chunk in order, with
        ``sq_x`` and the cached spectra filled in."""
        return self.map(self._first_pass)

    def fingerprint(self) -> dict:
        """A summary of the images that changes when any of them changes, is reordered or is
        replaced, cheap because it comes from sums the first pass computes anyway: the size,
        the shift and a few fixed, irregularly weighted sums of each image's ``Σ X²`` and of
        the pixel-wise ``Σ_k X_k``, with the sums of their magnitudes (to compare them within
        round-off, see :func:`_fingerprint_differs`: a change of less than about 1e-12 of
        these sums goes unnoticed; one grey level of one pixel among a million images of
        64x64 with noise 50 is about 3e-9 of the pixel-wise sum). Needs ``total_sq``."""
        k = np.arange(1, self.K + 1, dtype=np.float64)
        i, j = np.indices((self.H, self.W), dtype=np.float64)
        sums, scale = [], []
        for a, b in zip(_IRRATIONAL, _IRRATIONAL[1:] + _IRRATIONAL[:1]):
            weights = np.modf(k * a)[0]
            sums.append(float(weights @ self.sq_x))
            scale.append(float(self.sq_x.sum()))
            field = np.modf(i * a + j * b + 0.5)[0]
            sums.append(float(np.sum(field * self.sum_x)))
            scale.append(float(np.abs(self.sum_x).sum()))
        # the shift (the mean of the first images) with its own scale: data shifted by a
        # constant have the same shifted sums
        sums.append(self.offset)
        scale.append(abs(self.offset) + math.sqrt(self.total_sq / (self.K * self.H * self.W)))
        return {"n_images": self.K, "image_size": [self.H, self.W], "sums": sums, "scale": scale}

    def _first_pass(self, a: int, b: int) -> tuple[np.ndarray, float]:
        x = self._read(a, b, np.float64)
        if not np.isfinite(x).all():
            k = int(np.argmin(np.isfinite(x).reshape(b - a, -1).all(1)))
            raise NonFiniteError(a + k, "NaN" if np.isnan(x[k]).any() else "infinite values")
        self.sq_x[a:b] = np.einsum("kij,kij->k", x, x)
        if b <= self.n_cached:  # the same spectra as ``chunk`` computes when not cached
            self._xf[a:b] = sfft.rfft2(x.astype(self.dtype, copy=False))
        return x.sum(axis=0), float(np.abs(x).max())

    @functools.cached_property
    def median_background(self) -> tuple[np.ndarray, float]:
        """The per-pixel median of (up to 512 of) the images and the robust spread (MAD) of the
        residuals around it: computed once per fit, shared by the restarts."""
        sample = _subsample(self)
        background = np.median(sample, axis=0)
        resid = sample - background
        noise = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
        if not noise > self.noise_floor:
            noise = max(float(np.std(resid)), self.noise_floor)
        return background, noise

    def report(self, done: int) -> None:
        """Tell ``on_chunk`` that ``done`` of the K images of the current pass are through."""
        if self.on_chunk is not None:
            self.on_chunk(done, self.K)

    def bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of every chunk, in order."""
        return [(a, min(a + self.chunk, self.K)) for a in range(0, self.K, self.chunk)]

    def _read(self, a: int, b: int, dtype: np.dtype) -> np.ndarray:
        x = np.subtract(self.X[a:b], self.offset, dtype=np.float64)
        return x.astype(dtype, copy=False)

    def chunk_images(self, a: int, b: int) -> np.ndarray:
        """Chunk ``[a, b)``'s shifted images in ``dtype``, without their spectra."""
        return self._read(a, b, self.dtype)

    def chunk_data(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``[a, b)``: the shifted images in ``dtype`` and their spectra."""
        x = self._read(a, b, self.dtype)
        xf = self._xf[a:b] if b <= self.n_cached else sfft.rfft2(x)
        return x, xf

    def local_chunk_data(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`chunk_data`, read on this machine whatever holds the chunks (a cluster's
        workers do, see ``cluster._ClusterData``): for work that runs one chunk after another
        here, the positions' sampler. The same values bit for bit."""
        return self.chunk_data(a, b)

    def local_chunk_images(self, a: int, b: int) -> np.ndarray:
        """:meth:`chunk_images`, read on this machine (see :meth:`local_chunk_data`)."""
        return self.chunk_images(a, b)

    def chunks(self):
        """Yield ``(start, stop, x, xf)`` for every chunk, in order, in this thread."""
        for a, b in self.bounds():
            yield (a, b, *self.chunk_data(a, b))

    def map(self, fn: Callable, extra: Callable[[int, int], object] | None = None):
        """Yield ``(start, stop, fn(start, stop, *extra(start, stop)))`` for every chunk, in
        chunk order, computed on ``workers`` threads (on this one when a chunk holds fewer than
        ``THREAD_MIN_VALUES`` pixels and positions, or there is a single chunk).

        ``extra`` is called in this thread, in chunk order, when a chunk is handed out (random
        draws, say, so that they do not depend on the threads). At most two chunks per thread
        are in flight, so memory stays bounded whatever K; the caller reduces the results in
        chunk order, which makes every sum independent of the number of threads. NumPy and
        ``scipy.fft`` release the GIL in the work that matters. BLAS is held to one thread
        meanwhile (:func:`~facefinder_cli.engine.blas.one_blas_thread`).
        """
        bounds = self.bounds()

        def args(a: int, b: int) -> tuple:
            return (a, b) if extra is None else (a, b, *extra(a, b))

        threads = min(self.workers, len(bounds))
        if self.chunk * (self.H * self.W + self.Dh * self.Dw) < THREAD_MIN_VALUES:
            threads = 1  # hand-offs between threads would cost more than the work they share
        with one_blas_thread():
            if threads == 1:
                for a, b in bounds:
                    yield a, b, fn(*args(a, b))
                return
            pool = ThreadPoolExecutor(threads, thread_name_prefix="facefinder")
            try:
                pending: collections.deque = collections.deque()
                for a, b in bounds:
                    pending.append((a, b, pool.submit(fn, *args(a, b))))
                    if len(pending) >= 2 * threads:
                        a0, b0, future = pending.popleft()
                        yield a0, b0, future.result()
                while pending:
                    a0, b0, future = pending.popleft()
                    yield a0, b0, future.result()
            finally:  # on an error or an interrupt: drop what has not started, wait for the rest
                pool.shutdown(wait=True, cancel_futures=True)


#: Largest distance of a pixel value from the images' mean that the fit accepts: the sums of
#: squares over millions of pixels must stay far from float64's 1.8e308.
LARGEST_VALUE = 1e100
#: Smallest spread of the pixel values the fit accepts: the noise floor squared must stay far
#: above float64's smallest numbers.
SMALLEST_SCALE = 1e-100
#: Weights of the input fingerprint (``_Data.fingerprint``): fractional parts of multiples of
#: these are irregular enough that no reordering or edit of the images keeps the sums.
_IRRATIONAL = [math.sqrt(2.0), math.sqrt(3.0), math.sqrt(5.0), math.sqrt(7.0)]


def _check_face_shape(face_shape: Sequence[int], image_shape: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in face_shape)
    except (TypeError, ValueError):
        raise ValueError(f"face_shape must be (height, width), got {face_shape!r}") from None
    H, W = image_shape
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"face_shape {h}x{w} must be at least 1x1 and fit in the images ({H}x{W})")
    return h, w


def _check_params(p: Params, data: _Data) -> Params:
    face = np.asarray(p.face, dtype=np.float64)
    background = np.asarray(p.background, dtype=np.float64)
    prior = np.asarray(p.prior, dtype=np.float64)
    if face.shape != (data.h, data.w):
        raise ValueError(f"face has shape {face.shape}, expected {(data.h, data.w)}")
    if background.shape != (data.H, data.W):
        raise ValueError(f"background has shape {background.shape}, expected {(data.H, data.W)}")
    if prior.shape != (data.Dh, data.Dw):
        raise ValueError(f"prior has shape {prior.shape}, expected {(data.Dh, data.Dw)}")
    s = float(p.noise_std)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"noise_std must be positive and finite, got {p.noise_std}")
    for name, arr in (("face", face), ("background", background), ("prior", prior)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    for name, arr in (("face", face - data.offset), ("background", background - data.offset)):
        top = float(np.abs(arr).max())
        if top > LARGEST_VALUE:
            raise ValueError(
                f"{name} holds values {top:.3g} away from the images' mean: too large to "
                "compute with"
            )
    if not SMALLEST_SCALE * NOISE_FLOOR <= s <= LARGEST_VALUE:
        raise ValueError(f"noise_std {s:.3g} is out of the range the fit can compute with")
    if (prior < 0).any() or prior.sum() <= 0:
        raise ValueError("prior must be non-negative with a positive sum")
    return Params(face, background, s, prior / prior.sum())


def _subsample(data: _Data, n: int = 512) -> np.ndarray:
    """Up to ``n`` evenly spaced images, for statistics that need them all at once."""
    idx = np.unique(np.linspace(0, data.K - 1, min(n, data.K)).round().astype(int))
    return np.asarray(data.X[idx], dtype=np.float64)
