"""Statistics of the measurements: each group's median, min and max, and ours / anchor ratios."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from figures import figure_label, pairs_for


def summarize(values: Sequence[float]) -> dict:
    """Median, min, max and count of ``values`` (one value per fresh process).

    Raises:
        ValueError: When ``values`` is empty.
    """
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


def by_key(rows: Iterable[dict]) -> dict[tuple[str, str, str], dict]:
    """Summary rows by their (backbone, figure, variant)."""
    return {(r["backbone"], r["figure"], r["variant"]): r for r in rows}


def ratios(rows: Sequence[dict]) -> list[dict]:
    """ours / anchor of the medians for every pair both measured, with a conservative range.

    ``low`` is ours' min over the anchor's max and ``high`` ours' max over the anchor's min:
    the ratio any pair of single runs could have shown.
    """
    index = by_key(rows)
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
