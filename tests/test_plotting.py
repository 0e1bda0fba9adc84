"""The figures (facefinder_cli.plotting), read through matplotlib's artist tree: axes, labels,
colour bar and title are there and say what the picture shows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facefinder_cli.plotting import Curve, curves_figure, plot_curves, plot_prior, prior_figure


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def test_prior_figure_has_axes_colour_bar_and_a_title_that_reads_it():
    prior = np.full((9, 21), 1e-4)
    prior[3, 5] = 1.0
    prior /= prior.sum()
    fig = prior_figure(prior)
    image_ax, bar_ax = fig.axes  # the map and its colour bar
    assert "column" in image_ax.get_xlabel() and "top-left" in image_ax.get_xlabel()
    assert image_ax.get_ylabel() == "row"
    assert bar_ax.get_ylabel() == "probability"
    title = image_ax.get_title()
    assert f"{prior.max() * prior.size:.3g}x uniform" in title
    assert "1 of the 189 positions hold half the probability" in title
    # the extent puts position (r, c) at coordinates (c, r): ticks are positions
    assert image_ax.images[0].get_extent() == [-0.5, 20.5, 8.5, -0.5]
    ticks = [t for t in image_ax.get_xticks() if -0.5 <= t <= 20.5]
    assert all(float(t).is_integer() for t in ticks)
    bar_labels = [t.get_text() for t in bar_ax.get_yticklabels() if t.get_text()]
    assert bar_labels and all("e" not in t for t in bar_labels)  # plain numbers, no 1e-2 offset


def test_a_uniform_prior_is_said_to_be_uniform():
    fig = prior_figure(np.full((5, 9), 1 / 45))
    assert "uniform: each of the 45 positions 1/45" in fig.axes[0].get_title()


@pytest.mark.parametrize("per_pixel", [False, True])
def test_elbo_figure_has_units_plain_numbers_and_whole_iterations(per_pixel):
    elbo = -7.2e6 + np.array([0, 1.5e5, 1.9e5, 1.9e5 + 3, 1.9e5 + 3.5])
    fig = curves_figure(
        [Curve("soft", elbo, elbo, np.arange(5.0), 100_000, 2)], per_pixel=per_pixel
    )
    ax = fig.axes[0]
    assert ax.get_ylabel().endswith("(nats per image and pixel)" if per_pixel else "(nats)")
    assert ax.get_xlabel() == "iteration"
    fig.canvas.draw()
    assert ax.yaxis.get_offset_text().get_text() == ""  # no bare "1e6" above the axis
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no 2.5 iterations
    assert "prior learnt from here" in texts(fig)


def test_curves_against_passes_over_the_images():
    elbo = -7.2e6 + np.array([0, 1.5e5, 1.9e5, 1.9e5 + 3])
    passes = np.array([0, 3, 6, 8])
    fig = curves_figure([Curve("fast", elbo, elbo, np.arange(4.0), 100, passes=passes)], x="passes")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "passes over the images"
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), passes)


def test_plot_elbo_by_passes_needs_runs_that_record_them(tmp_path, monkeypatch):
    from helpers import cli, ok

    monkeypatch.chdir(tmp_path)
    ok("generate", "-n", 20, "--size", "16x16", "--face-size", "6x6", "--noise", 30, "-o", "d")
    ok("fit", "d", "--face-size", "6x6", "-o", "run", "-q", "--no-plots")
    ok("plot-elbo", "run", "--x", "passes", "-o", "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    head = rows[0].split(",")
    keep = [i for i, k in enumerate(head) if k != "passes"]
    old = "\n".join(",".join(r.split(",")[i] for i in keep) for r in rows) + "\n"
    (tmp_path / "old.csv").write_text(old)
    r = cli("plot-elbo", "old.csv", "--x", "passes", "-o", "q.png")
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1
    assert "does not record passes over the images" in r.stderr
    assert not (tmp_path / "q.png").exists()
    ok("plot-elbo", "old.csv", "--x", "iteration", "-o", "q.png")


def test_plot_elbo_refuses_damaged_histories(tmp_path, monkeypatch):
    """A truncated row, a value that is not finite, a count of values that is not a positive
    whole number: one line naming the file, no plot (before: a TypeError, or exit 0 with an
    empty or misleading plot)."""
    from helpers import cli, ok

    monkeypatch.chdir(tmp_path)
    ok("generate", "-n", 20, "--size", "16x16", "--face-size", "6x6", "--noise", 30, "-o", "d")
    ok("fit", "d", "--face-size", "6x6", "-o", "run", "-q", "--no-plots")
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    head = rows[0].split(",")

    def with_value(column, value):
        cells = [r.split(",") for r in rows[1:]]
        for c in cells:
            c[head.index(column)] = value
        return "\n".join([rows[0], *(",".join(c) for c in cells)]) + "\n"

    cases = {
        "cut.csv": ("\n".join(rows)[: len(rows[0]) + len(rows[1]) + 12], "line 3 does not have"),
        "inf.csv": (with_value("elbo", "inf"), "column elbo holds a value that is not finite"),
        "nan.csv": (with_value("log_likelihood", "nan"), "column log_likelihood holds a value"),
        "zero.csv": (with_value("n_values", "0"), "column n_values must hold one positive"),
        "neg.csv": (with_value("n_values", "-5"), "column n_values must hold one positive"),
        # (before: "arange: cannot compute length", from matplotlib's axes, naming no file)
        "huge.csv": (with_value("elbo", "-1.7e308"), "column elbo holds a value beyond ±1e+100"),
        "big.csv": (with_value("log_likelihood", "1e308"), "column log_likelihood holds a value"),
        # (before: "not a facefinder history (needs columns ...)", which it has)
        "head.csv": (rows[0] + "\n", "a history with its header but no rows (truncated?)"),
    }
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        r = cli("plot-elbo", name, "-o", "p.png")
        assert r.exit_code == 1 and r.stderr.splitlines() == [
            f"Error: {name}: " + r.stderr.split(": ", 2)[2].rstrip()
        ]
        assert needle in r.stderr, r.stderr
        assert not (tmp_path / "p.png").exists()
    gains = with_value("gain", "inf")  # a gain may be inf or nan (no gain measured yet)
    (tmp_path / "gain.csv").write_text(gains)
    ok("plot-elbo", "gain.csv", "-o", "p.png")


def test_text_that_is_not_utf8_is_drawn_with_its_bytes_escaped():
    """A label or title from a file name or the command line may hold bytes that are not UTF-8
    (surrogate escapes in Python), which matplotlib's fonts refuse: they are drawn as \\xNN,
    as the CSV files write such names (before: an unexpected TypeError at drawing)."""
    elbo = np.array([-10.0, -5.0, -4.0])
    fig = curves_figure([Curve("caf\udce9, soft", elbo, elbo, np.arange(3.0), 10)], title="t\udce9")
    assert "caf\\xe9, soft" in texts(fig) and fig.axes[0].get_title() == "t\\xe9"
    fig.canvas.draw()
    assert prior_figure(np.full((3, 4), 1 / 12), title="p\udcff").axes[0].get_title() == "p\\xff"


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_plot_elbo_draws_names_labels_and_titles_that_are_not_utf8(tmp_path, monkeypatch, fmt):
    import shutil

    from helpers import ok

    monkeypatch.chdir(tmp_path)
    ok("generate", "-n", 20, "--size", "16x16", "--face-size", "6x6", "--noise", 30, "-o", "d")
    ok("fit", "d", "--face-size", "6x6", "-o", "run", "-q", "--no-plots")
    shutil.copytree("run", "caf\udce9")  # the folder b"caf\xe9"
    ok("plot-elbo", "caf\udce9", "-o", f"c.{fmt}")
    ok("plot-elbo", "run", "--title", "t\udce9", "-l", "l\udcff", "-o", f"t.{fmt}")
    for name in ("c", "t"):
        assert (tmp_path / f"{name}.{fmt}").stat().st_size > 0
    if fmt == "svg":  # the text is there, escaped
        svg = (tmp_path / "t.svg").read_text()
        assert "t\\xe9" in svg and "l\\xff" in svg


def test_dollar_signs_in_names_labels_and_titles_are_drawn_as_they_are(tmp_path, monkeypatch):
    """matplotlib reads text between dollar signs as mathematics: a run named ``r $\\frac{$``
    failed to plot with a multi-line parser error, ``cost $5 and $6`` lost its dollars (found
    in review)."""
    import shutil

    from helpers import ok

    monkeypatch.chdir(tmp_path)
    ok("generate", "-n", 20, "--size", "16x16", "--face-size", "6x6", "--noise", 30, "-o", "d")
    ok("fit", "d", "--face-size", "6x6", "-o", "run", "-q", "--no-plots")
    shutil.copytree("run", "r $\\frac{$")
    ok("plot-elbo", "r $\\frac{$", "-o", "a.png")
    ok("plot-elbo", "run", "-l", "$\\x$", "--title", "$^$", "-o", "b.png")
    elbo = np.array([-5.0, -3.0])
    fig = curves_figure([Curve("cost $5 and $6", elbo, elbo, np.arange(2.0), 10)], title="$^$")
    fig.canvas.draw()
    ax = fig.axes[0]
    for text, shown in ((ax.get_legend().get_texts()[0], "cost $5 and $6"), (ax.title, "$^$")):
        assert text._preprocess_math(text.get_text()) == (shown, False)  # as it is, not math


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_plots_carry_a_stamp_that_an_edit_breaks(tmp_path, fmt):
    """--overwrite replaces a plot only if it is facefinder's as drawn: its creator tag
    holds the SHA-256 of the file (digest zeroed). A changed byte, or another file with the
    tag copied into it, is not facefinder's; the PNG stays valid (its chunk's CRC)."""
    import re

    from facefinder_cli.outputs import is_facefinder_plot

    elbo = np.array([-5.0, -3.0, -2.5])
    path = tmp_path / f"p.{fmt}"
    with open(path, "wb") as f:
        plot_curves([Curve("a", elbo, elbo, np.arange(3.0), 10)], f, fmt=fmt)
    data = path.read_bytes()
    assert is_facefinder_plot(str(path))
    assert re.search(rb"facefinder \d[\w.+-]* [0-9a-f]{64}", data)
    assert not is_facefinder_plot(str(path), "plot-elbo")  # drawn as no output
    if fmt == "png":
        Image.open(path).verify()  # the CRCs hold
    for at in (len(data) // 3, len(data) - 20):
        path.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
        assert not is_facefinder_plot(str(path))
    tag = re.search(rb"facefinder \d[\w.+-]* [0-9a-f]{64}", data).group(0)
    path.write_bytes(b"my own file, with a copied tag: " + tag)
    assert not is_facefinder_plot(str(path))


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_a_plot_is_stamped_with_the_output_it_was_drawn_as(tmp_path, fmt):
    """A plot names what it was drawn as and under which file name: --overwrite of plot-elbo
    replaces only its own figure under that name, not a run's prior map or ELBO plot (which
    say fit), nor its figure copied to another name."""
    import re
    import shutil

    from facefinder_cli.outputs import is_facefinder_plot

    elbo = np.array([-5.0, -3.0, -2.5])
    path = tmp_path / f"e.{fmt}"
    with open(path, "wb") as f:
        curve = Curve("a", elbo, elbo, np.arange(3.0), 10)
        plot_curves([curve], f, fmt=fmt, output=("plot-elbo", str(path)))
    assert re.search(
        rb"facefinder \d[\w.+-]* plot-elbo:[0-9a-f]{16} [0-9a-f]{64}", path.read_bytes()
    )
    assert is_facefinder_plot(str(path), "plot-elbo") and is_facefinder_plot(str(path))
    assert not is_facefinder_plot(str(path), "fit")
    shutil.copy2(path, tmp_path / f"copy.{fmt}")
    assert not is_facefinder_plot(str(tmp_path / f"copy.{fmt}"), "plot-elbo")
    assert is_facefinder_plot(str(tmp_path / f"copy.{fmt}"))  # (facefinder's all the same)
    with open(tmp_path / f"prior.{fmt}", "wb") as f:
        plot_prior(np.full((3, 4), 1 / 12), f, fmt=fmt, output=("fit", "prior.png"))
    shutil.copy2(tmp_path / f"prior.{fmt}", path)
    assert not is_facefinder_plot(str(path), "plot-elbo")


def test_a_label_of_zeros_does_not_unstamp_a_plot(tmp_path):
    """The stamp's placeholder is the whole creator text, not 64 zeros that a label (drawn
    into an SVG as text) may hold too."""
    from facefinder_cli.outputs import is_facefinder_plot

    elbo = np.array([-5.0, -3.0, -2.5])
    path = tmp_path / "z.svg"
    with open(path, "wb") as f:
        plot_curves([Curve("0" * 64, elbo, elbo, np.arange(3.0), 10)], f, fmt="svg")
    assert ("0" * 64).encode() in path.read_bytes() and is_facefinder_plot(str(path))
