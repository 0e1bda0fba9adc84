"""Scale: threads, the memory budget and its FFT cache, float32, non-finite images found in the
first pass. The speed and memory figures themselves are in ``benchmarks/bench_scale.py``."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from helpers import quiet_fit

from facefinder_cli import engine as E
from facefinder_cli import synthetic as S
from facefinder_cli.engine import data as data_mod
from facefinder_cli.engine import machine, passes


@pytest.fixture(scope="module")
def scene():
    """A 12x12 face on a 32x32 background, 90 images at a moderate noise."""
    return S.make_dataset(
        S.cartoon_face(12, 12), S.texture("clouds", (32, 32), seed=4), 90, 40.0, seed=2
    )


def assert_same_fit(a: E.FitResult, b: E.FitResult) -> None:
    """Every array and number of two fits equal, bit for bit (timings aside)."""
    for f in dataclasses.fields(E.FitResult):
        if f.name in ("seconds", "restarts", "fft_cached"):
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name
    for ra, rb in zip(a.restarts, b.restarts, strict=True):
        np.testing.assert_array_equal(ra.elbo, rb.elbo)
        np.testing.assert_array_equal(ra.log_likelihood, rb.log_likelihood)


@pytest.mark.parametrize("method", ["soft", "hard", "mc"])
def test_threads_change_nothing(scene, method, monkeypatch):
    monkeypatch.setattr(data_mod, "THREAD_MIN_VALUES", 0)  # (else one thread: small chunks)
    kw = dict(method=method, seed=3, max_iter=6, tol=-np.inf, chunk_size=7, restarts=2)
    one = quiet_fit(scene.images, (12, 12), workers=1, **kw)
    three = quiet_fit(scene.images, (12, 12), workers=3, **kw)
    assert_same_fit(one, three)


def test_small_chunks_stay_on_one_thread(scene, monkeypatch):
    import threading

    seen = set()
    data = data_mod._Data(scene.images, (12, 12), chunk_size=7, workers=3)

    def where(a, b):
        seen.add(threading.current_thread().name)

    list(data.map(where))
    assert seen == {threading.current_thread().name}  # 7 x (32 x 32 + 21 x 21) values a chunk
    monkeypatch.setattr(data_mod, "THREAD_MIN_VALUES", 7 * (32 * 32 + 21 * 21))
    seen.clear()
    list(data.map(where))
    assert seen and all(name.startswith("facefinder") for name in seen)  # the pool's threads


def test_partly_cached_spectra_change_nothing(scene):
    X = scene.images
    full = data_mod._Data(X, (12, 12), chunk_size=4, cache_fft=True, workers=2)
    spectrum = 32 * 17 * 16
    work = 2 * 4 * machine._working_bytes(32, 32, 21, 21)  # 2 threads, 4 images each
    part = data_mod._Data(X, (12, 12), chunk_size=4, workers=2, memory_limit=work + 30 * spectrum)
    none = data_mod._Data(X, (12, 12), chunk_size=4, workers=2, memory_limit=0)
    assert (full.n_cached, part.n_cached, none.n_cached) == (90, 28, 0)  # whole chunks only
    p = E.initialize(X, (12, 12))
    sums = [passes._pass(d, p, "soft", True) for d in (full, part, none)]
    for s in sums[1:]:
        np.testing.assert_array_equal(s.face_f, sums[0].face_f)
        np.testing.assert_array_equal(s.cover_x, sums[0].cover_x)
        assert s.log_likelihood == sums[0].log_likelihood


def test_memory_limit_sets_the_cache_and_changes_no_result(scene):
    tiny = data_mod._Data(scene.images, (12, 12), workers=2, memory_limit=1)
    assert tiny.chunk == E.CHUNK_VALUES // (32 * 32) and tiny.n_cached == 0  # 256 of 32x32
    assert data_mod._Data(scene.images, (12, 12)).n_cached == 90  # the default holds these
    assert E.default_memory_limit() <= E.DEFAULT_MEMORY_LIMIT
    r = quiet_fit(scene.images, (12, 12), seed=0, max_iter=3, memory_limit=0, chunk_size=7)
    s = quiet_fit(scene.images, (12, 12), seed=0, max_iter=3, chunk_size=7)
    assert_same_fit(r, s)


def test_float32_agrees_with_float64(scene):
    kw = dict(seed=0, max_iter=40)
    a = quiet_fit(scene.images, (12, 12), dtype="float64", **kw)
    b = quiet_fit(scene.images, (12, 12), dtype="float32", **kw)
    n = scene.images.size
    # The tolerance documented in docs/PERFORMANCE.md for noise near the images' contrast.
    assert abs(a.final_elbo - b.final_elbo) / n < 1e-6
    assert np.abs(a.face - b.face).max() < 1e-3
    assert np.abs(a.background - b.background).max() < 1e-3
    assert abs(a.noise_std - b.noise_std) < 1e-5 * a.noise_std
    np.testing.assert_array_equal(a.positions, b.positions)
    assert np.all(np.diff(b.elbo) > -1e-6 * n)  # monotone up to float32 round-off


@pytest.mark.parametrize("K, noise", [(5, 120.0), (10, 120.0), (20, 60.0)])
def test_float32_background_at_pixels_the_face_nearly_always_covers(K, noise):
    """With few images, some background pixels are covered by the face in all but a sliver of
    posterior mass (den ~ 1e-6 images): float32's M-step must take the difference of the same
    float32 sums there, not of them and the exact ones (in review: 12 grey levels off at K = 5,
    then frozen as unidentified)."""
    d = S.make_dataset(S.cartoon_face(16, 16), S.texture("stripes", (20, 30)), K, noise, seed=0)
    p0 = quiet_fit(d.images, (16, 16), seed=0, max_iter=0).params
    new = {}
    for dtype in ("float64", "float32"):
        data = data_mod._Data(d.images, (16, 16), dtype=dtype, cache_fft=False)
        new[dtype], _ = passes._pass(data, p0, "soft", True).m_step(p0)
    seen = new["float64"].background != p0.background  # (identified in float64)
    gap = np.abs(new["float32"].background - new["float64"].background)[seen]
    assert gap.max() < 0.05
    # the same for several faces (two, both the first fit's face)
    from facefinder_cli.engine import mixture

    two = mixture.MixtureParams(np.stack([p0.face, p0.face[::-1]]), p0.background,
                                p0.noise_std, np.array([0.5, 0.5]), p0.prior)  # fmt: skip
    for dtype in ("float64", "float32"):
        data = data_mod._Data(d.images, (16, 16), dtype=dtype, cache_fft=False)
        new[dtype], _ = mixture._mix_pass(data, two, "soft", True)[0].m_step(two, True)
    seen = new["float64"].background != two.background
    gap = np.abs(new["float32"].background - new["float64"].background)[seen]
    assert gap.max() < 0.05


def test_float32_images_stay_float32_in_the_pass(scene):
    data = data_mod._Data(scene.images, (12, 12), dtype=np.float32, cache_fft=True)
    x, xf = data.chunk_data(0, 5)
    assert x.dtype == np.float32 and xf.dtype == np.complex64
    assert data.sum_x.dtype == np.float64 and data.sq_x.dtype == np.float64
    with pytest.raises(ValueError, match="float32 or float64"):
        data_mod._Data(scene.images, (12, 12), dtype="int16")


def test_non_finite_image_is_named_whatever_the_threads(scene):
    bad = scene.images.copy()
    bad[61, 3, 4] = np.inf
    for workers in (1, 2):
        with pytest.raises(E.NonFiniteError, match="image 61") as err:
            E.fit(bad, (12, 12), workers=workers, chunk_size=5)
        assert err.value.index == 61


def test_bad_settings_are_refused(scene):
    with pytest.raises(ValueError, match="workers must be at least 1"):
        E.fit(scene.images, (12, 12), workers=0)
    with pytest.raises(ValueError, match="memory_limit"):
        E.fit(scene.images, (12, 12), memory_limit=-1)


def test_streamed_memory_mapped_and_in_memory_fits_are_equal(scene, tmp_path):
    from facefinder_cli.images import NpyReader

    path = tmp_path / "stack.npy"
    np.save(path, scene.images.astype(np.float32))
    kw = dict(seed=1, max_iter=6, tol=-np.inf, chunk_size=8, restarts=2, init="smooth")
    in_memory = quiet_fit(np.load(path), (12, 12), **kw)
    with NpyReader(path) as reader:
        streamed = quiet_fit(reader, (12, 12), **kw)
    mapped = quiet_fit(np.load(path, mmap_mode="r"), (12, 12), **kw)
    assert_same_fit(in_memory, streamed)
    assert_same_fit(in_memory, mapped)


def test_float32_refuses_values_it_cannot_multiply(scene):
    huge = scene.images * 1e17  # x * background over a window would overflow float32
    with pytest.raises(ValueError, match="too large for float32 arithmetic: use dtype float64"):
        E.fit(huge, (12, 12), dtype="float32")
    r = quiet_fit(huge, (12, 12), max_iter=2)  # float64 copes
    assert np.isfinite(r.elbo).all()


def test_bool_images_are_numbers(scene):
    mask = scene.images > np.median(scene.images)
    r = quiet_fit(mask, (12, 12), max_iter=2, seed=0)
    s = quiet_fit(mask.astype(np.float64), (12, 12), max_iter=2, seed=0)
    assert_same_fit(r, s)


def test_on_chunk_reports_every_pass(scene):
    seen = []
    r = quiet_fit(
        scene.images,
        (12, 12),
        seed=0,
        max_iter=3,
        tol=-np.inf,
        chunk_size=20,
        on_chunk=lambda done, total: seen.append((done, total)),
    )
    # the reading pass, those of the iterations (three per accelerated one), the final E-step:
    # each in chunk order up to K
    passes = [seen[i : i + 5] for i in range(0, len(seen), 5)]
    assert r.n_iter < r.passes[-1] <= 3 * r.n_iter
    assert len(passes) == 1 + r.passes[-1] + 1
    for p in passes:
        assert p == [(20, 90), (40, 90), (60, 90), (80, 90), (90, 90)]


def test_summed_area_tables_by_slices_are_numpys_bit_for_bit(monkeypatch):
    from facefinder_cli.engine import model as M

    monkeypatch.setattr(M, "PRODUCT_MACS_PER_PIXEL", 0)  # box sums by tables, not products

    rng = np.random.default_rng(5)
    for shape in [(40, 24, 30), (3, 9, 700), (2, 300, 5), (12, 12)]:
        y = rng.normal(size=shape)
        for axis in range(-len(shape), 0):
            for dtype in (np.float32, np.float64):
                want = np.cumsum(y.astype(dtype), axis=axis, dtype=np.float64)
                np.testing.assert_array_equal(M._cumsum(y.astype(dtype), axis), want)
        q = np.abs(y)
        np.testing.assert_array_equal(M._box_full(q, 5, 4), M._box_full(q, 5, 4, by_slices=False))
        np.testing.assert_array_equal(M._box_valid(y, 5, 4), M._box_valid(y, 5, 4, by_slices=False))


@pytest.mark.parametrize("products", [True, False])
def test_box_sums_are_the_window_sums_by_definition(monkeypatch, products):
    """Both ways of summing boxes: products with banded matrices, and summed-area tables."""
    from facefinder_cli.engine import model as M

    monkeypatch.setattr(M, "PRODUCT_MACS_PER_PIXEL", np.inf if products else 0)

    rng = np.random.default_rng(5)
    for shape, (h, w) in [((40, 24, 30), (5, 4)), ((3, 9, 70), (9, 1)), ((2, 3, 30, 5), (1, 5)),
                          ((12, 12), (12, 12))]:  # fmt: skip
        y = rng.normal(size=shape)
        H, W = shape[-2:]
        valid = np.zeros(shape[:-2] + (H - h + 1, W - w + 1))
        for i in range(H - h + 1):
            for j in range(W - w + 1):
                valid[..., i, j] = y[..., i : i + h, j : j + w].sum(axis=(-2, -1))
        for dtype in (np.float32, np.float64):
            got = M._box_valid(y.astype(dtype), h, w, dtype)
            assert got.dtype == dtype
            tol = dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(atol=1e-12)
            np.testing.assert_allclose(got, valid, **tol)
        q = valid  # (..., Dh, Dw) -> (..., H, W): what each pixel's covering windows hold
        full = np.zeros(shape)
        for i in range(H - h + 1):
            for j in range(W - w + 1):
                full[..., i : i + h, j : j + w] += q[..., i, j, None, None]
        np.testing.assert_allclose(M._box_full(q, h, w), full, atol=1e-11)
        # each image's sums are its own products: the same alone as in a stack (or chunk)
        if y.ndim > 2:
            np.testing.assert_array_equal(M._box_valid(y, h, w)[:1], M._box_valid(y[:1], h, w))
            np.testing.assert_array_equal(M._box_full(q, h, w)[:1], M._box_full(q[:1], h, w))


@pytest.mark.parametrize("products", [True, False])
def test_fits_on_few_and_many_threads_are_identical(scene, monkeypatch, products):
    """Box sums by products or by tables (by slices up to SLICE_THREADS, then NumPy's)."""
    from facefinder_cli.engine import model as M

    monkeypatch.setattr(M, "PRODUCT_MACS_PER_PIXEL", np.inf if products else 0)
    kw = dict(seed=0, max_iter=4, tol=-1, chunk_size=16)
    few, many = (
        quiet_fit(scene.images, (12, 12), workers=w, **kw) for w in (1, E.SLICE_THREADS + 1)
    )
    for k in ("face", "background", "prior", "elbo", "log_likelihood", "positions"):
        np.testing.assert_array_equal(getattr(few, k), getattr(many, k), err_msg=k)


def test_box_sums_are_products_for_small_windows_and_tables_for_large_ones():
    from threadpoolctl import threadpool_limits

    from facefinder_cli.engine import model as M

    with threadpool_limits(limits=2, user_api="blas"):  # products only on one BLAS thread
        assert not M._by_products(20, 30, 5, 15) or not M.blas._blas().lib_controllers
    with threadpool_limits(limits=1, user_api="blas"):
        small_and_large()


def small_and_large():
    from facefinder_cli.engine import model as M

    assert M._by_products(20, 30, 5, 15)  # the study's 16x16 face in 20x30 images
    assert M._by_products(72, 96, 33, 67)  # the bundled sample
    assert not M._by_products(256, 256, 193, 193)  # a 64x64 face in 256x256 images


def test_blas_runs_on_one_thread_during_a_pass_and_as_before_after_it(scene):
    from threadpoolctl import threadpool_info, threadpool_limits

    from facefinder_cli.engine.data import _Data

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("NumPy here uses no BLAS that threadpoolctl knows")
    data = _Data(scene.images, (12, 12), chunk_size=30, workers=2)
    with threadpool_limits(limits=2, user_api="blas"):
        seen = [blas_threads() for _a, _b, _ in data.map(lambda a, b: None)]
        assert seen == [[1] * len(seen[0])] * 3  # three chunks, each with BLAS on one thread
        assert set(blas_threads()) == {2}
        # from another thread: nothing changes (threadpoolctl lets one thread at a time)
        other: list = []
        worker = threading.Thread(target=lambda: other.extend(
            blas_threads() for _a, _b, _ in data.map(lambda a, b: None)))  # fmt: skip
        worker.start()
        worker.join()
        assert other == [[2] * len(seen[0])] * 3 and set(blas_threads()) == {2}


def test_the_pass_holds_scipys_blas_too_though_scipy_is_imported_on_first_use():
    """scipy.fft, imported when a transform is first asked for, loads SciPy's own OpenBLAS:
    the libraries that a pass holds to one thread, looked up once, include it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from threadpoolctl import threadpool_info\n"
        "from facefinder_cli.engine import blas\n"
        "assert 'scipy.fft' not in sys.modules\n"
        "held = {lib.filepath for lib in blas._blas().lib_controllers}\n"
        "import scipy.fft\n"
        "loaded = {i['filepath'] for i in threadpool_info() if i['user_api'] == 'blas'}\n"
        "print(len(held), sorted(loaded - held))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    held, missed = r.stdout.split(" ", 1)
    assert missed.strip() == "[]"
    if int(held) == 0:
        pytest.skip("NumPy here uses no BLAS that threadpoolctl knows")


def test_a_fit_has_the_same_bits_whatever_blas_threads_and_the_calling_thread():
    """At 112x112 with a 56x56 face a box-sum product comes out in other last bits on two
    BLAS threads than on one: products run only on one (a pass from the main thread holds it
    there); elsewhere, tables. Unlike tables, products differ in the last bits."""
    from threadpoolctl import threadpool_limits

    from facefinder_cli.engine import model as M

    d = S.make_dataset(S.cartoon_face(56, 56), S.texture("clouds", (112, 112), seed=2), 12,
                       50.0, seed=3)  # fmt: skip
    kw = dict(seed=0, max_iter=2, tol=-1, workers=2)

    def fit(threads: int, in_thread: bool = False) -> E.FitResult:
        got: list = []
        with threadpool_limits(limits=threads, user_api="blas"):
            if not in_thread:
                return quiet_fit(d.images, (56, 56), **kw)
            worker = threading.Thread(
                target=lambda: got.append(quiet_fit(d.images, (56, 56), **kw))
            )
            worker.start()
            worker.join()
        return got[0]

    one, two = fit(1), fit(2)
    assert_same_fit(one, two)
    assert_same_fit(one, fit(1, in_thread=True))  # on one BLAS thread: products there too
    elsewhere = fit(2, in_thread=True)  # on two, from another thread: tables
    M_products = M.PRODUCT_MACS_PER_PIXEL
    try:
        M.PRODUCT_MACS_PER_PIXEL = 0
        tables = fit(1)
    finally:
        M.PRODUCT_MACS_PER_PIXEL = M_products
    assert_same_fit(elsewhere, tables)
    # so that the two comparisons above can fail: products and tables differ in the last bits
    fields = ("face", "background", "prior", "elbo", "log_likelihood")
    assert any(not np.array_equal(getattr(one, k), getattr(tables, k)) for k in fields)
