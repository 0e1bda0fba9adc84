"""The ``facefinder`` command line.

Commands are thin: parse options, call the library, report. All maths lives in the engine.
stdout carries only data (a PNG with ``-o -``, a JSON summary with ``--json``, CSV from
``detect``); messages, warnings and the progress bar go to stderr.

This module holds the ``main`` group, to which each command is added from its own module,
named after it: :mod:`.generate`, :mod:`.fit` (with :mod:`.fit_resume`), :mod:`.plot_elbo`,
:mod:`.detect`, :mod:`.pack`. The shared option types and decorators and the error edge are
in :mod:`.options`, the progress bar in :mod:`.progress`.
"""

from __future__ import annotations

import click

from facefinder_cli import __version__
from facefinder_cli.cli import detect, fit, generate, pack, plot_elbo
from facefinder_cli.cli.options import CONTEXT, Group, verbosity


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="facefinder")
@verbosity
def main() -> None:
    """Recover a face hidden at unknown positions in many noisy images.

    Every image shows the same background with the same face pasted somewhere, plus Gaussian
    noise. `facefinder fit` recovers the face, the background, the noise level and where the
    face is in each image, by expectation-maximisation (EM).

    \b
    Try it on the bundled sample (200 noisy 72x96 images hiding a 40x30 face):
      facefinder fit sample_data/noisy --face-size 40x30 -o run     # face.png, elbo.png, ...
      facefinder fit sample_data/noisy --face-size 40x30 --method hard -o run-hard
      facefinder plot-elbo run run-hard --quantity log-likelihood -o compare.png
    \b
    Make your own data with a known truth, and fit it:
      facefinder generate -n 500 --noise 120 -o data
      facefinder fit data --face-size 40x30 --truth data/truth.npz -o run2
    \b
    Find the face in new images with a fitted model:
      facefinder detect run new_images/ > positions.csv
    \b
    Many images? Pack them once into one .npy that fit streams from disk:
      facefinder pack shots/ shots.npy
      facefinder fit shots.npy --face-size 36x30 --dtype float32 -o run
    \b
    More than one machine can hold? Fit on a Dask cluster (pip install 'facefinder[dask]'):
      facefinder pack shots/ /shared/shots.zarr
      facefinder fit /shared/shots.zarr --face-size 36x30 --scheduler tcp://head:8786 -o run

    Run `facefinder COMMAND --help` for each command's options.
    """


main.add_command(generate.generate)
main.add_command(fit.fit)
main.add_command(plot_elbo.plot_elbo)
main.add_command(detect.detect)
main.add_command(pack.pack)
