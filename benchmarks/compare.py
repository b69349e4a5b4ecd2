"""The one harness for every performance figure we publish: ours against its anchors.

Usage:
    python benchmarks/compare.py
        [--backbones=mobilenet_v2,resnet50,efficientnet_v2_s,keras_hub_vit_b16|all]
        [--figures=export,load,latency,finetune,jax_export] [--exporters=ours,keras3,tf_keras]
        [--repeats=3] [--size=224] [--batches=1,16] [--calls=10] [--finetune_batch=16]
        [--finetune_steps=5] [--results_dir=benchmarks/results] [--scratch=DIR]

Every figure is measured in a fresh process (this script with ``--worker``, or the export
CLI itself), ``--repeats`` times, the runs of the things compared interleaved and rotated
(A B C, B C A, C A B), and reported as median [min, max]. Random weights; nothing is
downloaded. Figures, per backbone:

- ``export``: the whole export process's wall time, peak RSS and CPU time, for ours
  (``python -m exporter.feature_vector --weights=none``), Keras 3's ``model.export`` of the
  same pooled keras.applications model, and tf-keras' ``model.save(save_format="tf")`` of
  the tf_keras.applications one; with each export's ``variables/`` bytes over the model's raw
  weight bytes and its ``saved_model.pb`` size.
- ``load``: ``tf.saved_model.load`` of each export, and the first call after it (batch 1).
- ``latency``: steady-state latency at each of ``--batches`` through ours' ``__call__`` and
  ``serving_default``, against the in-memory Keras 3 model with the same weights (a
  ``.weights.h5`` file ours is exported from) and the same preprocessing in a ``tf.function``.
- ``finetune``: seconds per ``train_on_batch`` step of tf-keras + ``hub.KerasLayer(ours,
  trainable=True)`` + a Dense head, against the tf_keras.applications backbone (same
  preprocessing, same head) trained natively; same batch and size.
- ``jax_export``: export from a JAX training process. One ``KERAS_BACKEND=jax`` process
  imports Keras, builds the model (the keras.applications backbone at free sizes, pooled,
  or the keras-hub ImageClassifier) and exports it: ours with
  ``exporter.export_feature_vector(model, ...)``, which rebuilds it under TensorFlow in a
  child process, against Keras 3's own ``model.export(format="tf_saved_model")`` (jax2tf).
  Wall time, CPU time and peak RSS of the whole process, the rebuild child included (peak
  RSS both as wait4 reports it, the larger of the two processes, and as the sampled sum of
  the process tree), with the import, build and export call timed in the process.

Writes ``compare-STAMP.json`` (machine, versions, every raw value), ``compare-STAMP.md`` (also
printed) and, with ``pip install 'tfhub-exporter[bench]'`` (matplotlib), a PNG of the ours / anchor
ratios and one of export time and peak RSS against parameter count (and export time against
the graph's size, ``saved_model.pb``), to ``--results_dir``. Progress goes to stderr. A default
run takes about an hour on 2 cores, plus jax_export's 6 processes a backbone (MobileNetV2
and ViT-B/16: 8 minutes together); ``--backbones=all`` is for a person, not CI (add
``--figures=export --exporters=ours`` for the export survey of all 40 backbones: 30 minutes).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import harness
from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
# Run from a checkout, measure that checkout (this process and every child), not whatever
# copy of exporter happens to be installed.
_CHECKOUT = (REPO / "exporter" / "__init__.py").is_file()
if _CHECKOUT and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FIGURE_GROUPS = ("export", "load", "latency", "finetune", "jax_export")
# Seconds between samples of a jax_export process tree's summed RSS (launcher.TREE_RSS_METHOD).
TREE_SAMPLE_S = 0.05
# The keras-hub ViT-B/16 (workers.KERAS_HUB) is measured against model.export of its classifier.
DEFAULT_BACKBONES = ["mobilenet_v2", "resnet50", "efficientnet_v2_s", "keras_hub_vit_b16"]

_BACKBONES = flags.DEFINE_list(
    "backbones",
    DEFAULT_BACKBONES,
    "Comma-separated backbone names: registered ones and keras-hub ones (keras_hub_vit_b16), "
    "or 'all' for every registered one (hours: for a person to run, not CI).",
)
_FIGURES = flags.DEFINE_list(
    "figures",
    list(FIGURE_GROUPS),
    f"Which figures to measure: {', '.join(FIGURE_GROUPS)} "
    "(export includes the sizes on disk, load the first call; jax_export is the export "
    "from a KERAS_BACKEND=jax process, ours' in-memory export against Keras 3's "
    "model.export there, whatever --exporters says).",
)
_EXPORTERS = flags.DEFINE_list(
    "exporters",
    list(harness.EXPORTERS),
    "Exporters compared in the export and load figures: "
    + ", ".join(f"{k} ({v})" for k, v in harness.EXPORTERS.items())
    + ".",
)
_REPEATS = flags.DEFINE_integer(
    "repeats",
    3,
    "Fresh processes per figure and variant; the report gives their median, min "
    "and max (below 3: a smoke run, marked so in the report).",
    lower_bound=1,
)
_SIZE = flags.DEFINE_integer(
    "size",
    224,
    "Image height and width for load, latency and fine-tuning (a fixed-size "
    "backbone uses its own; a smaller one than the backbone accepts, its minimum).",
    lower_bound=1,
)
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "Batch sizes of the latency figure.")
_CALLS = flags.DEFINE_integer(
    "calls",
    10,
    "Timed calls per latency process (its median is that process's value).",
    lower_bound=1,
)
_WARMUP = flags.DEFINE_integer(
    "warmup", 2, "Untimed calls before the timed ones in each latency process.", lower_bound=1
)
_FINETUNE_BATCH = flags.DEFINE_integer(
    "finetune_batch", 16, "Images per fine-tune step.", lower_bound=1
)
_FINETUNE_STEPS = flags.DEFINE_integer(
    "finetune_steps",
    5,
    "Timed steps per fine-tune process, after the first (tracing) one, which is reported apart.",
    lower_bound=1,
)
_RESULTS_DIR = flags.DEFINE_string(
    "results_dir",
    str(REPO / "benchmarks" / "results"),
    "Where the JSON, Markdown and PNG files go (named compare-STAMP.*).",
)
_SCRATCH = flags.DEFINE_string(
    "scratch",
    None,
    "Directory for exports, weights files and logs (default: a new temporary "
    "directory). Each backbone's part is removed once it is measured, unless --keep_scratch.",
)
_KEEP_SCRATCH = flags.DEFINE_bool(
    "keep_scratch", False, "Keep the exports and the children's logs."
)
_TIMEOUT = flags.DEFINE_integer(
    "timeout",
    3600,
    "Seconds before a child process is killed (its figure is then missing).",
    lower_bound=1,
)
_WORKER = flags.DEFINE_enum(
    "worker",
    None,
    list(harness.TASKS),
    "Internal: run one measurement task in this process "
    "(the harness starts these as children), with --spec.",
)
_SPEC = flags.DEFINE_string("spec", None, "Internal: the JSON spec file of a --worker task.")


@dataclasses.dataclass
class Job:
    """One child process: a measurement (``repeat`` set) or setup for one (``repeat`` None)."""

    backbone: str
    group: str  # prepare, setup, export, load, latency, finetune or jax_export
    variant: str
    repeat: int | None
    task: str | None = None  # A worker task; None runs ``argv`` (our export CLI).
    spec: dict = dataclasses.field(default_factory=dict)
    argv: list[str] = dataclasses.field(default_factory=list)
    out: Path | None = None  # An export directory it writes (cleared first).
    needs: tuple[Path, ...] = ()  # Files an earlier job must have made.
    env: dict = dataclasses.field(default_factory=dict)  # Set in its environment.

    def describe(self) -> str:
        what = f"{self.backbone} {self.group} {self.variant}"
        if "batch" in self.spec and self.group == "latency":
            what += f" batch {self.spec['batch']}"
        if self.repeat is None:
            return f"{what} (setup, untimed)"
        return f"{what} repeat {self.repeat + 1}/{_REPEATS.value}"


def _image_size(facts, notes: list[str]) -> int:
    size = _SIZE.value
    if facts.fixed_size:
        if size != facts.native_size:
            notes.append(
                f"{facts.name} only works at {facts.native_size}x{facts.native_size}: "
                "measured there."
            )
        return facts.native_size
    if size < facts.min_size:
        notes.append(
            f"{facts.name} needs at least {facts.min_size}x{facts.min_size}: measured there."
        )
        return facts.min_size
    return size


def _ours_cli(name: str, out: Path, weights: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exporter.feature_vector",
        f"--backbone={name}",
        f"--weights={weights}",
        f"--out={out}",
    ]


def plan_backbone(
    facts, scratch: Path, groups: list[str], exporters: list[str], batches: list[int],
    notes: list[str],
) -> list[Job]:  # fmt: skip
    """Every child process one backbone needs, in the order they run."""
    # One function: the figure groups' jobs depend on each other's outputs, read in run order.
    name, repeats = facts.name, range(_REPEATS.value)
    size = _image_size(facts, notes)
    fixed = facts.native_size if facts.fixed_size else None
    exports = {e: scratch / f"export-{e}" for e in exporters}
    weights_file = scratch / "weights.weights.h5"
    ours_weights = scratch / "export-ours-weights"  # Ours, exported from weights_file.
    ours_ready = ours_weights / "saved_model.pb"
    needs_weights = "latency" in groups or "finetune" in groups
    jobs = []

    def add(group: str, variant: str, repeat: int | None, **kwargs) -> None:
        jobs.append(Job(name, group, variant, repeat, **kwargs))

    def add_export(exporter: str, repeat: int | None, group: str) -> None:
        out = exports[exporter]
        if exporter == "ours":
            add(group, exporter, repeat, argv=_ours_cli(name, out, "none"), out=out)
            return
        spec = {"constructor": facts.build.__name__, "input_shape": [fixed, fixed, 3],
                "out": str(out)}  # fmt: skip
        add(group, exporter, repeat, task=f"export_{exporter}", spec=spec, out=out)

    if needs_weights or ("ours" in exporters and "export" in groups):
        # The Keras 3 model ours exports: its raw weight bytes, and its weights file.
        spec = {"backbone": name, "weights_file": str(weights_file) if needs_weights else None}
        add("prepare", "keras3 model", None, task="prepare", spec=spec)
    if "export" in groups:
        for r in repeats:
            for e in harness.rotated(exporters, r):
                add_export(e, r, "export")
    elif "load" in groups:
        for e in exporters:
            add_export(e, None, "setup")
    if "load" in groups:
        call = {"ours": "__call__", "keras3": "serve", "tf_keras": "__call__"}
        for r in repeats:
            for e in harness.rotated(exporters, r):
                spec = {"path": str(exports[e]), "call": call[e], "size": size}
                add("load", e, r, task="load", spec=spec, needs=(exports[e] / "saved_model.pb",))
    if needs_weights:
        argv = _ours_cli(name, ours_weights, str(weights_file))
        add("setup", "ours --weights=FILE", None, argv=argv, out=ours_weights,
            needs=(weights_file,))  # fmt: skip
    if "latency" in groups:
        for r in repeats:
            for batch in batches:
                for v in harness.rotated(list(harness.LATENCY_VARIANTS), r):
                    spec = {"variant": v, "backbone": name, "path": str(ours_weights),
                            "weights_file": str(weights_file), "batch": batch, "size": size,
                            "calls": _CALLS.value, "warmup": _WARMUP.value}  # fmt: skip
                    needs = (weights_file,) if v == "keras_function" else (ours_ready,)
                    add("latency", v, r, task="latency", spec=spec, needs=needs)
    if "finetune" in groups:
        for r in repeats:
            for v in harness.rotated(list(harness.FINETUNE_VARIANTS), r):
                spec = {"variant": v, "path": str(ours_weights), "size": size,
                        "batch": _FINETUNE_BATCH.value, "steps": _FINETUNE_STEPS.value,
                        "constructor": facts.build.__name__,
                        "preprocessing": facts.preprocessing}  # fmt: skip
                needs = (ours_ready,) if v == "hub_layer" else ()
                add("finetune", v, r, task="finetune", spec=spec, needs=needs)
    if "jax_export" in groups:
        if facts.fixed_size:
            notes.append(
                f"{name}: no jax_export figures (they build the model at free sizes, "
                f"and {name} only works at {facts.native_size}x{facts.native_size})."
            )
        else:
            model = {
                "constructor": facts.build.__name__,
                "preprocessing": facts.preprocessing,
                "native_size": facts.native_size,
                "min_size": facts.min_size,
            }
            jobs += plan_jax(name, model, scratch)
    return jobs


def plan_jax(name: str, model: dict, scratch: Path) -> list[Job]:
    """The jax_export group of one model: ours and Keras 3's export, each in a fresh
    ``KERAS_BACKEND=jax`` process, ``--repeats`` times, interleaved.

    ``model`` is the worker's description of it: a keras.applications ``constructor`` with
    its ``preprocessing``, ``native_size`` and ``min_size``, or a keras-hub ``config``.
    """
    jobs = []
    for r in range(_REPEATS.value):
        for variant in harness.rotated(list(harness.JAX_EXPORTERS), r):
            out = scratch / f"export-{variant}"
            spec = {**model, "exporter": variant.removesuffix("_jax"), "out": str(out)}
            jobs.append(Job(name, "jax_export", variant, r, task="export_jax", spec=spec,
                            out=out, env={"KERAS_BACKEND": "jax"}))  # fmt: skip
    return jobs


def plan_keras_hub(
    name: str, scratch: Path, groups: list[str], exporters: list[str], notes: list[str]
) -> list[Job]:
    """A keras-hub backbone (``workers.KERAS_HUB``): the export figures of its classifier.

    Both start from one preset folder: ours is the classification CLI on it (the task's own
    head), Keras 3's is ``model.export`` of the task ``ImageClassifier.from_preset`` loads.
    """
    left_out = [g for g in groups if g not in ("export", "jax_export")]
    left_out += [e for e in exporters if e == "tf_keras"]
    if left_out:
        notes.append(f"{name}: only export figures, for ours and keras3 ({', '.join(left_out)} "
                     "left out: they are measured on keras.applications backbones).")  # fmt: skip
    jax = plan_jax(name, {"config": harness.KERAS_HUB[name]}, scratch / "jax") if (
        "jax_export" in groups) else []  # fmt: skip
    if jax:
        notes.append(f"{name}: jax_export builds the same random ImageClassifier in the JAX "
                     "process; ours exports its feature vector (export_feature_vector(model)), "
                     "Keras 3 the classifier (model.export).")  # fmt: skip
    if "export" not in groups:
        return jax
    notes.append(f"{name}: ours is python -m exporter.classification --backbone=PRESET (the "
                 "preset's own ImageClassifier head), Keras 3's is model.export of the same "
                 "ImageClassifier loaded from the same preset folder.")  # fmt: skip
    preset = scratch / "preset"
    spec = {"config": harness.KERAS_HUB[name], "preset": str(preset)}
    jobs = [Job(name, "prepare", "keras-hub preset", None, task="prepare_keras_hub", spec=spec)]
    for r in range(_REPEATS.value):
        for e in harness.rotated([e for e in exporters if e != "tf_keras"], r):
            out = scratch / f"export-{e}"
            if e == "ours":
                argv = [sys.executable, "-m", "exporter.classification", f"--backbone={preset}",
                        f"--out={out}"]  # fmt: skip
                jobs.append(Job(name, "export", e, r, argv=argv, out=out, needs=(preset,)))
            else:
                spec = {"preset": str(preset), "out": str(out)}
                jobs.append(Job(name, "export", e, r, task="export_keras3_keras_hub", spec=spec,
                                out=out, needs=(preset,)))  # fmt: skip
    return jobs + jax


class Harness:
    """Runs the planned children one at a time and turns their results into figures."""

    def __init__(self, total: int, env: dict, notes: list[str]):
        self.total, self.env, self.notes = total, env, notes
        self.done = 0
        self.start = time.perf_counter()
        self.measurements: list[dict] = []
        self.runs: list[dict] = []
        self.backbones: dict[str, dict] = {}
        self.parity: list[dict] = []
        self._outputs: dict[tuple, list[float]] = {}

    def _say(self, text: str) -> None:
        elapsed = int(time.perf_counter() - self.start)
        clock = f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
        print(f"[{self.done:>3}/{self.total} {clock}] {text}", file=sys.stderr, flush=True)

    def _record(self, job: Job, figure: str, value: float, **extra) -> None:
        self.measurements.append(
            {
                "backbone": job.backbone,
                "figure": figure,
                "variant": job.variant,
                "repeat": job.repeat,
                "value": value,
                **extra,
            }
        )

    def run(self, job: Job, scratch: Path) -> None:
        self.done += 1
        missing = [str(p) for p in job.needs if not p.exists()]
        if missing:
            self.notes.append(
                f"{job.describe()}: not run, {', '.join(missing)} is missing "
                "(an earlier step failed)."
            )
            self._say(f"{job.describe()}: skipped, needs {', '.join(missing)}")
            return
        if job.out is not None:
            shutil.rmtree(job.out, ignore_errors=True)
        key = f"{self.done:04d}-{job.group}-{job.variant.split()[0]}"
        result_path = scratch / "results" / f"{key}.json"
        argv = job.argv
        if job.task:
            spec_path = scratch / "specs" / f"{key}.json"
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            result_path.parent.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(json.dumps({**job.spec, "result": str(result_path)}))
            argv = [
                sys.executable,
                str(Path(__file__).resolve()),
                f"--worker={job.task}",
                f"--spec={spec_path}",
            ]
        self._say(f"{job.describe()} ...")
        child = harness.run_child(
            argv, scratch / "logs" / f"{key}.log", cwd=scratch, env={**self.env, **job.env},
            timeout=_TIMEOUT.value,
            sample_tree=TREE_SAMPLE_S if job.group == "jax_export" else None,
        )  # fmt: skip
        record = {
            "backbone": job.backbone,
            "group": job.group,
            "variant": job.variant,
            "repeat": job.repeat,
            "returncode": child.returncode,
            "wall_s": child.wall_s,
            "cpu_s": child.cpu_s,
            "peak_rss_mb": child.peak_rss_bytes / harness.MB,
        }
        if child.tree_peak_rss_bytes is not None:
            record["tree_rss_mb"] = child.tree_peak_rss_bytes / harness.MB
        self.runs.append(record)
        if child.returncode != 0:
            tail = child.tail()
            last = tail.splitlines()[-1] if tail else "no output"
            if child.returncode == harness.SKIPPED_EXIT:
                why = last.removeprefix("skipped: ")
                self.notes.append(f"{job.describe()}: skipped, {why}.")
                self._say(f"  skipped ({why})")
            else:
                cause = "timed out" if child.timed_out else f"exit {child.returncode}"
                record["error"] = tail
                self.notes.append(f"{job.describe()}: failed ({cause}): {last}")
                self._say(f"  FAILED ({cause}) after {child.wall_s:.1f} s:\n{tail}")
            return
        result = json.loads(result_path.read_text()) if job.task else {}
        record["result"] = result
        self._say(f"  {self._figures(job, child, result)} ({child.wall_s:.1f} s)")

    def _figures(self, job: Job, child: harness.ChildRun, result: dict) -> str:
        """Record the figures of one finished child; return them in words."""
        info = self.backbones.setdefault(job.backbone, {})
        if job.group == "prepare":
            info.update(result)
            return (
                f"{result['params'] / 1e6:.1f} M parameters, "
                f"{result['weight_bytes'] / harness.MB:.1f} MB of weights"
            )
        if job.group == "setup":
            return "ready"
        if job.group in ("export", "jax_export"):
            rss = child.peak_rss_bytes / harness.MB
            self._record(job, "export_wall_s", child.wall_s)
            self._record(job, "export_peak_rss_mb", rss)
            self._record(job, "export_cpu_s", child.cpu_s)
            sizes = harness.export_sizes(job.out)
            self._record(job, "variables_mb", sizes["variables_bytes"] / harness.MB)
            self._record(job, "saved_model_pb_mb", sizes["saved_model_pb_bytes"] / harness.MB)
            for key in ("params", "weight_bytes"):  # Where no prepare step ran.
                if key in result:
                    info.setdefault(key, result[key])
            weights = result.get("weight_bytes", info.get("weight_bytes"))
            text = (
                f"wall {child.wall_s:.1f} s, peak RSS {rss:.0f} MB, variables/ "
                f"{sizes['variables_bytes'] / harness.MB:.1f} MB"
            )
            if weights:
                ratio = sizes["variables_bytes"] / weights
                self._record(job, "variables_ratio", ratio)
                text += f" ({ratio:.2f}x the weights)"
            if job.group == "jax_export":
                tree = child.tree_peak_rss_bytes / harness.MB
                self._record(job, "export_tree_rss_mb", tree)
                self._record(job, "export_call_s", result["export_call_s"],
                             import_s=result["import_s"], build_s=result["build_s"],
                             stages=result["stages"])  # fmt: skip
                text += (
                    f"; tree RSS {tree:.0f} MB; import {result['import_s']:.1f} s, build "
                    f"{result['build_s']:.1f} s, export call {result['export_call_s']:.1f} s"
                )
            return text
        if job.group == "load":
            self._record(job, "load_s", result["load_s"])
            self._record(job, "first_call_ms", 1e3 * result["first_call_s"])
            return (
                f"load {result['load_s']:.2f} s, first call {1e3 * result['first_call_s']:.0f} ms"
            )
        if job.group == "latency":
            batch = job.spec["batch"]
            median_ms = 1e3 * result["median_s"]
            self._record(
                job,
                harness.latency_figure(batch),
                median_ms,
                calls_ms=[1e3 * t for t in result["times_s"]],
                first_call_ms=1e3 * result["first_s"],
            )
            if batch == 1 and job.repeat == 0:
                self._outputs[(job.backbone, job.variant)] = result["output_row0"]
            return f"median {median_ms:.1f} ms over {len(result['times_s'])} calls"
        if job.group == "finetune":
            self._record(job, "finetune_step_s", result["median_s"], steps_s=result["times_s"])
            self._record(job, "finetune_first_step_s", result["first_step_s"])
            return (
                f"median step {result['median_s']:.2f} s, first step {result['first_step_s']:.1f} s"
            )
        raise ValueError(f"Unknown group {job.group!r}.")

    def compare_outputs(self, backbone: str) -> None:
        """Ours against the in-memory Keras model on the same image: the same weights?"""
        anchor = self._outputs.get((backbone, "keras_function"))
        if anchor is None:
            return
        scale = max(abs(x) for x in anchor) or 1.0
        for variant in ("ours_call", "ours_serving_default"):
            ours = self._outputs.get((backbone, variant))
            if ours is not None:
                diff = max(abs(a - b) for a, b in zip(ours, anchor, strict=True))
                self.parity.append(
                    {
                        "backbone": backbone,
                        "variant": variant,
                        "max_abs_diff": diff / scale,
                        "scale": scale,
                    }
                )


def _check_list(flag, values: list[str], known) -> None:
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        sys.exit(
            f"error: --{flag.name}: unknown {', '.join(map(repr, unknown)) or 'empty list'}"
            f"; known: {', '.join(known)}."
        )


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _CHECKOUT:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def main(argv):
    """Run one worker (``--worker``), or plan, run and report every figure asked for."""
    # Long but flat: check the flags, plan the children, run them, write the report.
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; flags take the form --name=value.")
    if _WORKER.value:
        if not _SPEC.value:
            sys.exit("error: --worker needs --spec.")
        harness.run_worker(_WORKER.value, _SPEC.value)
        return
    _check_list(_FIGURES, _FIGURES.value, FIGURE_GROUPS)
    _check_list(_EXPORTERS, _EXPORTERS.value, harness.EXPORTERS)
    try:
        batches = [int(b) for b in _BATCHES.value]
    except ValueError:
        sys.exit(f"error: --batches: expected positive integers, received {_BATCHES.value}.")
    if not batches or min(batches) < 1:
        sys.exit(f"error: --batches: expected positive integers, received {_BATCHES.value}.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import exporter  # TensorFlow: after the flags are known to be sane.
    from exporter.version import VERSION

    try:
        names = harness.resolve_backbones(
            _BACKBONES.value, exporter.list_backbones(), extra=list(harness.KERAS_HUB)
        )
    except ValueError as error:
        sys.exit(f"error: --backbones: {error}")
    groups = [g for g in FIGURE_GROUPS if g in _FIGURES.value]
    exporters = [e for e in harness.EXPORTERS if e in _EXPORTERS.value]
    notes: list[str] = []
    for module, needed_by in (("tf_keras", "tf_keras"), ("tensorflow_hub", None)):
        if importlib.util.find_spec(module) is None:
            notes.append(
                f"{module} is not installed: its comparisons are left out (pip install '.[test]')."
            )
            if needed_by in exporters:
                exporters.remove(needed_by)
            if "finetune" in groups:
                groups.remove("finetune")
    if "export" in groups and "ours" in exporters:
        notes.append("Ours' export time includes what the CLI always does after saving: a "
                     "reload, the parity check against the in-memory model and the conformance "
                     "rules; the anchors only save.")  # fmt: skip
    machine = harness.machine_info(REPO, VERSION)
    machine["exporter_path"] = str(Path(exporter.__file__).parent)
    config = {
        "backbones": names,
        "figures": groups,
        "exporters": exporters,
        "repeats": _REPEATS.value,
        "size": _SIZE.value,
        "batches": batches,
        "calls": _CALLS.value,
        "warmup": _WARMUP.value,
        "finetune_batch": _FINETUNE_BATCH.value,
        "finetune_steps": _FINETUNE_STEPS.value,
        "timeout_s": _TIMEOUT.value,
        "tree_sample_s": TREE_SAMPLE_S,
        "python": sys.executable,
        "command": " ".join(sys.argv),
    }
    scratch_root = Path(_SCRATCH.value or tempfile.mkdtemp(prefix="exporter-compare-"))
    scratch_root.mkdir(parents=True, exist_ok=True)
    plans = [(name, scratch_root / name) for name in names]
    jobs = {
        name: plan_keras_hub(name, where, groups, exporters, notes)
        if name in harness.KERAS_HUB
        else plan_backbone(exporter.get_backbone(name), where, groups, exporters, batches, notes)
        for name, where in plans
    }
    total = sum(map(len, jobs.values()))
    print(
        f"compare: {len(names)} backbone(s), figures {', '.join(groups)}, {total} child "
        f"processes; scratch {scratch_root}",
        file=sys.stderr,
        flush=True,
    )
    runner = Harness(total, _child_env(), notes)
    interrupted = False
    try:
        for name, where in plans:
            where.mkdir(parents=True, exist_ok=True)
            for job in jobs[name]:
                runner.run(job, where)
            runner.compare_outputs(name)
            if not _KEEP_SCRATCH.value:
                shutil.rmtree(where, ignore_errors=True)
    except KeyboardInterrupt:
        interrupted = True
        notes.append(f"Interrupted after {runner.done} of {total} child processes.")
    finally:
        if not _KEEP_SCRATCH.value and not _SCRATCH.value:
            shutil.rmtree(scratch_root, ignore_errors=True)
    machine["load_average_end"] = harness.load_average()
    machine["duration_s"] = round(time.perf_counter() - runner.start, 1)
    report = harness.build_report(
        machine, config, runner.backbones, runner.measurements, runner.runs, notes, runner.parity
    )
    paths = harness.write_report(report, Path(_RESULTS_DIR.value))
    print(harness.markdown(report))
    for kind, path in paths.items():
        print(f"compare: wrote {kind} {path}", file=sys.stderr)
    print(f"compare: done in {machine['duration_s']:.0f} s", file=sys.stderr)
    if interrupted:
        sys.exit(130)


if __name__ == "__main__":
    app.run(main)
