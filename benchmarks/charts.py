"""The report's PNG charts (matplotlib, optional: ``pip install 'tfhub-exporter[bench]'``).

Each ``plot_*`` returns whether it wrote a chart, or None when matplotlib is missing.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from figures import EXPORTERS, SHORT_LABELS, figure_label
from stats import by_key


def _pyplot():
    """matplotlib's pyplot on a file-only backend, or None (with one line) when missing."""
    try:
        import matplotlib
    except ImportError:
        print(
            "matplotlib is not installed, so no PNG charts: pip install 'tfhub-exporter[bench]'",
            file=sys.stderr,
        )
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, title: str, path: Path) -> bool:
    """Title, lay out and write ``fig`` as a PNG, then free it."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_ratios(report: dict, path: Path) -> bool | None:
    """Bar chart of every ours / anchor ratio, one panel per comparison, log scale.

    Returns:
        Whether a chart was written, or None when matplotlib is missing.
    """
    if not report["ratios"]:
        return False
    plt = _pyplot()
    if plt is None:
        return None
    panels: dict[tuple, list[dict]] = {}
    for q in report["ratios"]:
        panels.setdefault((q["figure"], q["ours"], q["anchor"]), []).append(q)
    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    bars = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(
        rows, columns, squeeze=False, figsize=(7 * columns, rows * (0.9 + 0.28 * bars))
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, ((figure, ours, anchor), items) in zip(axes.flat, panels.items(), strict=False):
        names = [q["backbone"] for q in items]
        values = [q["ratio"] for q in items]
        errors = [[q["ratio"] - q["low"] for q in items], [q["high"] - q["ratio"] for q in items]]
        colors = ["tab:green" if v <= 1.05 else "tab:red" for v in values]
        ax.barh(names, values, xerr=errors, color=colors, capsize=3)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xlim(0, max(1.0, *(q["high"] for q in items)) * 1.15)
        ax.invert_yaxis()
        ax.set_title(
            f"{figure_label(figure)[0]}\n{SHORT_LABELS[ours]} / {SHORT_LABELS[anchor]}",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
        for y, v in enumerate(values):
            ax.annotate(f"{v:.2f}x", (v, y), xytext=(3, -3), textcoords="offset points", fontsize=7)
    machine = report["machine"]
    title = (
        f"ours / anchor, lower is better (median of {report['config']['repeats']} fresh "
        "processes; whiskers: ours' min / anchor's max to ours' max / anchor's min; green: at "
        f"most 1.05x)\n{machine['cpu']}, {machine['cpus']} CPUs, {machine['date']}"
    )
    return _save_figure(plt, fig, title, path)


def plot_scaling(report: dict, path: Path) -> bool | None:
    """Export wall time and peak RSS against parameter count, and wall time against the size
    of the graph (``saved_model.pb``), one series per exporter.

    Returns:
        Whether a chart was written, or None when matplotlib is missing.
    """
    index = by_key(report["summary"])
    params = {b: info.get("params") for b, info in report["backbones"].items()}
    if not any(
        (b, "export_wall_s", e) in index and params.get(b) for b in params for e in EXPORTERS
    ):
        return False
    plt = _pyplot()
    if plt is None:
        return None

    def parameters(backbone, _):
        return params[backbone] / 1e6 if params.get(backbone) else None

    def graph(backbone, exporter_name):
        row = index.get((backbone, "saved_model_pb_mb", exporter_name))
        return row["median"] if row else None

    panels = (
        (parameters, "parameters (millions)", "export_wall_s"),
        (parameters, "parameters (millions)", "export_peak_rss_mb"),
        (graph, "saved_model.pb, the graph (MB)", "export_wall_s"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 5))
    plain = plt.FuncFormatter(lambda value, _: f"{value:g}")
    # Minor ticks at 2, 3 and 5 only: every one of them labelled overlaps on a wide range.
    sparse = plt.FuncFormatter(
        lambda value, _: f"{value:g}" if _leading_digit(value) in (2, 3, 5) else ""
    )
    for ax, (x_of, x_label, figure) in zip(axes, panels, strict=True):
        named = _plot_exporters(ax, index, list(params), x_of, figure)
        label, unit = figure_label(figure)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # 3, 20, 200 rather than 3 x 10^0.
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(sparse)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{label} ({unit})")
        if named:
            ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    machine = report["machine"]
    title = (
        f"export against model size (median of {report['config']['repeats']}; "
        f"{machine['cpu']}, {machine['cpus']} CPUs, {machine['date']})"
    )
    return _save_figure(plt, fig, title, path)


def _plot_exporters(ax, index: dict, backbones: list[str], x_of, figure: str) -> bool:
    """One series of median [min, max] per exporter on ``ax``: ``figure`` against ``x_of``.

    Args:
        ax: The matplotlib axes drawn on.
        index: The summary rows by (backbone, figure, variant).
        backbones: The backbones, in the report's order.
        x_of: ``(backbone, exporter) -> x``, or None where there is none.
        figure: The figure drawn on the y axis.

    Returns:
        Whether any series was drawn (the first one has the backbones' names beside it).
    """
    named = False
    for exporter_name in EXPORTERS:
        points = [
            (x_of(b, exporter_name), index[(b, figure, exporter_name)], b)
            for b in backbones
            if (b, figure, exporter_name) in index and x_of(b, exporter_name)
        ]
        if not points:
            continue
        xs = [x for x, _, _ in points]
        ys = [r["median"] for _, r, _ in points]
        spread = [
            [r["median"] - r["min"] for _, r, _ in points],
            [r["max"] - r["median"] for _, r, _ in points],
        ]
        label = SHORT_LABELS[exporter_name]
        ax.errorbar(xs, ys, yerr=spread, fmt="o", label=label, capsize=2, markersize=4)
        if not named:  # Backbone names beside the first series drawn.
            named = True
            for x, y, (_, _, name) in zip(xs, ys, points, strict=True):
                ax.annotate(name, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    return named


def _leading_digit(value: float) -> int:
    """The first significant digit of a positive number (3 for 0.3, 300 and 3.2)."""
    return int(f"{value:.0e}"[0]) if value > 0 else 0
