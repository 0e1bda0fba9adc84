"""Small helpers shared by the test modules."""

from __future__ import annotations

import os
import warnings

import numpy as np

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


def save_png(path, array, mode=None):
    """Write ``array`` as a PNG at ``path`` (folders made), converted to Pillow ``mode``."""
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = Image.fromarray(np.asarray(array))
    if mode is not None:
        img = img.convert(mode)
    img.save(path)


def gray(h=6, w=7, value=None, seed=0):
    """A small 8-bit grey image: constant ``value``, or random from ``seed``."""
    if value is not None:
        return np.full((h, w), value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


def listing(folder="."):
    """The names in ``folder``, sorted."""
    return sorted(os.listdir(folder))


def imported_by_cli(*args, among, env=None) -> set[str]:
    """Which of the top-level modules ``among`` a run of ``facefinder ARGS`` in a fresh Python
    process imports (it must succeed)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from facefinder_cli.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    command = [sys.executable, "-c", script, *map(str, args)]
    r = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return set(r.stdout.strip().split(",")) & set(among)
