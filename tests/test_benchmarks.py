"""benchmarks/compare.py: its pieces on figures made here, and one real run of its workers.

Nothing here asserts on how fast anything is: the figures are checked for being there, of the
right kind and sane (positive, peak RSS above what importing TensorFlow takes).
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import harness  # noqa: E402

COMPARE = REPO / "benchmarks" / "compare.py"


def test_summarize_gives_median_min_max():
    assert harness.summarize([3, 1, 2]) == {
        "median": 2.0, "min": 1.0, "max": 3.0, "n": 3, "values": [3.0, 1.0, 2.0],
    }  # fmt: skip
    assert harness.summarize([4, 1, 2, 3])["median"] == 2.5
    with pytest.raises(ValueError):
        harness.summarize([])


def test_backbone_names_are_checked_and_all_means_every_one():
    known = ["mobilenet_v2", "resnet50", "vgg16"]
    assert harness.resolve_backbones(["all"], known) == known
    assert harness.resolve_backbones(["vgg16", "resnet50", "vgg16"], known) == ["vgg16", "resnet50"]
    with pytest.raises(ValueError, match="'resnet5'.*known: mobilenet_v2, resnet50, vgg16"):
        harness.resolve_backbones(["resnet50", "resnet5"], known)


def test_runs_are_interleaved_in_rotation():
    assert [harness.rotated("ABC", r) for r in range(4)] == [
        list("ABC"), list("BCA"), list("CAB"), list("ABC"),
    ]  # fmt: skip


def _measurements() -> list[dict]:
    figures = {
        ("export_wall_s", "ours"): [30.0, 36.0, 33.0],
        ("export_wall_s", "keras3"): [20.0, 22.0, 24.0],
        ("export_wall_s", "tf_keras"): [25.0, 26.0, 27.0],
        ("latency_b16_ms", "ours_call"): [900.0, 880.0, 910.0],
        ("latency_b16_ms", "keras_function"): [800.0, 850.0, 820.0],
        ("variables_mb", "ours"): [9.08, 9.08, 9.08],
    }
    return [
        {"backbone": "mobilenet_v2", "figure": f, "variant": v, "repeat": r, "value": x}
        for (f, v), values in figures.items()
        for r, x in enumerate(values)
    ]


def test_ratios_are_ours_over_each_anchor_of_the_medians():
    rows = harness.summaries(_measurements())
    found = {(q["figure"], q["anchor"]): q for q in harness.ratios(rows)}
    assert set(found) == {
        ("export_wall_s", "keras3"), ("export_wall_s", "tf_keras"),
        ("latency_b16_ms", "keras_function"),
    }  # fmt: skip
    keras3 = found[("export_wall_s", "keras3")]
    assert keras3["ratio"] == pytest.approx(33.0 / 22.0)
    assert (keras3["low"], keras3["high"]) == pytest.approx((30.0 / 24.0, 36.0 / 20.0))
    assert found[("latency_b16_ms", "keras_function")]["ratio"] == pytest.approx(900 / 820)


def test_report_is_written_as_json_markdown_and_charts(tmp_path, capsys):
    machine = harness.machine_info(REPO, "0.0.0")
    machine["load_average_end"] = harness.load_average()
    config = {"repeats": 3, "size": 224}
    backbones = {"mobilenet_v2": {"params": 2257984, "weight_bytes": 9052160}}
    report = harness.build_report(machine, config, backbones, _measurements(), [], ["a note"])
    paths = harness.write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert {"machine", "config", "rss_method", "summary", "ratios", "measurements"} <= set(data)
    assert data["machine"]["cpus"] >= 1 and data["machine"]["versions"]["tensorflow"]
    assert data["machine"]["date"].startswith(machine["stamp"][:4])
    assert paths["json"].name == f"compare-{machine['stamp']}.json"
    text = paths["markdown"].read_text()
    assert "| mobilenet_v2 | export wall time, whole process (s) |" in text
    assert "33.0 [30.0, 36.0]" in text and "1.50x [1.25, 1.80]" in text
    assert "| mobilenet_v2 | 2.3 | 33.0 / 22.0 / 26.0 |" in text  # The per-backbone table.
    assert "- a note" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install 'tfhub-exporter[bench]'" in capsys.readouterr().err
        assert set(paths) == {"json", "markdown"}
    else:
        for kind in ("ratios_png", "scaling_png"):
            assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_rss_is_each_childs_own(tmp_path):
    big = harness.run_child(
        [sys.executable, "-c", "data = b'x' * 300_000_000"], tmp_path / "big.log"
    )
    small = harness.run_child([sys.executable, "-c", "pass"], tmp_path / "small.log")
    failed = harness.run_child([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "f.log")
    assert (big.returncode, small.returncode, failed.returncode) == (0, 0, 3)
    assert big.peak_rss_bytes > 300e6
    # Measured after the big one: getrusage(RUSAGE_CHILDREN) would still say 300 MB here.
    assert small.peak_rss_bytes < 100e6
    assert big.wall_s > 0 and big.cpu_s >= 0


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_an_export_run_through_the_harness(tmp_path):
    """The smallest real run: one Keras 3 export of MobileNetV2 in a worker process."""
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(COMPARE), "--backbones=mobilenet_v2", "--figures=export",
         "--exporters=keras3", "--repeats=1", f"--results_dir={results}",
         f"--scratch={tmp_path / 'scratch'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mobilenet_v2 export keras3 repeat 1/1 ..." in done.stderr
    [path] = results.glob("compare-*.json")
    data = json.loads(path.read_text())
    assert data["config"]["backbones"] == ["mobilenet_v2"] and data["notes"] == []
    assert data["machine"]["exporter_path"] == str(REPO / "exporter")
    values = {m["figure"]: m["value"] for m in data["measurements"]}
    assert set(values) == {
        "export_wall_s", "export_peak_rss_mb", "export_cpu_s", "variables_mb",
        "saved_model_pb_mb", "variables_ratio",
    }  # fmt: skip
    assert all(value > 0 for value in values.values()), values
    assert values["export_peak_rss_mb"] > 200  # TensorFlow alone takes more.
    assert 0.9 < values["variables_ratio"] < 4
    assert data["backbones"]["mobilenet_v2"]["params"] > 1e6
    assert [r["returncode"] for r in data["runs"]] == [0]
    assert "| mobilenet_v2 | export wall time, whole process | s | Keras 3 export |" in (
        done.stdout
    )
    assert path.with_suffix(".md").read_text() == done.stdout.rstrip("\n") + "\n"
    assert not (tmp_path / "scratch" / "mobilenet_v2").exists()  # Cleaned once measured.


def test_op_profile_counts_each_op_type_per_call(tmp_path):
    """The profiler's own table, summed by op type: one Conv2D per call, its time real."""
    import numpy as np
    import op_profile
    import tensorflow as tf

    kernel = tf.constant(np.ones((3, 3, 3, 4), np.float32))
    images = tf.constant(np.ones((2, 32, 32, 3), np.float32))
    function = tf.function(lambda: tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME")))
    function()  # Traced before profiling, as op_profile's warm-up does.
    ops = op_profile.op_times(lambda: function().numpy(), 3, tmp_path / "log")
    [conv] = [kind for kind in ops if "Conv2D" in kind]  # "_MklNativeConv2D" with oneDNN.
    assert ops[conv]["count"] == pytest.approx(1.0)
    assert ops[conv]["self_ms"] > 0
    assert any("Relu" in kind for kind in ops), sorted(ops)


def test_op_profile_splits_a_call_into_python_tensorflow_and_ops(tmp_path):
    """The trace's host figures of one tf.function call: two ops (the convolution and the
    ReLU) in one executor step, inside the C API call, which lies inside the wall time."""
    import numpy as np
    import op_profile
    import tensorflow as tf

    kernel = tf.constant(np.ones((3, 3, 3, 4), np.float32))
    images = tf.constant(np.ones((2, 64, 64, 3), np.float32))
    function = tf.function(lambda: tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME")))
    function()
    xspace, walls = op_profile.profiled(lambda: function().numpy(), 3, tmp_path / "log")
    host = op_profile.host_times(xspace, walls)
    assert (host["ops"], host["executor_steps"]) == (2.0, 1.0), host
    assert 0 < host["op_busy_ms"] <= host["op_ms"] + 1e-9
    assert 0 < host["op_busy_ms"] < host["in_tf_ms"] < host["wall_ms"], host
    assert host["python_ms"] == pytest.approx(host["wall_ms"] - host["in_tf_ms"])
    assert op_profile._union_ms([(0, 10), (5, 20), (30, 40)]) == pytest.approx(0.03)


def test_op_profile_table_lists_the_op_types_that_differ_most():
    import op_profile

    host = {"host_busy_s": 2.0, "host_idle_s": 0.1, "steal_s": 0.0}
    calls = {v: [{"wall_s": w, "cpu_s": w, **host}] for v, w in (("a", 1.1), ("b", 1.0))}
    report = {
        "backbone": "resnet50", "mode": "finetune", "batch": 16, "size": 224,
        "variants": ["a", "b"], "calls": calls,
        "median": {v: c[0] for v, c in calls.items()},
        "op_types": {
            "a": {"Conv2D": {"self_ms": 50.0, "count": 3}, "Mul": {"self_ms": 9.0, "count": 2},
                  "IDLE": {"self_ms": 40.0, "count": 0}},
            "b": {"Conv2D": {"self_ms": 49.0, "count": 3},
                  "FusedBatchNormV3": {"self_ms": 4.0, "count": 1}},
        },
    }  # fmt: skip
    host = dict.fromkeys(op_profile.HOST_ROWS, 1.0)
    report["host"] = {"a": {**host, "python_ms": 150.0}, "b": {**host, "python_ms": 50.0}}
    text = op_profile.render(report, top=2)
    assert "| Python outside TensorFlow's C API (ms) | 150.0 | 50.0 | +100.0 |" in text
    assert "ratio a / b: wall 1.100x, CPU 1.100x" in text
    text = text.split("| per call, from the trace")[0]
    rows = [line for line in text.splitlines() if line.startswith("| ") and " ms |" not in line]
    # Mul (+9) and FusedBatchNormV3 (-4) differ most; Conv2D (+1) is left out at top=2.
    assert rows[1].startswith("| Mul | 9.0 | 0.0 | +9.0 | 2 | 0 |"), rows
    assert rows[2].startswith("| FusedBatchNormV3 | 0.0 | 4.0 | -4.0 | 0 | 1 |"), rows
    assert "| Conv2D |" not in text
    assert "| all op types | 59.0 | 53.0 | +6.0 | 5 | 4 |" in text  # IDLE is not an op type,
    assert "| (idle, no op running) | 40.0 | 0.0 |" in text  # and is shown apart.


def test_a_keras_hub_backbone_is_asked_for_by_name_but_not_part_of_all():
    known, extra = ["resnet50"], list(harness.KERAS_HUB)
    assert harness.resolve_backbones(["all"], known, extra) == known
    assert harness.resolve_backbones(["keras_hub_vit_b16"], known, extra) == ["keras_hub_vit_b16"]
    vit = harness.KERAS_HUB["keras_hub_vit_b16"]["backbone"]  # ViT-B/16's published shape.
    assert (vit["patch_size"], vit["num_layers"], vit["hidden_dim"]) == (16, 12, 768)


def _keras_hub_workers(runner, scratch):
    """The processes of the test below, beside the suite (tests/background.py)."""
    config = {
        "family": "ViT", "image_size": 32, "num_classes": 3, "scale": 1 / 127.5, "offset": -1.0,
        "backbone": {"image_shape": [32, 32, 3], "patch_size": 8, "num_layers": 1,
                     "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32},
    }  # fmt: skip
    preset, keras3, ours = scratch / "preset", scratch / "keras3", scratch / "ours"
    for task, spec in (
        ("prepare_keras_hub", {"config": config, "preset": str(preset)}),
        ("export_keras3_keras_hub", {"preset": str(preset), "out": str(keras3)}),
    ):
        spec_path = scratch / f"{task}.json"
        spec_path.write_text(json.dumps({**spec, "result": str(scratch / f"{task}.out")}))
        done = runner.run(
            [sys.executable, str(COMPARE), f"--worker={task}", f"--spec={spec_path}"],
            cwd=REPO, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((scratch / f"{task}.out").read_text())["params"] > 1000
    done = runner.run(
        [sys.executable, "-m", "exporter.classification", f"--backbone={preset}", f"--out={ours}"],
        cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return keras3, ours


@pytest.mark.slow  # Three fresh processes, each importing keras-hub.
@pytest.mark.background(job=_keras_hub_workers)
def test_the_keras_hub_workers_export_one_preset_both_ways(background):
    """compare.py's keras-hub jobs on a tiny ViT: the same preset, ours and Keras 3's export."""
    keras3, ours = background
    import numpy as np
    import tensorflow as tf

    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    theirs, mine = tf.saved_model.load(str(keras3)), tf.saved_model.load(str(ours))
    np.testing.assert_allclose(mine(images), theirs.serve(images * 2.0 - 1.0), atol=1e-5)


def test_the_tree_peak_counts_a_child_beside_its_parent(tmp_path):
    """wait4's peak is the larger of a process and the child it waited for; the sampled tree
    peak is their sum while both live (what an export through a rebuild child costs)."""
    child = "import time; data = b'y' * 400_000_000; time.sleep(0.5)"
    parent = (
        "import subprocess, sys, time; data = b'x' * 300_000_000; "
        f"subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    )
    run = harness.run_child([sys.executable, "-c", parent], tmp_path / "p.log", sample_tree=0.05)
    assert run.returncode == 0
    assert 400e6 < run.peak_rss_bytes < 600e6  # The child's, not the sum.
    assert run.tree_peak_rss_bytes > 700e6  # Both at once.
    plain = harness.run_child([sys.executable, "-c", "pass"], tmp_path / "plain.log")
    assert plain.tree_peak_rss_bytes is None


def test_the_jax_export_group_is_selectable_and_labelled():
    done = subprocess.run(
        [sys.executable, str(COMPARE), "--figures=jax_exports"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "known: export, load, latency, finetune, jax_export" in (
        done.stderr
    )
    pairs = {pair for figure in harness.FIGURES for pair in harness.pairs_for(figure)}
    assert ("ours_jax", "keras3_jax") in pairs
    assert set(harness.JAX_EXPORTERS) <= set(harness.SHORT_LABELS)


def _jax_export_workers(runner, scratch):
    """The processes of the test below, beside the suite (tests/background.py)."""
    import os

    config = {
        "family": "ViT", "image_size": 32, "num_classes": 3, "scale": 1 / 127.5, "offset": -1.0,
        "backbone": {"image_shape": [32, 32, 3], "patch_size": 8, "num_layers": 1,
                     "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32},
    }  # fmt: skip
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    runs, results = {}, {}
    for variant in ("ours", "keras3"):
        out, result = scratch / variant, scratch / f"{variant}.json"
        spec_path = scratch / f"{variant}.spec.json"
        spec = {"config": config, "exporter": variant, "out": str(out), "result": str(result)}
        spec_path.write_text(json.dumps(spec))
        argv = [sys.executable, str(COMPARE), "--worker=export_jax", f"--spec={spec_path}"]
        runs[variant] = harness.run_child(
            argv, scratch / f"{variant}.log", cwd=REPO, env=env, timeout=600, sample_tree=0.05
        )
        assert runs[variant].returncode == 0, runs[variant].tail(30)
        results[variant] = json.loads(result.read_text())
        assert (out / "saved_model.pb").is_file()
    assert results["ours"]["params"] == results["keras3"]["params"] > 1000
    stages = dict(results["ours"]["stages"])
    assert stages["rebuild under TensorFlow (jax -> tensorflow)"] > 0
    # The rebuild child ran beside the JAX process: the tree's peak is more than either's.
    assert runs["ours"].tree_peak_rss_bytes > 1.2 * runs["ours"].peak_rss_bytes
    return scratch


@pytest.mark.slow  # Two fresh JAX processes importing keras-hub, and ours' TensorFlow child.
@pytest.mark.background(job=_jax_export_workers)
def test_the_jax_export_worker_exports_one_model_both_ways(background):
    """compare.py's jax_export jobs on a tiny keras-hub ViT, as the harness runs them: a
    KERAS_BACKEND=jax process builds it and exports it, ours through its rebuild child."""
    tmp_path = background
    import numpy as np
    import tensorflow as tf

    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    ours, keras3 = (tf.saved_model.load(str(tmp_path / v)) for v in ("ours", "keras3"))
    assert ours(images).shape == (2, 16) and keras3.serve(images * 2.0 - 1.0).shape == (2, 3)
