"""What the benchmarks share: fresh-process measurements, their figures and the reports.

``benchmarks/compare.py`` plans the runs and calls into this module; each measurement runs in
a child process (``compare.py --worker=TASK --spec=FILE``, which lands in ``run_worker``), so
that no figure depends on what an earlier one left in memory. Nothing here defines flags or
imports TensorFlow at import time: each worker imports only what its task needs (the
tf-keras export never imports Keras 3 or exporter), and the tests import the pure parts
(statistics, tables, the JSON writer) without TensorFlow.

This module is the one entry the scripts and tests import; the code lives beside it, by job:

- ``figures``: the things compared, each figure's label and unit, the (ours, anchor) pairs.
- ``planning``: which backbones are measured, and the rotated order of interleaved runs.
- ``launcher``: child processes, with their wall time, CPU time and peak RSS (and, where
  asked, the sampled peak of their process tree's summed RSS).
- ``sizes``: bytes of an export on disk and of a model's weights.
- ``stats``: each group's median, min and max, and the ours / anchor ratios.
- ``report``: the report's dictionary, its Markdown tables and the files written.
- ``charts``: the report's PNG charts (matplotlib).
- ``machine``: the machine, library versions and commit of a run.
- ``workers``: the TensorFlow tasks run in child processes (``TASKS``) and their trainers.
"""

from __future__ import annotations

from charts import plot_ratios, plot_scaling
from figures import (
    EXPORTERS,
    FIGURES,
    FINETUNE_VARIANTS,
    JAX_EXPORTERS,
    LATENCY_VARIANTS,
    SHORT_LABELS,
    VARIANT_LABELS,
    figure_label,
    latency_figure,
    pairs_for,
)
from launcher import RSS_METHOD, TREE_RSS_METHOD, ChildRun, run_child
from machine import load_average, machine_info
from planning import resolve_backbones, rotated
from report import backbone_table, build_report, markdown, write_report
from sizes import MB, directory_bytes, export_sizes, weight_bytes
from stats import ratios, summaries, summarize
from workers import (
    KERAS_HUB,
    SKIPPED_EXIT,
    TASKS,
    Skipped,
    _images,  # noqa: F401  (op_profile.py makes its inputs with harness._images.)
    hub_trainer,
    run_worker,
    tf_keras_trainer,
    time_steps,
)

__all__ = [
    "EXPORTERS",
    "KERAS_HUB",
    "FIGURES",
    "FINETUNE_VARIANTS",
    "JAX_EXPORTERS",
    "LATENCY_VARIANTS",
    "MB",
    "RSS_METHOD",
    "SHORT_LABELS",
    "SKIPPED_EXIT",
    "TASKS",
    "TREE_RSS_METHOD",
    "VARIANT_LABELS",
    "ChildRun",
    "Skipped",
    "backbone_table",
    "build_report",
    "directory_bytes",
    "export_sizes",
    "figure_label",
    "hub_trainer",
    "latency_figure",
    "load_average",
    "machine_info",
    "markdown",
    "pairs_for",
    "plot_ratios",
    "plot_scaling",
    "ratios",
    "resolve_backbones",
    "rotated",
    "run_child",
    "run_worker",
    "summaries",
    "summarize",
    "tf_keras_trainer",
    "time_steps",
    "weight_bytes",
    "write_report",
]
