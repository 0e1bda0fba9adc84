"""``facefinder plot-elbo``: ELBO or log-likelihood curves of runs on one figure."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from facefinder_cli import outputs, runs
from facefinder_cli.cli.options import (
    CONTEXT,
    OUTPUT,
    STOPPED,
    note_stale,
    overwrite_opt,
    reports_errors,
    verbosity,
)
from facefinder_cli.errors import InputError
from facefinder_cli.images.common import plural

log = logging.getLogger("facefinder")

#: What plot-elbo's figures are drawn as (their stamp): --overwrite replaces only those.
PLOT_ELBO = "plot-elbo"


@click.command("plot-elbo", context_settings=CONTEXT)
@click.argument("runs_", metavar="RUN...", nargs=-1, required=True)
@click.option(
    "-o",
    "--out",
    required=True,
    type=OUTPUT,
    metavar="FILE|-",
    help="Figure file: .png, .svg or .pdf; '-' writes a PNG to stdout.",
)
@click.option(
    "--quantity",
    type=click.Choice(["elbo", "log-likelihood", "log_likelihood"]),
    default="elbo",
    show_default=True,
    help="elbo: the bound L(q, θ) EM maximises; log-likelihood: log p(X | θ), the "
    "number that compares soft, hard and Monte-Carlo EM.",
)
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["iteration", "seconds", "passes"]),
    default="iteration",
    show_default=True,
    help="Horizontal axis. passes: passes over the images, which compares accelerated EM "
    "(two or three per iteration) with plain EM (one) fairly.",
)
@click.option(
    "--per-pixel",
    is_flag=True,
    help="Divide by images x pixels, so runs on different data compare.",
)
@click.option(
    "--gap",
    is_flag=True,
    help="Plot, on a log scale, how far each point is below the best value of the runs on the "
    "same data (runs of several data sets each compare with their own best).",
)
@click.option(
    "-l",
    "--label",
    "labels",
    multiple=True,
    help="Legend label, once per RUN in order [default: the run's folder, method, init].",
)
@click.option("--title", help="Figure title.")
@overwrite_opt
@verbosity
@reports_errors
def plot_elbo(runs_, out, quantity, x_axis, per_pixel, gap, labels, title, overwrite):
    """Plot ELBO or log-likelihood curves of runs on one figure.

    RUN is a run folder written by `facefinder fit`, its result.npz or its history.csv.
    A circle marks where a run started learning the prior.

    \b
    Examples:
      facefinder plot-elbo run -o elbo.png
      facefinder plot-elbo soft hard --quantity log-likelihood --x seconds -o compare.svg
      facefinder plot-elbo run plain --x passes --gap --per-pixel -o speed.png
      facefinder plot-elbo runs/* --gap --per-pixel -o - | display -
    """
    if labels and len(labels) != len(runs_):
        raise click.BadParameter(
            f"{plural(len(labels), 'label')} for {plural(len(runs_), 'run')}",
            param_hint="'--label'",
        )
    fmt = "png" if outputs.is_stream(out) else Path(out).suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise click.BadParameter(
            f"{out}: the figure format comes from the extension: .png, .svg or .pdf",
            param_hint="'--out'",
        )
    if outputs.is_stdout(out) and outputs.stdout_closed():
        raise InputError("standard output is closed: there is nowhere to write the figure")
    if out == "-" and sys.stdout.isatty():  # (as fit -o -)
        raise click.UsageError(
            "-o - writes a PNG to stdout, which is a terminal: pipe it to a viewer or a file"
        )
    loaded = [runs.load_run(r) for r in runs_]
    for arg, run in zip(runs_, loaded):
        if x_axis == "passes" and run.passes is None:
            raise InputError(
                f"{arg}: its history does not record passes over the images (made by an "
                "earlier facefinder); plot it with --x iteration or --x seconds"
            )
    from facefinder_cli.plotting import Curve, plot_curves

    curves = []
    for i, (arg, run) in enumerate(zip(runs_, loaded)):
        if labels:
            label = labels[i]
        else:
            name = Path(arg).name if Path(arg).is_dir() else Path(arg).parent.name or arg
            label = ", ".join(v for v in (name, run.method, run.init) if v)
        curves.append(
            Curve(
                label,
                run.elbo,
                run.log_likelihood,
                run.seconds,
                run.n_values,
                run.prior_fixed_until,
                run.data,
                run.passes,
            )
        )
    keep = [str(runs.result_path(r)) for r in runs_]  # the files read

    def ours(p: str) -> bool:
        """A plot drawn as plot-elbo's output under this name (not a run's prior map copied
        to it, say), or a run's own ELBO plot (fit's elbo.png), as drawn."""
        if outputs.is_facefinder_plot(p, PLOT_ELBO):
            return True
        return Path(p).name == runs.ELBO_PLOT and outputs.is_facefinder_plot(p, "fit")

    with outputs.claim(out) as stale:
        note_stale(stale)
        outputs.check_file_target(out, overwrite, keep=keep, ours=ours)
        STOPPED["installed"] = f"{out} was written all the same"  # (as it was put in place)
        with outputs.atomic_write(out, overwrite=overwrite) as f:
            plot_curves(
                curves,
                f,
                quantity=quantity.replace("-", "_"),
                x=x_axis,
                per_pixel=per_pixel,
                gap=gap,
                fmt=fmt,
                title=title,
                output=(PLOT_ELBO, out),
            )
        if not outputs.is_stream(out):  # (a signal from here on: the plot is in place)
            STOPPED["note"] = f"{out} was written all the same"
    if out != "-" and not outputs.stdout_broken():
        log.info("wrote %s", out)
