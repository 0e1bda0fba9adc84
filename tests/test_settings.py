"""The fit's settings: one frozen value, validated once, stored, compared on resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from facefinder_cli import engine as E


def test_settings_are_validated_and_normalised():
    s = E.FitSettings([np.int64(12), 9], tol=0, seed=np.int64(4), dtype=np.float32)
    assert s.face_shape == (12, 9) and type(s.face_shape[0]) is int
    assert s.tol == 0.0 and type(s.tol) is float and s.seed == 4 and s.dtype == "float32"
    assert E.FitSettings((3, 3), samples=8, max_samples=5).max_samples == 8  # raised to samples
    bad = [
        (dict(face_shape=(0, 3)), "face_shape must be positive"),
        (dict(face_shape=(2.5, 3)), "face_shape must be two whole numbers"),
        (dict(face_shape="4x4"), "face_shape must be two whole numbers"),
        (dict(method="gibbs"), "unknown method 'gibbs'"),
        (dict(init="best"), "unknown init"),
        (dict(prior_update="sometimes"), "unknown prior_update"),
        (dict(restarts=0), "restarts must be at least 1"),
        (dict(restarts=True), "restarts must be a whole number"),
        (dict(max_iter=-1), "max_iter must be at least 0"),
        (dict(tol=float("nan")), "tol must not be NaN"),
        (dict(seed=-1), "seed must be at least 0"),
        (dict(samples_growth=float("inf")), "samples_growth must be at least 1 and finite"),
        (dict(chunk_size=0), "chunk_size must be at least 1"),
        (dict(dtype="int8"), "dtype must be float32 or float64"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            E.FitSettings(**{"face_shape": (4, 4), **change})


def test_settings_survive_json_exactly_and_refuse_other_records():
    s = E.FitSettings((7, 5), method="mc", tol=1 / 3, seed=2**63 + 5, samples_growth=1.1)
    back = E.FitSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    with pytest.raises(ValueError, match="other fields"):
        E.FitSettings.from_dict({**s.to_dict(), "knob": 1})
    with pytest.raises(ValueError, match="other fields"):
        E.FitSettings.from_dict({k: v for k, v in s.to_dict().items() if k != "tol"})
    with pytest.raises(ValueError, match="unknown method"):
        E.FitSettings.from_dict({**s.to_dict(), "method": "magic"})


def test_fit_takes_the_value_or_its_fields_alike():
    rng = np.random.default_rng(0)
    X = rng.normal(100, 10, (12, 10, 12))
    s = E.FitSettings((4, 5), method="hard", max_iter=3, tol=-1, seed=9)
    a = E.fit(X, s)
    b = E.fit(X, (4, 5), method="hard", max_iter=3, tol=-1, seed=9)
    c = E.fit(X, face_shape=(4, 5), method="hard", max_iter=3, tol=-1, seed=9)
    d = E.fit(X, dataclasses.replace(s, method="soft"), method="hard")  # options change it
    assert a.settings == b.settings == c.settings == d.settings == s
    for r in (b, c, d):
        np.testing.assert_array_equal(r.face, a.face)
    unseeded = E.fit(X, s, seed=None)
    assert unseeded.settings.seed == unseeded.seed_entropy  # recorded: the run repeats
    np.testing.assert_array_equal(E.fit(X, unseeded.settings).face, unseeded.face)
    with pytest.raises(TypeError):
        E.fit(X, s, n_init=2)  # (the old name of restarts is no setting)


def test_the_gain_the_stopping_rule_used_is_in_the_history():
    rng = np.random.default_rng(1)
    X = rng.normal(100, 10, (15, 10, 12))
    for method in ("soft", "hard"):
        r = E.fit(
            X,
            (4, 4),
            method=method,
            max_iter=6,
            tol=-1,
            seed=0,
            prior_update="always",
            accelerate="none",
        )
        assert np.isnan(r.gain[0]) and len(r.gain) == r.n_iter + 1
        np.testing.assert_array_equal(r.gain[1:], np.diff(r.elbo) / X.size)
    r = E.fit(X, (4, 4), method="mc", max_iter=12, tol=-1, seed=0, prior_update="always")
    ll = r.log_likelihood
    assert np.all(np.isinf(r.gain[1:10]))  # two windows of MC_WINDOW iterations are needed
    # after iteration t the windows are over log p(X | θ) of θ_{t-10} .. θ_{t-1}
    want = (ll[6:11].mean() - ll[1:6].mean()) / E.MC_WINDOW / X.size
    assert r.gain[11] == pytest.approx(want, rel=1e-12)


def test_every_setting_is_a_fit_option_of_the_same_name():
    """Adding a setting to FitSettings needs only an option of its name (and its user): the
    command line builds the value from the options by name."""
    from facefinder_cli.cli.fit import fit

    params = {p.name for p in fit.params}
    names = {f.name for f in dataclasses.fields(E.FitSettings)} - {"face_shape"}
    assert names <= params
    assert "face_size" in params  # the one setting whose option has the user's word


def test_the_old_name_of_position_log_likelihood_still_answers_with_a_warning():
    import facefinder_cli as ff

    with pytest.warns(DeprecationWarning, match="position_log_likelihood"):
        assert ff.log_likelihood is ff.position_log_likelihood
