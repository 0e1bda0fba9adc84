"""The sampled start (``engine.sampler``): the face and background each block is drawn with are
those of the other images (against the brute-force M-step of ``reference``), the sums it keeps
stay those of its positions through every sweep, and a seed gives one start on any number of
threads."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from facefinder_cli import engine as E
from facefinder_cli.engine.data import _Data
from facefinder_cli.engine.sampler import _sample_positions, _sampled, _Sums, _without


def _images(K=23, H=12, W=15, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(100.0, 20.0, (K, H, W))


def _start(data: _Data, seed=1) -> E.Params:
    rng = np.random.default_rng(seed)
    background = rng.normal(100.0, 5.0, (data.H, data.W))
    return E.Params(
        np.zeros((data.h, data.w)), background, 20.0, E.uniform_prior((data.Dh, data.Dw))
    )


def test_a_block_is_drawn_with_the_face_and_background_of_the_other_images():
    X = _images()
    h, w = 5, 4
    data = _Data(X, (h, w), chunk_size=4)
    rng = np.random.default_rng(2)
    positions = np.column_stack([rng.integers(0, data.Dh, 23), rng.integers(0, data.Dw, 23)])
    positions[:3] = [[0, 0], [0, 0], [data.Dh - 1, data.Dw - 1]]
    fallback = rng.normal(size=(data.H, data.W))
    total = _Sums(data, data.chunk_images(0, 23), positions)
    for a, b in ((0, 1), (5, 9), (20, 23)):
        block = _Sums(data, data.chunk_images(a, b), positions[a:b])
        face, background = _without(data, total, fallback, block)
        others = np.r_[0:a, b:23]
        want_face, want_background, _, _ = ref.m_step_positions(
            X[others] - data.offset, positions[others], h, w, previous_background=fallback
        )
        np.testing.assert_allclose(face, want_face, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(background, want_background, rtol=1e-12, atol=1e-10)


def test_a_pixel_the_other_images_all_cover_keeps_the_fallback():
    X = _images(K=6, H=6, W=6)
    data = _Data(X, (4, 4))
    positions = np.array([[1, 1]] * 6)  # every window covers the centre
    total = _Sums(data, data.chunk_images(0, 6), positions)
    fallback = np.full((6, 6), -7.0)
    _, background = _without(
        data, total, fallback, _Sums(data, data.chunk_images(0, 1), positions[:1])
    )
    assert (background[1:5, 1:5] == -7.0).all()
    assert (background[0] != -7.0).all()


def test_the_kept_sums_are_those_of_the_positions_returned():
    """Hundreds of blocks added and taken away: the sums still give the face and background of
    the positions returned (the brute-force M-step), and their residual is the least of any
    sweep's."""
    from facefinder_cli.engine import sampler

    X = _images(K=40)
    data = _Data(X, (5, 4), chunk_size=3)  # blocks of one image, read in chunks of up to 3
    p = _start(data)
    seen = []

    def recorded(data, total):
        seen.append(sampler_sse(data, total))
        return seen[-1]

    sampler_sse = sampler._sse
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sampler, "_sse", recorded)
        positions, total = _sample_positions(data, p, np.random.default_rng(4), 6, 3.0)
    face, background = _without(data, total, p.background - data.offset)
    shifted = X - data.offset
    want_face, want_background, _, _ = ref.m_step_positions(
        shifted, positions, 5, 4, previous_background=p.background - data.offset
    )
    np.testing.assert_allclose(face, want_face, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(background, want_background, rtol=1e-9, atol=1e-9)
    assert len(np.unique(positions, axis=0)) > 5  # drawn, not stuck
    q = ref.positions_to_q(positions, (data.Dh, data.Dw))
    sse = ref.expected_sse(shifted, q, want_face, want_background)
    assert sampler._sse(data, total) == pytest.approx(sse, rel=1e-9)
    assert len(seen) == 6 and sampler._sse(data, total) == pytest.approx(min(seen), rel=1e-12)


def test_a_seed_gives_one_start_on_any_number_of_threads():
    X = _images(K=60, H=20, W=24)
    starts = []
    for workers, seed in ((1, 5), (2, 5), (2, 6)):
        data = _Data(X, (8, 8), workers=workers, chunk_size=8)
        starts.append(_sampled(data, _start(data), np.random.default_rng(seed), sweeps=4)[0])
    for f in ("face", "background"):
        np.testing.assert_array_equal(getattr(starts[0], f), getattr(starts[1], f))
    assert not np.allclose(starts[0].face, starts[2].face)
    assert starts[0].noise_std == 20.0 and starts[0].prior is not None


def test_forbidden_positions_are_never_drawn():
    X = _images(K=30)
    data = _Data(X, (5, 4))
    prior = np.zeros((data.Dh, data.Dw))
    prior[2:5, 3:6] = 1.0 / 9
    p = E.Params(np.zeros((5, 4)), np.full((12, 15), 100.0), 20.0, prior)
    positions, _ = _sample_positions(data, p, np.random.default_rng(0), 5, 3.0)
    assert (prior[positions[:, 0], positions[:, 1]] > 0).all()


def test_the_sampler_holds_blas_to_one_thread_as_a_pass_does(monkeypatch):
    """Box sums are matrix products only with BLAS on one thread (else summed-area tables,
    other last bits): the sampler, run from the main thread, holds BLAS to one thread as the
    passes do, so that its draws are the same on any machine."""
    from threadpoolctl import threadpool_limits

    from facefinder_cli.engine import model

    seen = []
    real = model._by_products

    def by_products(*args, **kwargs):
        seen.append(real(*args, **kwargs))  # (small windows: products, if BLAS is on one thread)
        return seen[-1]

    monkeypatch.setattr(model, "_by_products", by_products)
    X = _images(K=30, H=20, W=24)
    data = _Data(X, (8, 8))
    with threadpool_limits(limits=2, user_api="blas"):
        _sampled(data, _start(data), np.random.default_rng(3), sweeps=2)
    assert seen and all(seen)
