"""Where the time of one call or one fine-tune step goes: ours against its anchor, by op type.

Usage:
    python benchmarks/op_profile.py [--backbone=mobilenet_v2] [--mode=latency|finetune]
        [--batch=16] [--size=224] [--calls=10] [--rounds=3] [--profiled_calls=3] [--top=15]
        [--json=PATH]

The comparisons are ``compare.py``'s, in one process so that both share every moment's
conditions:

- ``latency``: the reloaded export's ``__call__`` against the in-memory Keras 3 model of the
  same weights, with the same preprocessing, in a ``tf.function``.
- ``finetune``: one ``train_on_batch`` step of tf-keras + ``hub.KerasLayer(ours,
  trainable=True)`` + a Dense head, against the tf_keras.applications backbone trained
  natively with the same preprocessing and head.

Each round times ``--calls`` calls of each (rotated: A B, then B A), recording per call its
wall time, this process's CPU time, and the host's busy, idle and stolen CPU time
(``/proc/stat``; steal is time a hypervisor gave this machine's CPUs to others). Then each
runs ``--profiled_calls`` more under TensorFlow's profiler, whose ``framework_op_stats``
gives every op's self time; they are summed by op type and divided by the calls. Prints
the timing summary and a table of the op types that differ most, and writes everything as
JSON with ``--json``. Random weights; nothing is downloaded. Our export is made by the
CLI, as users make it.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import harness  # noqa: E402
from absl import app, flags  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if (REPO / "exporter" / "__init__.py").is_file() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # Measure this checkout, as compare.py does.

if __name__ == "__main__":  # Defined only when run: tests import this module beside others.
    _BACKBONE = flags.DEFINE_string("backbone", "mobilenet_v2", "A registered backbone name.")
    _MODE = flags.DEFINE_enum(
        "mode", "latency", ["latency", "finetune"], "Profile inference calls or fine-tune steps."
    )
    _BATCH = flags.DEFINE_integer("batch", 16, "Images per call or step.", lower_bound=1)
    _SIZE = flags.DEFINE_integer("size", 224, "Image height and width.", lower_bound=32)
    _CALLS = flags.DEFINE_integer("calls", 10, "Timed calls of each per round.", lower_bound=1)
    _ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds, the order rotated.", lower_bound=1)
    _WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls of each first.", lower_bound=1)
    _PROFILED = flags.DEFINE_integer(
        "profiled_calls", 3, "Calls of each profiled after the timed rounds.", lower_bound=1
    )
    _TOP = flags.DEFINE_integer("top", 15, "Op types listed (those differing most).", lower_bound=1)
    _JSON = flags.DEFINE_string("json", None, "Also write the figures here as JSON.")

IDLE = "IDLE"  # framework_op_stats' row for the time no op ran.
USER_HZ = os.sysconf("SC_CLK_TCK")


def host_cpu_s() -> dict:
    """The host's CPU time so far, all CPUs together, in seconds: busy, idle and stolen."""
    with open("/proc/stat") as stat:
        # cpu user nice system idle iowait irq softirq steal ...
        ticks = [int(t) for t in stat.readline().split()[1:9]]
    ticks += [0] * (8 - len(ticks))
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    return {
        "host_busy_s": (user + nice + system + irq + softirq) / USER_HZ,
        "host_idle_s": (idle + iowait) / USER_HZ,
        "steal_s": steal / USER_HZ,
    }


def timed(run, calls: int) -> list[dict]:
    """Each call's wall time, this process's CPU time, and the host's busy, idle and stolen
    CPU time meanwhile (busy beyond this process's CPU is other processes')."""
    out = []
    for _ in range(calls):
        wall, cpu, host = time.perf_counter(), time.process_time(), host_cpu_s()
        run()
        after = host_cpu_s()
        out.append(
            {
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                **{key: after[key] - host[key] for key in host},
            }
        )
    return out


def profiled(run, calls: int, logdir: Path) -> tuple[Path, list[float]]:
    """``calls`` calls of ``run`` under TensorFlow's profiler: its ``.xplane.pb`` file and
    each call's wall time (seconds)."""
    import tensorflow as tf

    walls = []
    tf.profiler.experimental.start(str(logdir))
    try:
        for _ in range(calls):
            start = time.perf_counter()
            run()
            walls.append(time.perf_counter() - start)
    finally:
        tf.profiler.experimental.stop()
    [xspace] = sorted(logdir.rglob("*.xplane.pb"))[-1:]
    return xspace, walls


def _tool(xspace: Path, tool: str):
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    data, ok = plugin.xspace_to_tools_data([str(xspace)], tool, {})
    if not ok:
        raise RuntimeError(f"the profiler's {tool} failed: {data[:300]!r}")
    return json.loads(data)


def op_stats(xspace: Path, calls: int) -> dict[str, dict]:
    """Self time and count per op type per call, from the profiler's framework_op_stats."""
    [table] = _tool(xspace, "framework_op_stats")[:1]
    columns = [column["id"] for column in table["cols"]]
    by_type: dict[str, dict] = collections.defaultdict(lambda: {"self_ms": 0.0, "count": 0.0})
    for row in table["rows"]:
        cell = dict(zip(columns, (c.get("v") for c in row["c"]), strict=True))
        entry = by_type[cell["type"]]
        entry["self_ms"] += cell["total_self_time"] / 1000 / calls
        entry["count"] += cell["occurrences"] / calls
    return dict(by_type)


def op_times(run, calls: int, logdir: Path) -> dict[str, dict]:
    """Self time and count per op type per call of ``run``, profiled ``calls`` times."""
    return op_stats(profiled(run, calls, logdir)[0], calls)


# Host events of the trace: the Python thread inside TensorFlow's C API (a tf.function's
# call, an eager op), and deleting tensor handles (freeing a step's tensors).
_CALLS_INTO_TF = ("TFE_Py_ExecuteCancelable", "TFE_Py_FastPathExecute_C")
_DELETES = "TFE_DeleteTensorHandle"


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals (microseconds), in ms."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total / 1000


def host_times(xspace: Path, walls: list[float]) -> dict[str, float]:
    """Where a call's wall time goes, per call, from the profiler's trace (every event of
    every thread): in TensorFlow's C API from Python (``in_tf_ms``; the rest of the wall
    time is Python's, ``python_ms``), op kernels run (``ops`` and their summed
    ``op_ms``), executor steps (``executor_steps``: a step schedules ready ops), any
    thread running an op (``op_busy_ms``: the union over threads), and deleting tensor
    handles (``delete_ms``)."""
    events = [e for e in _tool(xspace, "trace_viewer@")["traceEvents"] if e.get("ph") == "X"]
    calls = len(walls)
    span = [(e["ts"], e["ts"] + e.get("dur", 0.0)) for e in events]
    into_tf = [s for e, s in zip(events, span, strict=True) if e["name"] in _CALLS_INTO_TF]
    ops = [s for e, s in zip(events, span, strict=True) if "is_eager" in e.get("args", {})]
    wall_ms = 1000 * sum(walls) / calls
    in_tf_ms = _union_ms(into_tf) / calls
    return {
        "wall_ms": wall_ms,
        "in_tf_ms": in_tf_ms,
        "python_ms": wall_ms - in_tf_ms,
        "ops": len(ops) / calls,
        "op_ms": sum(b - a for a, b in ops) / 1000 / calls,
        "op_busy_ms": _union_ms(ops) / calls,
        "executor_steps": sum(e["name"] == "ExecutorState::Process" for e in events) / calls,
        "delete_ms": sum(b - a for e, (a, b) in zip(events, span, strict=True)
                         if e["name"] == _DELETES) / 1000 / calls,
    }  # fmt: skip


def latency_variants(name: str, weights: Path, path: Path, batch: int, size: int):
    import numpy as np
    import tensorflow as tf

    import exporter
    from exporter.making.preprocessing import preprocess

    images = tf.constant(harness._images(batch, size))
    obj = tf.saved_model.load(str(path))
    model = exporter.load_backbone(name, weights=str(weights), pooling="avg")
    mode = exporter.get_backbone(name).preprocessing
    keras_function = tf.function(lambda x: model(preprocess(x, mode), training=False))
    ours = np.asarray(obj(images))
    anchor = np.asarray(keras_function(images))
    difference = float(np.max(np.abs(ours - anchor)))
    print(f"same weights: largest difference {difference:.2g} of {np.max(np.abs(anchor)):.2g}")
    return {
        "ours": lambda: np.asarray(obj(images)),
        "keras_function": lambda: np.asarray(keras_function(images)),
    }


def finetune_variants(name: str, path: Path, batch: int, size: int):
    import numpy as np

    import exporter

    facts = exporter.get_backbone(name)
    classes = 5
    images = harness._images(batch, size)
    labels = np.random.default_rng(1).integers(0, classes, batch)
    hub_model = harness.hub_trainer(str(path), size, classes)
    native = harness.tf_keras_trainer(facts.build.__name__, facts.preprocessing, size, classes)
    return {
        "hub_layer": lambda: hub_model.train_on_batch(images, labels),
        "tf_keras_native": lambda: native.train_on_batch(images, labels),
    }


def export_ours(name: str, scratch: Path) -> tuple[Path, Path]:
    """A weights file of the pooled Keras model (as compare.py makes it), and our export of
    it by the CLI."""
    import keras

    weights = scratch / f"{name}.weights.h5"
    harness.TASKS["prepare"]({"backbone": name, "weights_file": str(weights)})
    keras.backend.clear_session()
    path = scratch / "ours"
    command = [
        sys.executable, "-m", "exporter.feature_vector", f"--backbone={name}",
        f"--weights={weights}", f"--out={path}",
    ]  # fmt: skip
    paths = [str(REPO), os.environ.get("PYTHONPATH")]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    subprocess.run(command, check=True, env=environ)
    return weights, path


def summary(calls: list[dict]) -> dict:
    return {key: statistics.median(c[key] for c in calls) for key in calls[0]}


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; flags take the form --name=value.")
    import exporter

    name, batch, size = _BACKBONE.value, _BATCH.value, _SIZE.value
    if name not in exporter.list_backbones():
        sys.exit(f"error: --backbone: expected a registered name, received {name!r}.")
    with tempfile.TemporaryDirectory(prefix="exporter-op-profile-") as scratch:
        scratch = Path(scratch)
        print(f"op_profile: exporting {name} ...", file=sys.stderr, flush=True)
        weights, path = export_ours(name, scratch)
        if _MODE.value == "latency":
            variants = latency_variants(name, weights, path, batch, size)
        else:
            variants = finetune_variants(name, path, batch, size)
        names = list(variants)
        for variant in names:
            for _ in range(_WARMUP.value):
                variants[variant]()
        calls: dict[str, list[dict]] = {v: [] for v in names}
        for round_ in range(_ROUNDS.value):
            for variant in harness.rotated(names, round_):
                print(f"op_profile: round {round_ + 1}, {variant}", file=sys.stderr, flush=True)
                calls[variant] += timed(variants[variant], _CALLS.value)
        ops, host = {}, {}
        for v in names:
            xspace, walls = profiled(variants[v], _PROFILED.value, scratch / f"profile-{v}")
            ops[v], host[v] = op_stats(xspace, len(walls)), host_times(xspace, walls)
    report = {
        "backbone": name, "mode": _MODE.value, "batch": batch, "size": size,
        "variants": names, "calls": calls, "median": {v: summary(calls[v]) for v in names},
        "op_types": ops, "host": host, "machine": harness.machine_info(REPO),
    }  # fmt: skip
    print(render(report, _TOP.value))
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(report, indent=1))
        print(f"op_profile: wrote {_JSON.value}", file=sys.stderr)


def render(report: dict, top: int) -> str:
    ours, anchor = report["variants"]
    median = report["median"]
    lines = [
        f"{report['backbone']}, {report['mode']}, batch {report['batch']} at {report['size']} px",
        "",
        "| | wall per call | CPU per call | host busy | host idle | host steal | calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in report["variants"]:
        m, n = median[variant], len(report["calls"][variant])
        walls = [c["wall_s"] for c in report["calls"][variant]]
        lines.append(
            f"| {variant} | {1000 * m['wall_s']:.1f} ms [{1000 * min(walls):.1f}, "
            f"{1000 * max(walls):.1f}] | {1000 * m['cpu_s']:.1f} ms | "
            f"{1000 * m['host_busy_s']:.0f} ms | {1000 * m['host_idle_s']:.0f} ms | "
            f"{1000 * m['steal_s']:.0f} ms | {n} |"
        )
    ratio = median[ours]["wall_s"] / median[anchor]["wall_s"]
    cpu_ratio = median[ours]["cpu_s"] / median[anchor]["cpu_s"]
    lines += ["", f"ratio {ours} / {anchor}: wall {ratio:.3f}x, CPU {cpu_ratio:.3f}x", ""]
    # The profiler's "IDLE" row is time no op ran, not an op type: shown apart.
    a, b = (dict(report["op_types"][v]) for v in (ours, anchor))
    idle = [d.pop(IDLE, {"self_ms": 0.0})["self_ms"] for d in (a, b)]
    zero = {"self_ms": 0.0, "count": 0.0}
    types = sorted(
        set(a) | set(b), key=lambda t: -abs(a.get(t, zero)["self_ms"] - b.get(t, zero)["self_ms"])
    )
    lines += [
        f"| op type | {ours} ms | {anchor} ms | difference | {ours} ops | {anchor} ops |",
        "|---|---|---|---|---|---|",
    ]
    for kind in types[:top]:
        x, y = a.get(kind, zero), b.get(kind, zero)
        lines.append(
            f"| {kind} | {x['self_ms']:.1f} | {y['self_ms']:.1f} | "
            f"{x['self_ms'] - y['self_ms']:+.1f} | {x['count']:.0f} | {y['count']:.0f} |"
        )
    total_a = sum(v["self_ms"] for v in a.values())
    total_b = sum(v["self_ms"] for v in b.values())
    count_a = sum(v["count"] for v in a.values())
    count_b = sum(v["count"] for v in b.values())
    lines.append(
        f"| all op types | {total_a:.1f} | {total_b:.1f} | {total_a - total_b:+.1f} | "
        f"{count_a:.0f} | {count_b:.0f} |"
    )
    lines.append(f"| (idle, no op running) | {idle[0]:.1f} | {idle[1]:.1f} | | | |")
    lines.append("")
    lines.append("Op self times are per call, under the profiler; op time summed over threads.")
    if "host" in report:
        lines += ["", *host_table(report)]
    return "\n".join(lines)


HOST_ROWS = {
    "wall_ms": "wall time, profiled (ms)",
    "python_ms": "Python outside TensorFlow's C API (ms)",
    "in_tf_ms": "in TensorFlow's C API (ms)",
    "op_busy_ms": "some thread running an op (ms)",
    "op_ms": "op time, summed over threads (ms)",
    "ops": "ops run",
    "executor_steps": "executor steps",
    "delete_ms": "deleting tensor handles (ms)",
}


def host_table(report: dict) -> list[str]:
    """Per call, from the profiler's trace: where the wall time goes, ours against anchor."""
    ours, anchor = report["variants"]
    a, b = report["host"][ours], report["host"][anchor]
    lines = [f"| per call, from the trace | {ours} | {anchor} | difference |", "|---|---|---|---|"]
    for key, label in HOST_ROWS.items():
        lines.append(f"| {label} | {a[key]:.1f} | {b[key]:.1f} | {a[key] - b[key]:+.1f} |")
    return lines


if __name__ == "__main__":
    app.run(main)
