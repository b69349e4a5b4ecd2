"""What the benchmarks share: fresh-process measurements, their figures and the reports.

``benchmarks/compare.py`` plans the runs and calls into this module; each measurement runs in
a child process (``compare.py --worker=TASK --spec=FILE``, which lands in ``run_worker``), so
that no figure depends on what an earlier one left in memory. Nothing here defines flags or
imports TensorFlow at import time: each worker imports only what its task needs (the
tf-keras export never imports Keras 3 or exporter), and the tests import the pure parts
(statistics, tables, the JSON writer) without TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

MB = 1e6

# How the peak resident set of a child is measured (stated in every report).
RSS_METHOD = (
    "ru_maxrss of the measured process's own rusage, read with os.wait4(pid) by a small "
    "launcher (python -S) that spawned it (the per-child form of "
    "getrusage(RUSAGE_CHILDREN); not spawned from the harness itself, whose own peak Linux "
    "would count as the child's floor)"
)

# Exporters compared in the export and load figures.
EXPORTERS = {
    "ours": "python -m exporter.feature_vector --weights=none",
    "keras3": "Keras 3 model.export",
    "tf_keras": 'tf-keras model.save(save_format="tf")',
}
# Variants of the latency and fine-tune figures.
LATENCY_VARIANTS = {
    "ours_call": "ours __call__",
    "ours_serving_default": "ours serving_default",
    "keras_function": "Keras 3 model in memory, tf.function",
}
FINETUNE_VARIANTS = {
    "hub_layer": "tf-keras + hub.KerasLayer(ours, trainable=True)",
    "tf_keras_native": "tf-keras native (tf_keras.applications)",
}
VARIANT_LABELS = {**EXPORTERS, **LATENCY_VARIANTS, **FINETUNE_VARIANTS}
# Short names for table cells and chart titles (the long ones are in the report's legend).
SHORT_LABELS = {
    "ours": "ours",
    "keras3": "Keras 3 export",
    "tf_keras": "tf-keras save",
    "ours_call": "ours __call__",
    "ours_serving_default": "ours serving_default",
    "keras_function": "Keras 3 tf.function",
    "hub_layer": "hub.KerasLayer(ours)",
    "tf_keras_native": "tf-keras native",
}

# Each measured figure: (label, unit). Latency figures are named latency_b{batch}_ms.
FIGURES = {
    "export_wall_s": ("export wall time, whole process", "s"),
    "export_peak_rss_mb": ("export peak RSS", "MB"),
    "export_cpu_s": ("export CPU time, user + system", "s"),
    "variables_ratio": ("variables/ bytes / raw weight bytes", "x"),
    "variables_mb": ("variables/ size", "MB"),
    "saved_model_pb_mb": ("saved_model.pb size", "MB"),
    "load_s": ("tf.saved_model.load time", "s"),
    "first_call_ms": ("first call after load, batch 1", "ms"),
    "finetune_step_s": ("fine-tune step, train_on_batch", "s"),
    "finetune_first_step_s": ("first fine-tune step (tracing)", "s"),
}
# (ours, anchor) pairs compared for each kind of figure: ours / anchor is the published ratio.
_EXPORT_PAIRS = (("ours", "keras3"), ("ours", "tf_keras"))
_PAIRS = {
    "export_wall_s": _EXPORT_PAIRS,
    "export_peak_rss_mb": _EXPORT_PAIRS,
    "variables_ratio": _EXPORT_PAIRS,
    "saved_model_pb_mb": _EXPORT_PAIRS,
    "load_s": _EXPORT_PAIRS,
    "first_call_ms": _EXPORT_PAIRS,
    "latency": (("ours_call", "keras_function"), ("ours_serving_default", "keras_function")),
    "finetune_step_s": (("hub_layer", "tf_keras_native"),),
    "finetune_first_step_s": (("hub_layer", "tf_keras_native"),),
}


def latency_figure(batch: int) -> str:
    return f"latency_b{batch}_ms"


def figure_label(figure: str) -> tuple[str, str]:
    """(label, unit) of a figure key, latency figures included."""
    if figure.startswith("latency_b"):
        return f"steady-state latency, batch {figure[len('latency_b') : -len('_ms')]}", "ms"
    return FIGURES[figure]


def pairs_for(figure: str) -> tuple[tuple[str, str], ...]:
    """The (ours, anchor) variant pairs compared on ``figure`` (none for informative ones)."""
    return _PAIRS.get("latency" if figure.startswith("latency_b") else figure, ())


# ---------------------------------------------------------------------------------------------
# Backbone names


def resolve_backbones(requested: Sequence[str], known: Sequence[str]) -> list[str]:
    """The backbones to measure: ``requested`` in order, or every known one for ``all``.

    Raises:
        ValueError: For an unknown name; the message lists the known ones.
    """
    if list(requested) == ["all"]:
        return list(known)
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise ValueError(
            f"Unknown backbone{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
            f"; known: {', '.join(known)} (or all)."
        )
    if not requested:
        raise ValueError(f"No backbone given; known: {', '.join(known)} (or all).")
    return list(dict.fromkeys(requested))


def rotated(items: Sequence, repeat: int) -> list:
    """``items`` rotated by ``repeat``: A B C, then B C A, then C A B (interleaved runs)."""
    if not items:
        return []
    shift = repeat % len(items)
    return list(items[shift:]) + list(items[:shift])


# ---------------------------------------------------------------------------------------------
# Children


@dataclasses.dataclass
class ChildRun:
    """One finished child process, as the parent saw it."""

    returncode: int
    wall_s: float
    peak_rss_bytes: int
    cpu_s: float
    log: Path
    timed_out: bool = False

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# Spawns the measured command, waits for it and writes its wall time and rusage as JSON to
# argv[1]; exits with its status. It runs as `python -S -c` (a few MB): Linux gives a child the
# peak resident set of the address space it was spawned from (exec keeps the larger of the two
# as ru_maxrss), so a child spawned straight from a harness holding TensorFlow would report at
# least the harness' own peak.
_LAUNCHER = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(out, "w") as f:
    json.dump({"wall_s": wall, "maxrss": usage.ru_maxrss,
               "cpu_s": usage.ru_utime + usage.ru_stime}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(
    argv: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: float | None = None,
) -> ChildRun:
    """Run ``argv`` to its end with output to ``log``; time it and read its own rusage.

    The wall time runs from just before the spawn to the reaping ``wait4``: the whole
    process, interpreter start and imports included. The command runs under a small launcher
    (see ``_LAUNCHER``) in a process group of its own, killed on timeout or when the harness
    is interrupted.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    usage_file = log.with_suffix(".rusage.json")
    usage_file.unlink(missing_ok=True)
    timed_out = False
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(usage_file), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        wall = time.perf_counter() - start
    try:
        usage = json.loads(usage_file.read_text())
    except (OSError, ValueError):  # Killed before it could write: no rusage.
        usage = {"wall_s": wall, "maxrss": 0, "cpu_s": 0.0}
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return ChildRun(
        returncode=proc.returncode,
        wall_s=usage["wall_s"],
        peak_rss_bytes=usage["maxrss"] * scale,
        cpu_s=usage["cpu_s"],
        log=log,
        timed_out=timed_out,
    )


def directory_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (or of ``path`` itself if it is a file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_sizes(path: Path) -> dict:
    """Bytes of a SavedModel's ``variables/``, its ``saved_model.pb`` and the whole directory."""
    path = Path(path)
    return {
        "variables_bytes": directory_bytes(path / "variables"),
        "saved_model_pb_bytes": (path / "saved_model.pb").stat().st_size,
        "total_bytes": directory_bytes(path),
    }


def weight_bytes(weights: Iterable) -> int:
    """Raw bytes of a model's weights (Keras 3 or tf-keras): elements times item size."""
    import numpy as np

    total = 0
    for w in weights:
        dtype = getattr(w.dtype, "as_numpy_dtype", w.dtype)  # tf.DType or a dtype name.
        total += int(np.prod(w.shape)) * np.dtype(dtype).itemsize
    return total


# ---------------------------------------------------------------------------------------------
# Statistics and the report


def summarize(values: Sequence[float]) -> dict:
    """Median, min, max and count of ``values`` (one value per fresh process)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize() needs at least one value.")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def summaries(measurements: Iterable[dict]) -> list[dict]:
    """Group measurements by (backbone, figure, variant) and summarize each group.

    A measurement is ``{"backbone", "figure", "variant", "repeat", "value"}``; the order of
    first appearance is kept.
    """
    groups: dict[tuple, list[float]] = {}
    for m in measurements:
        groups.setdefault((m["backbone"], m["figure"], m["variant"]), []).append(m["value"])
    rows = []
    for (backbone, figure, variant), values in groups.items():
        label, unit = figure_label(figure)
        rows.append(
            {
                "backbone": backbone,
                "figure": figure,
                "variant": variant,
                "label": label,
                "unit": unit,
                **summarize(values),
            }
        )
    return rows


def ratios(rows: Sequence[dict]) -> list[dict]:
    """ours / anchor of the medians for every pair both measured, with a conservative range.

    ``low`` is ours' min over the anchor's max and ``high`` ours' max over the anchor's min:
    the ratio any pair of single runs could have shown.
    """
    index = {(r["backbone"], r["figure"], r["variant"]): r for r in rows}
    out = []
    for r in rows:
        for ours, anchor in pairs_for(r["figure"]):
            if r["variant"] != ours:
                continue
            a = index.get((r["backbone"], r["figure"], anchor))
            if a is None or a["median"] <= 0 or a["min"] <= 0:
                continue
            out.append(
                {
                    "backbone": r["backbone"],
                    "figure": r["figure"],
                    "label": r["label"],
                    "unit": r["unit"],
                    "ours": ours,
                    "anchor": anchor,
                    "ours_median": r["median"],
                    "anchor_median": a["median"],
                    "ratio": r["median"] / a["median"],
                    "low": r["min"] / a["max"],
                    "high": r["max"] / a["min"],
                }
            )
    return out


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _spread(row: dict) -> str:
    if row["n"] == 1:
        return _fmt(row["median"])
    return f"{_fmt(row['median'])} [{_fmt(row['min'])}, {_fmt(row['max'])}]"


def markdown(report: dict) -> str:
    """The report as Markdown: header, ratios, every figure, per-backbone export table, notes."""
    machine, config = report["machine"], report["config"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    memory = machine["memory_bytes"]
    commit = (machine["git_commit"] or "no git")[:12] + (" dirty" if machine["git_dirty"] else "")
    size = config["size"]
    lines = [
        f"# exporter benchmark, {machine['date']}",
        "",
        f"- Machine: {machine['cpu']}, {machine['cpus']} CPUs ({machine['cpus_usable']} usable), "
        f"{f'{memory / 1e9:.0f} GB' if memory else 'memory unknown'}; load average "
        f"{machine['load_average_start']} at the start, {machine.get('load_average_end')} at "
        "the end.",
        f"- Versions: {versions}; Python {machine['python']}; exporter {machine['exporter']} "
        f"({commit}).",
        f"- Each figure: median [min, max] of {config['repeats']} fresh processes, the runs "
        f"of the things compared interleaved (A B C, B C A, ...); images {size}x{size}.",
        f"- Peak RSS: {report['rss_method']}.",
    ]
    if config["repeats"] < 3:
        lines.append("- **Fewer than 3 repeats: a smoke run, not figures to publish.**")
    used = dict.fromkeys(r["variant"] for r in report["summary"])
    if used:
        lines += ["", "Variants:", ""]
        lines += [f"- {SHORT_LABELS[v]}: {VARIANT_LABELS[v]}" for v in used
                  if SHORT_LABELS[v] != VARIANT_LABELS[v]]  # fmt: skip
    index = {(r["backbone"], r["figure"], r["variant"]): r for r in report["summary"]}
    if report["ratios"]:
        lines += ["", "## Ours / anchor", "",
                  "| backbone | figure | ours | anchor | ours / anchor [range] |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for q in report["ratios"]:
            ours = index[(q["backbone"], q["figure"], q["ours"])]
            anchor = index[(q["backbone"], q["figure"], q["anchor"])]
            lines.append(
                f"| {q['backbone']} | {q['label']} ({q['unit']}) | "
                f"{SHORT_LABELS[q['ours']]}: {_spread(ours)} | "
                f"{SHORT_LABELS[q['anchor']]}: {_spread(anchor)} | "
                f"{q['ratio']:.2f}x [{q['low']:.2f}, {q['high']:.2f}] |"
            )
    if report["summary"]:
        lines += ["", "## Every figure", "",
                  "| backbone | figure | unit | variant | median | min | max | n |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["summary"]:
            lines.append(
                f"| {r['backbone']} | {r['label']} | {r['unit']} | {SHORT_LABELS[r['variant']]} "
                f"| {_fmt(r['median'])} | {_fmt(r['min'])} | {_fmt(r['max'])} | {r['n']} |"
            )
    per_backbone = backbone_table(report)
    if per_backbone:
        title = "## Per backbone: export (medians; ours / Keras 3 export / tf-keras save)"
        lines += ["", title, "", *per_backbone]
    if report.get("parity"):
        lines += ["", "## Same weights, same outputs (latency runs, batch 1, first 64 features)"]
        lines.append("")
        for p in report["parity"]:
            lines.append(
                f"- {p['backbone']}: {SHORT_LABELS[p['variant']]} against the Keras model: "
                f"largest difference {p['max_abs_diff']:.3g} of the Keras output's largest "
                f"value, {p['scale']:.3g}."
            )
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


_BACKBONE_COLUMNS = (
    ("export s", "export_wall_s"),
    ("peak RSS MB", "export_peak_rss_mb"),
    ("variables/ MB", "variables_mb"),
    ("variables / weights", "variables_ratio"),
    ("saved_model.pb MB", "saved_model_pb_mb"),
)


def backbone_table(report: dict) -> list[str]:
    """Rows of the per-backbone export table (empty when no export was measured)."""
    index = {(r["backbone"], r["figure"], r["variant"]): r for r in report["summary"]}
    names = [
        b
        for b in report["backbones"]
        if any((b, figure, e) in index for _, figure in _BACKBONE_COLUMNS for e in EXPORTERS)
    ]
    if not names:
        return []
    header = " | ".join(title for title, _ in _BACKBONE_COLUMNS)
    rows = [f"| backbone | params (M) | {header} |", "|---|---|" + "---|" * len(_BACKBONE_COLUMNS)]
    for name in names:
        params = report["backbones"][name].get("params")
        cells = []
        for _, figure in _BACKBONE_COLUMNS:
            values = [index.get((name, figure, e)) for e in EXPORTERS]
            cells.append(" / ".join(_fmt(v["median"]) if v else "-" for v in values))
        params_cell = f"{params / 1e6:.1f}" if params else "-"
        rows.append(f"| {name} | {params_cell} | {' | '.join(cells)} |")
    return rows


def _finite(value):
    """JSON cannot hold NaN or infinity: they become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def build_report(
    machine: dict,
    config: dict,
    backbones: dict,
    measurements: list[dict],
    runs: list[dict],
    notes: list[str],
    parity: list[dict] | None = None,
) -> dict:
    """The whole result: what was run where, every raw value, the summaries and ratios."""
    rows = summaries(measurements)
    return {
        "schema": 1,
        "machine": machine,
        "config": config,
        "rss_method": RSS_METHOD,
        "backbones": backbones,
        "summary": rows,
        "ratios": ratios(rows),
        "parity": parity or [],
        "notes": notes,
        "measurements": measurements,
        "runs": runs,
    }


def write_report(report: dict, results_dir: Path, stamp: str | None = None) -> dict[str, Path]:
    """Write ``compare-STAMP.json`` and ``.md`` (and the charts, if matplotlib is installed).

    Returns the paths written, by kind (``json``, ``markdown``, ``ratios_png``,
    ``scaling_png``).
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = stamp or report["machine"]["stamp"]
    base = results_dir / f"compare-{stamp}"
    paths = {"json": base.with_suffix(".json"), "markdown": base.with_suffix(".md")}
    paths["json"].write_text(json.dumps(_finite(report), indent=1) + "\n")
    paths["markdown"].write_text(markdown(report))
    charts = {
        "ratios_png": (plot_ratios, Path(f"{base}-ratios.png")),
        "scaling_png": (plot_scaling, Path(f"{base}-scaling.png")),
    }
    for kind, (plot, path) in charts.items():
        written = plot(report, path)
        if written is None:  # matplotlib is missing: said once, the rest is written.
            break
        if written:
            paths[kind] = path
    return paths


def _pyplot():
    """matplotlib's pyplot on a file-only backend, or None (with one line) when missing."""
    try:
        import matplotlib
    except ImportError:
        print(
            "matplotlib is not installed, so no PNG charts: pip install 'exporter[bench]'",
            file=sys.stderr,
        )
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ratios(report: dict, path: Path) -> bool | None:
    """Bar chart of every ours / anchor ratio, one panel per comparison, log scale.

    Returns whether a chart was written, or None when matplotlib is missing.
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


def _save_figure(plt, fig, title: str, path: Path) -> bool:
    """Title, lay out and write ``fig`` as a PNG, then free it."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scaling(report: dict, path: Path) -> bool | None:
    """Export wall time and peak RSS against parameter count, and wall time against the size
    of the graph (``saved_model.pb``), one series per exporter."""
    index = {(r["backbone"], r["figure"], r["variant"]): r for r in report["summary"]}
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
        named = False
        for exporter_name in EXPORTERS:
            points = [
                (x_of(b, exporter_name), index[(b, figure, exporter_name)], b)
                for b in params
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


def _leading_digit(value: float) -> int:
    """The first significant digit of a positive number (3 for 0.3, 300 and 3.2)."""
    return int(f"{value:.0e}"[0]) if value > 0 else 0


# ---------------------------------------------------------------------------------------------
# The machine


def _first_line_of(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine_info(repo: Path, exporter_version: str | None = None) -> dict:
    """CPU, cores, memory, load, versions, the commit and the date of this run."""
    now = datetime.datetime.now(datetime.UTC)
    memory = _first_line_of("/proc/meminfo", "MemTotal")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "date": now.isoformat(timespec="seconds"),
        "stamp": now.strftime("%Y%m%dT%H%M%SZ"),
        "cpu": _first_line_of("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "memory_bytes": int(memory.split()[0]) * 1024 if memory else None,
        "load_average_start": load_average(),
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("tensorflow", "keras", "tf-keras", "tensorflow-hub", "numpy", "h5py")
        },
        "exporter": exporter_version,
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(status),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Workers: one measurement each, in a fresh process. Imports stay inside each task.

SKIPPED_EXIT = 3  # A worker's exit status for "this comparison does not exist" (not a failure).


class Skipped(Exception):
    """The anchor does not exist here (such as a tf_keras.applications model)."""


def _tf_keras_application(tf_keras, constructor: str):
    build = getattr(tf_keras.applications, constructor, None)
    if build is None:
        raise Skipped(f"tf_keras.applications has no {constructor}")
    return build


def _images(batch: int, size: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).random((batch, size, size, 3), dtype=np.float32)


def _task_prepare(spec: dict) -> dict:
    """Untimed: the Keras 3 model ours exports (its size), and its weights file if asked."""
    import keras

    import exporter

    keras.utils.set_random_seed(0)
    model = exporter.load_backbone(spec["backbone"], weights="none", pooling="avg")
    if spec.get("weights_file"):
        model.save_weights(spec["weights_file"])
    return {"params": int(model.count_params()), "weight_bytes": weight_bytes(model.weights)}


def _task_export_keras3(spec: dict) -> dict:
    """Keras 3's own export of the keras.applications model (pooled, as ours is)."""
    import keras

    build = getattr(keras.applications, spec["constructor"])
    model = build(
        include_top=False, weights=None, pooling="avg", input_shape=tuple(spec["input_shape"])
    )
    model.export(spec["out"], format="tf_saved_model", verbose=False)
    return {"params": int(model.count_params()), "weight_bytes": weight_bytes(model.weights)}


def _task_export_tf_keras(spec: dict) -> dict:
    """tf-keras' SavedModel of the tf_keras.applications model (pooled, as ours is)."""
    import tf_keras

    build = _tf_keras_application(tf_keras, spec["constructor"])
    model = build(
        include_top=False, weights=None, pooling="avg", input_shape=tuple(spec["input_shape"])
    )
    model.save(spec["out"], save_format="tf")
    return {"params": int(model.count_params()), "weight_bytes": weight_bytes(model.weights)}


def _task_load(spec: dict) -> dict:
    """``tf.saved_model.load`` time, then the first call's (batch 1), in this fresh process."""
    start = time.perf_counter()
    import numpy as np
    import tensorflow as tf

    import_s = time.perf_counter() - start
    images = tf.constant(_images(1, spec["size"]))
    start = time.perf_counter()
    obj = tf.saved_model.load(spec["path"])
    load_s = time.perf_counter() - start
    function = obj.serve if spec["call"] == "serve" else obj
    start = time.perf_counter()
    np.asarray(function(images))
    first_call_s = time.perf_counter() - start
    return {"import_s": import_s, "load_s": load_s, "first_call_s": first_call_s}


def _task_latency(spec: dict) -> dict:
    """Median latency of ``spec['calls']`` calls after warm-up, one batch size, one variant."""
    import numpy as np
    import tensorflow as tf

    images = tf.constant(_images(spec["batch"], spec["size"]))
    if spec["variant"] == "keras_function":
        import exporter
        from exporter.making.preprocessing import preprocess

        model = exporter.load_backbone(
            spec["backbone"], weights=spec["weights_file"], pooling="avg"
        )
        mode = exporter.get_backbone(spec["backbone"]).preprocessing
        function = tf.function(lambda x: model(preprocess(x, mode), training=False))
    else:
        obj = tf.saved_model.load(spec["path"])
        if spec["variant"] == "ours_serving_default":
            signature = obj.signatures["serving_default"]
            function = lambda x: signature(images=x)["feature_vector"]  # noqa: E731
        else:
            function = obj
    start = time.perf_counter()
    output = np.asarray(function(images))
    first_s = time.perf_counter() - start
    for _ in range(spec["warmup"] - 1):
        np.asarray(function(images))
    times = []
    for _ in range(spec["calls"]):
        start = time.perf_counter()
        np.asarray(function(images))
        times.append(time.perf_counter() - start)
    return {
        "first_s": first_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "output_row0": output[0, :64].astype(float).tolist(),
    }


def _compiled_tf_keras(tf_keras, body, size: int, classes: int):
    model = tf_keras.Sequential(
        [tf_keras.Input((size, size, 3)), body, tf_keras.layers.Dense(classes)]
    )
    model.compile(
        tf_keras.optimizers.SGD(1e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def hub_trainer(path: str, size: int, classes: int):
    """tf-keras: ``hub.KerasLayer(path, trainable=True)`` then a Dense head, compiled (SGD)."""
    import tensorflow_hub as hub
    import tf_keras

    return _compiled_tf_keras(tf_keras, hub.KerasLayer(path, trainable=True), size, classes)


def tf_keras_trainer(constructor: str, preprocessing: str, size: int, classes: int):
    """tf-keras: the tf_keras.applications backbone (pooled) with our preprocessing mode
    in front, then a Dense head, compiled as ``hub_trainer``'s."""
    import tf_keras

    from exporter.making.preprocessing import preprocess

    build = _tf_keras_application(tf_keras, constructor)
    backbone = build(include_top=False, weights=None, pooling="avg", input_shape=(size, size, 3))
    # Ours preprocesses inside its graph; the native model does the same work.
    body = tf_keras.Sequential(
        [tf_keras.layers.Lambda(lambda x: preprocess(x, preprocessing)), backbone]
    )
    return _compiled_tf_keras(tf_keras, body, size, classes)


def time_steps(model, images, labels, steps: int) -> list[float]:
    """Seconds of each of ``steps`` ``train_on_batch`` calls (each returns a NumPy loss, so
    the step has finished when it returns)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - start)
    return times


def _task_finetune(spec: dict) -> dict:
    """Seconds per ``train_on_batch`` step: hub.KerasLayer on ours, or tf-keras natively."""
    import numpy as np
    import tensorflow as tf

    size, batch, classes = spec["size"], spec["batch"], 5
    if spec["variant"] == "hub_layer":
        model = hub_trainer(spec["path"], size, classes)
    else:
        model = tf_keras_trainer(spec["constructor"], spec["preprocessing"], size, classes)
    images = tf.constant(_images(batch, size))
    labels = tf.constant(np.random.default_rng(1).integers(0, classes, batch))
    [first_step_s] = time_steps(model, images, labels, 1)  # Tracing.
    times = time_steps(model, images, labels, spec["steps"])
    return {"first_step_s": first_step_s, "times_s": times, "median_s": statistics.median(times)}


TASKS = {
    "prepare": _task_prepare,
    "export_keras3": _task_export_keras3,
    "export_tf_keras": _task_export_tf_keras,
    "load": _task_load,
    "latency": _task_latency,
    "finetune": _task_finetune,
}


def run_worker(task: str, spec_path: str) -> None:
    """Run one task with the JSON spec at ``spec_path``; write its result to spec['result']."""
    if task not in TASKS:
        sys.exit(f"error: unknown worker task {task!r}; known: {', '.join(TASKS)}.")
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = TASKS[task](spec)
    except Skipped as why:
        print(f"skipped: {why}", file=sys.stderr)
        sys.exit(SKIPPED_EXIT)
    Path(spec["result"]).write_text(json.dumps(result))
