"""Saving is atomic and verified: failures and kills leave nothing half-written."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, random_images

import exporter
from exporter.checking import conformance
from exporter.making import card


def _start_export(out, *flags):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "exporter.feature_vector", f"--out={out}", *flags]
    return subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _wait_for(process, marker: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        if marker in line:
            return
        assert time.monotonic() < deadline, f"no {marker!r} within {timeout} s"
    raise AssertionError(f"export ended before {marker!r}")


@pytest.fixture
def existing_export(tmp_path):
    out = tmp_path / "model"
    exporter.export_feature_vector("mobilenet_v2", out, weights=None)
    return out


@pytest.mark.parametrize("when", ["move", "fallback", "done"])
def test_signal_while_moving_into_place_or_after(tmp_path, when):
    """A SIGTERM while the verified export is moved into place takes effect once the move is
    done (never between the two renames of the fallback), and the CLI says --out holds the
    new export; one after the export was reported just ends the process (no traceback).

    tests/interrupt_driver.py sends it at that exact point (the stress tests hit it by chance).
    """
    out = tmp_path / "model"
    exporter.save(exporter.FeatureVectorModule(_sequential(), preprocessing="torch"), out)
    before = out.stat().st_ino
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "interrupt_driver.py"), "--backbone=small",
         f"--out={out}", when],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300, cwd=REPO,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert out.stat().st_ino != before  # The new export, not the old one.
    assert tf.saved_model.load(str(out))(tf.zeros([1, 8, 8, 3])).shape == (1, 4)
    last = done.stderr.strip().splitlines()[-1]
    if when == "done":
        assert done.returncode == -signal.SIGTERM and last.endswith(f"exported to {out}"), last
    else:  # 128 + the signal: the exit status of an interrupted command (docs/command-line.md).
        assert done.returncode == 128 + signal.SIGTERM, done.stderr
        assert last == f"error: interrupted after the new export was moved into {out}.", last


@pytest.mark.parametrize("when", ["written", "swallowed"])
def test_ctrl_c_before_the_move_exits_130_and_keeps_the_old_export(tmp_path, when):
    """Also when the KeyboardInterrupt was caught and dropped where it landed ("swallowed"):
    CI once saw a SIGINT during the build end in a completed export that matched neither
    the old export nor the new weights' own."""
    out = tmp_path / "model"
    exporter.save(exporter.FeatureVectorModule(_sequential(), preprocessing="torch"), out)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    inode = out.stat().st_ino
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "interrupt_driver.py"), "--backbone=small",
         f"--out={out}", when],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "error: interrupted; the output directory was left as it was.", last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # Its sibling is gone.
    assert out.stat().st_ino == inode
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_killed_first_export_leaves_no_output(tmp_path):
    out = tmp_path / "new"
    process = _start_export(out, "--backbone=mobilenet_v2", "--weights=none")
    _wait_for(process, "save ...")
    process.send_signal(signal.SIGTERM)
    process.stderr.read()
    assert process.wait(timeout=120) != 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_overwrite_replaces_a_saved_model(existing_export):
    exporter.export_feature_vector("resnet50", existing_export, weights=None, overwrite=True)
    obj = tf.saved_model.load(str(existing_export))
    assert obj(tf.zeros([1, 32, 32, 3])).shape == (1, 2048)
    assert sorted(p.name for p in existing_export.parent.iterdir()) == ["model"]
    assert oct(existing_export.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _NoisyModel(keras.Model):
    """Adds fresh noise even in inference: an export that cannot match its source."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3)
        self.seed = keras.random.SeedGenerator(1)

    def call(self, x, training=False):
        y = self.conv(x)
        return y + keras.random.normal(keras.ops.shape(y), seed=self.seed)


def test_failed_verification_leaves_nothing(tmp_path):
    module = exporter.FeatureVectorModule(_NoisyModel(), preprocessing="identity", min_size=8)
    out = tmp_path / "a" / "b" / "model"
    with pytest.raises(exporter.ExportError, match="differs from the in-memory model"):
        exporter.save(module, out)
    assert list(tmp_path.iterdir()) == []  # Created parents are removed too.


@pytest.fixture
def keras_file(tmp_path):
    path = tmp_path / "mine.keras"
    _functional().save(path)
    return path


def _export_file(path, out):
    return exporter.export_feature_vector(path, out, preprocessing="tf", native_size=32)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_export_frees_its_module_before_the_reload(tmp_path, keras_file, released):
    """export_* verify against outputs computed before the reload, with the model freed."""
    out = _export_file(keras_file, tmp_path / "out")
    assert released == {"module": released["module"], "alive at verify": False}
    assert conformance.check(out, strict_metadata=True).ok


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_verification_fails_a_corrupted_variable_after_the_release(
    tmp_path, keras_file, released, monkeypatch
):
    """The saved kernel is off by one, the in-memory one is not: the reload must differ."""
    real_save = tf.saved_model.save

    def save_corrupted(module, directory, **kwargs):
        kernel = module.variables[0]
        kernel.assign_add(tf.ones_like(kernel))
        try:
            real_save(module, directory, **kwargs)
        finally:
            kernel.assign_sub(tf.ones_like(kernel))

    monkeypatch.setattr(tf.saved_model, "save", save_corrupted)
    with pytest.raises(exporter.ExportError) as raised:
        _export_file(keras_file, tmp_path / "out")
    assert "__call__(training=False) differs from the in-memory model" in str(raised.value)
    assert "serving_default differs from the in-memory model" in str(raised.value)
    assert released["alive at verify"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.keras"]


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_verification_fails_a_rule_violation_after_the_release(
    tmp_path, keras_file, released, monkeypatch
):
    """A TF1 Hub file written beside the export breaks rule no_tfhub_module_pb."""
    real_write = card.write

    def write_with_tfhub_module_pb(module, directory, *args, **kwargs):
        real_write(module, directory, *args, **kwargs)
        (directory / "tfhub_module.pb").write_bytes(b"")

    monkeypatch.setattr(card, "write", write_with_tfhub_module_pb)
    with pytest.raises(exporter.ExportError, match="rule no_tfhub_module_pb: tfhub_module.pb"):
        _export_file(keras_file, tmp_path / "out")
    assert released["alive at verify"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.keras"]


def _functional():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.ReLU()(x))


def _sequential():
    return keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(8, 3), keras.layers.Dropout(0.5),
         keras.layers.GlobalAveragePooling2D()]
    )  # fmt: skip


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(6, 3, kernel_regularizer=keras.regularizers.L2(0.01))
        self.norm = keras.layers.BatchNormalization()

    def call(self, x, training=False):
        return self.norm(self.conv(x), training=training)


@pytest.mark.parametrize("make", [_functional, _sequential, _Subclassed], ids=lambda f: f.__name__)
def test_users_own_keras3_model(tmp_path, make):
    model = make()
    module = exporter.FeatureVectorModule(model, preprocessing="torch", min_size=16)
    out = exporter.save(module, tmp_path / "model")
    obj = tf.saved_model.load(str(out))
    images = tf.constant(random_images(2, 20))
    np.testing.assert_allclose(obj(images), module(images), rtol=1e-5, atol=1e-6)
    assert obj(images, training=True).shape == (2, module.num_features)
    assert len(obj.variables) == len(model.variables)
    penalties = [float(loss()) for loss in obj.regularization_losses]
    regularized = [w for w in model.weights if getattr(w, "regularizer", None)]
    expected = [0.01 * float(np.sum(np.square(w.numpy()))) for w in regularized]
    np.testing.assert_allclose(penalties, expected, rtol=1e-5)


def test_traced_inference_reuses_the_saved_trace():
    """verify() compares against this call: no new trace (seconds for a large backbone),
    and the same output as calling the module."""
    module = exporter.FeatureVectorModule(_Subclassed(), preprocessing="torch", min_size=16)
    module.trace()
    saved = module.__dict__["__call__"]
    traces = saved.experimental_get_tracing_count()
    images = tf.constant(random_images(3, 20))
    np.testing.assert_allclose(module.traced_inference(images), module(images), rtol=1e-6)
    local = module._held.local_call.experimental_get_tracing_count()  # Python calls' own traces.
    module.traced_inference(tf.constant(random_images(1, 24)))
    # Both training values, and the six that only refuse bad images (spec.REFUSED_DTYPES).
    assert saved.experimental_get_tracing_count() == traces == 2 + 6
    assert module._held.local_call.experimental_get_tracing_count() == local


def test_the_saver_reuses_the_export_traces(tmp_path, monkeypatch):
    """The backbone is traced twice in all, by trace(): for training, and for serving_default,
    which __call__(training=False) calls. tf.saved_model.save does not trace them again (it
    did, for every trace made outside its save context: twice the tracing time), and it
    saves those very traces."""
    module = exporter.FeatureVectorModule(_Subclassed(), preprocessing="torch", min_size=16)
    forwards = []
    forward = type(module)._forward
    monkeypatch.setattr(
        type(module), "_forward", lambda self, *a, **k: forwards.append(1) or forward(self, *a, **k)
    )
    exporter.save(module, tmp_path / "out", serving_inputs="float32,uint8")
    assert len(forwards) == 2  # __call__(training=False) calls serve's trace.
    # Both training values, and six refusing traces that never reach _forward.
    assert module.__dict__["__call__"].experimental_get_tracing_count() == 2 + 6
    assert module.serve.experimental_get_tracing_count() == 1
    library = conformance.read_saved_model(tmp_path / "out").meta_graphs[0]
    saved = {f.signature.name for f in library.graph_def.library.function}
    assert {f.name.decode() for f in module._held.traces.values()} <= saved
