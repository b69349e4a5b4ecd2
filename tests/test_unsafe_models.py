"""A SavedModel that writes a file when called is refused on every path that opens one.

Each path (convert to ONNX and to LiteRT, batch embedding, the checker, the Keras layer, a
``.keras`` file that names it) must refuse it before anything of it runs: the marker file
the model would write never appears, and nothing is written where output was asked for.
Each test then shows that the scan is what stood in the way, where the path has an opt-in.
"""

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli

import exporter
from exporter.checking import conformance, savedmodel
from exporter.errors import UnsafeOpsError
from exporter.use import convert

IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")


class _Reducer(tf.Module):
    """The image API at its smallest: a scaled channel mean (a feature vector of 3)."""

    def __init__(self):
        super().__init__()
        self.scale = tf.Variable(2.0)

    @tf.function(input_signature=[IMAGES])
    def __call__(self, images):
        return tf.reduce_mean(images, axis=[1, 2]) * self.scale


class _Writer(_Reducer):
    """The same, but every call writes ``target``: what a hostile SavedModel could do."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    @tf.function(input_signature=[IMAGES])
    def __call__(self, images):
        tf.io.write_file(self.target, "pwned")
        return tf.reduce_mean(images, axis=[1, 2]) * self.scale


def _save(module: tf.Module, path: Path) -> Path:
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path


@pytest.fixture
def writer(tmp_path):
    """``(SavedModel path, marker path)``: the model writes the marker whenever it runs."""
    marker = tmp_path / "written-by-the-model.txt"
    path = _save(_Writer(str(marker)), tmp_path / "writer")
    assert not marker.exists()  # Saving traces; it never ran the op.
    return path, marker


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_way_in_refuses_it_and_names_the_op(writer):
    path, marker = writer
    with pytest.raises(UnsafeOpsError, match="WriteFile in function") as raised:
        savedmodel.load(path)
    assert ("WriteFile" in {op for op, _ in raised.value.ops}) and not marker.exists()
    savedmodel.load(path, allow_unsafe_ops=True)(tf.zeros([1, 4, 4, 3]))
    assert marker.read_text() == "pwned"  # The scan is what stood in the way.


@pytest.mark.parametrize("to", ["onnx", "litert"])
def test_convert_refuses_it_before_loading_and_writes_nothing(writer, tmp_path, to):
    path, marker = writer
    out_dir = tmp_path / "converted"
    out_dir.mkdir()
    out = out_dir / f"model.{'onnx' if to == 'onnx' else 'tflite'}"
    with pytest.raises(UnsafeOpsError, match="WriteFile.*allow_unsafe_ops=True"):
        convert.convert(path, out, to=to)
    done = run_cli("convert", str(path), f"--to={to}", f"--out={out}")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: Refusing to load") and "WriteFile" in lines[-1]
    assert "Nothing was written" in lines[-1]
    assert not marker.exists() and _listing(out_dir) == []


def test_convert_allow_unsafe_ops_is_the_opt_in(writer, tmp_path):
    path, marker = writer
    out = tmp_path / "model.onnx"
    done = run_cli("convert", str(path), "--to=onnx", f"--out={out}", "--allow_unsafe_ops")
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and marker.read_text() == "pwned"  # It ran while verified.


def test_embed_refuses_it_before_the_pipeline_starts(writer, tmp_path):
    path, marker = writer
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (images / "a.png").write_bytes(tf.io.encode_png(pixels).numpy())
    out_dir = tmp_path / "embedded"
    out_dir.mkdir()
    done = run_cli(
        "embed", f"--model={path}", f"--images={images}", f"--out={out_dir / 'records'}",
        "--image_size=8", timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "WriteFile" in done.stderr and "--allow_unsafe_ops" in done.stderr
    assert not marker.exists() and _listing(out_dir) == []


def test_check_refuses_to_run_it(writer):
    path, marker = writer
    report = conformance.check(path)
    statuses = {r.rule: r.status for r in report.results}
    assert statuses["safe_ops"] == "fail" and statuses["loads"] == "skip"
    assert not marker.exists()


def test_keras_layer_refuses_it(writer):
    path, marker = writer
    with pytest.raises(UnsafeOpsError, match="WriteFile.*allow_unsafe_ops=True"):
        exporter.KerasLayer(path)
    assert not marker.exists()


def _retarget(keras_file: Path, out: Path, handle: Path) -> Path:
    """Copy ``keras_file`` with every KerasLayer pointing at ``handle`` and allowing unsafe ops."""
    with zipfile.ZipFile(keras_file) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                layers = [
                    layer for layer in config["config"]["layers"]
                    if layer["class_name"] == "KerasLayer"
                ]  # fmt: skip
                assert len(layers) == 1
                layers[0]["config"].update(handle=str(handle), allow_unsafe_ops=True)
                data = json.dumps(config).encode()
            target.writestr(item, data)
    return out


def test_a_keras_file_cannot_switch_the_scan_off(writer, tmp_path):
    path, marker = writer
    safe = _save(_Reducer(), tmp_path / "safe")
    model = keras.Sequential([keras.Input((8, 8, 3)), exporter.KerasLayer(safe)])
    model.save(tmp_path / "safe.keras")
    tampered = _retarget(tmp_path / "safe.keras", tmp_path / "tampered.keras", path)

    # Keras 3.15 re-raises a layer's from_config error as a TypeError quoting it.
    with pytest.raises((UnsafeOpsError, TypeError), match="WriteFile.*safe_mode=False"):
        keras.models.load_model(tampered)
    assert not marker.exists()

    loaded = keras.models.load_model(tampered, safe_mode=False)  # The caller's own opt-in.
    assert not marker.exists()
    loaded(tf.zeros([1, 8, 8, 3]))
    assert marker.read_text() == "pwned"


def test_a_config_is_trusted_only_outside_deserialization(writer):
    """clone_model rebuilds a layer made in code from its config: the caller's own trust is
    kept. Keras' deserialize_keras_object runs in safe mode by default: a config from
    elsewhere cannot grant it."""
    path, marker = writer
    layer = exporter.KerasLayer(path, allow_unsafe_ops=True)
    model = keras.Sequential([keras.Input((8, 8, 3)), layer])
    clone = keras.models.clone_model(model)
    assert clone.layers[0].allow_unsafe_ops and not marker.exists()
    config = keras.saving.serialize_keras_object(layer)
    with pytest.raises((UnsafeOpsError, TypeError), match="WriteFile.*safe_mode=False"):
        keras.saving.deserialize_keras_object(config)
    assert not marker.exists()
