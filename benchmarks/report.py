"""The report of a run: its dictionary, its Markdown tables, and the files it is written to."""

from __future__ import annotations

import json
import math
from pathlib import Path

from charts import plot_ratios, plot_scaling
from figures import EXPORTERS, SHORT_LABELS, VARIANT_LABELS
from launcher import RSS_METHOD, TREE_RSS_METHOD
from stats import by_key, ratios, summaries


def build_report(
    machine: dict,
    config: dict,
    backbones: dict,
    measurements: list[dict],
    runs: list[dict],
    notes: list[str],
    parity: list[dict] | None = None,
) -> dict:
    """The whole result: what was run where, every raw value, the summaries and ratios.

    Args:
        machine: ``machine.machine_info``'s dictionary (with ``load_average_end`` added).
        config: The run's settings (``repeats`` and ``size`` at least).
        backbones: Facts of each backbone measured (``params``, ``weight_bytes``).
        measurements: Every raw value, ``{"backbone", "figure", "variant", "repeat",
            "value"}``.
        runs: One record per child process.
        notes: Lines for the report's Notes.
        parity: The output comparisons of the latency runs, if any.

    Returns:
        The report, as ``markdown`` and ``write_report`` take it.
    """
    rows = summaries(measurements)
    tree = {}
    if any(m["figure"] == "export_tree_rss_mb" for m in measurements):
        tree["tree_rss_method"] = TREE_RSS_METHOD.format(every=config["tree_sample_s"])
    return {
        "schema": 1,
        "machine": machine,
        "config": config,
        "rss_method": RSS_METHOD,
        **tree,
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

    Args:
        report: ``build_report``'s dictionary.
        results_dir: The directory written to (made if missing).
        stamp: The files' time stamp (the machine's ``stamp`` when None).

    Returns:
        The paths written, by kind (``json``, ``markdown``, ``ratios_png``, ``scaling_png``).
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


def _finite(value):
    """JSON cannot hold NaN or infinity: they become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(value: float) -> str:
    """``value`` with about three significant digits (no exponent above 0.1)."""
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
    """A summary row as ``median [min, max]`` (the median alone for a single value)."""
    if row["n"] == 1:
        return _fmt(row["median"])
    return f"{_fmt(row['median'])} [{_fmt(row['min'])}, {_fmt(row['max'])}]"


def _header(report: dict) -> list[str]:
    """The report's title, machine, method and the legend of the variants it names."""
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
    if report.get("tree_rss_method"):
        lines.append(f"- Peak RSS, process tree summed: {report['tree_rss_method']}.")
    if config["repeats"] < 3:
        lines.append("- **Fewer than 3 repeats: a smoke run, not figures to publish.**")
    used = dict.fromkeys(r["variant"] for r in report["summary"])
    if used:
        lines += ["", "Variants:", ""]
        lines += [f"- {SHORT_LABELS[v]}: {VARIANT_LABELS[v]}" for v in used
                  if SHORT_LABELS[v] != VARIANT_LABELS[v]]  # fmt: skip
    return lines


def markdown(report: dict) -> str:
    """The report as Markdown: header, ratios, every figure, per-backbone export table, notes."""
    lines = _header(report)
    index = by_key(report["summary"])
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
    index = by_key(report["summary"])
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
