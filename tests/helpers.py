"""Small helpers shared by the test modules."""

from __future__ import annotations

import warnings

from facefinder_cli import engine as E


def quiet_fit(X, face_shape, **kw):
    """``engine.fit`` without its ConvergenceWarning: the tests often stop EM on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", E.ConvergenceWarning)
        return E.fit(X, face_shape, **kw)


def cli(*args):
    """``facefinder ARGS`` in-process (stdout and stderr apart), every argument as a string."""
    from click.testing import CliRunner

    from facefinder_cli.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args):
    """``cli(*args)``, which must succeed."""
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    return r


def stop_fit_at(monkeypatch, iteration: int):
    """Patch ``engine.fit`` (as the command line calls it) to be stopped by SIGINT once it has
    reported ``iteration``: the command then saves its checkpoint, as on a real Ctrl-C. Use as
    ``with stop_fit_at(monkeypatch, 2): cli("fit", ...)``."""
    import contextlib
    import signal

    from facefinder_cli import engine
    from facefinder_cli.interrupts import Interrupted

    real = engine.fit

    def stopping(*args, callback=None, **kw):
        def cb(progress):
            callback(progress)
            if progress.iteration == iteration:
                raise Interrupted(signal.SIGINT)

        return real(*args, callback=cb, **kw)

    @contextlib.contextmanager
    def patched():
        with monkeypatch.context() as m:
            m.setattr(engine, "fit", stopping)
            yield

    return patched()
