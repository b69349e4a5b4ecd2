"""Keras 3 backends: in-memory exports from JAX and PyTorch processes, the CLIs whatever
``KERAS_BACKEND`` says, and what cannot cross to TensorFlow (docs/backends.md).

Each backend runs once, in a fresh process (``backends_worker.py``), doing every check in
one go: a backend is chosen when Keras is imported.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, random_images

import exporter
from exporter.making import in_memory

BACKENDS = {"jax": "jax", "torch": "torch"}  # KERAS_BACKEND -> the package it needs.
TOLERANCE = 1e-4  # Of the reference output's scale.


def _env(backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _skip_without(backend: str) -> None:
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.skip(f"{BACKENDS[backend]} is not installed: pip install 'jax[cpu]' torch")


def _close(result: dict, what: str) -> None:
    assert result["scale"] > 1e-3, f"{what}: the reference output vanishes: {result}"
    assert result["gap"] <= TOLERANCE * result["scale"], f"{what}: {result}"


def _worker(runner, scratch, backend: str):
    """The backend's worker process, run beside the suite (tests/background.py)."""
    _skip_without(backend)
    done = runner.run(
        [sys.executable, str(REPO / "tests" / "backends_worker.py"), str(scratch)],
        env=_env(backend), timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return scratch, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # Half a minute or more on 2 cores (docs/development.md).
@pytest.mark.background(job=_worker)
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_an_in_memory_model_exports_from_a_backend(backend, background):
    tmp_path, results = background  # The worker's folder: its exports and fine-tuned weights.
    print(json.dumps(results, indent=1))  # Timings, for the CI log.
    assert not [key for key in results if key.endswith("_error")], results
    assert results["backend"] == backend
    # MobileNetV2 trained one step, exported from memory, then trained again.
    _close(results["mobilenet_48"], "MobileNetV2 at 48")
    _close(results["mobilenet_64"], "MobileNetV2 at 64")
    assert results["mobilenet_untouched"] and results["mobilenet_trains_again"]
    assert results["mobilenet_check"]
    assert results["mobilenet_origin"] == {"backend": backend, "version": keras.__version__}
    came_from = f"came from Keras {keras.__version__} on the {backend} backend"
    assert came_from in results["mobilenet_card"]
    if backend == "jax":
        _keras_layer_on_jax(results, tmp_path)
    else:
        assert results["keras_layer_refused"].startswith(
            "exporter.KerasLayer needs the TensorFlow or JAX backend (KERAS_BACKEND=tensorflow "
            f"or jax); received {backend}."
        )
    # A registered custom layer crosses; an unregistered one is refused, nothing written.
    _close(results["custom"], "registered custom layer")
    assert "layer 'doubling' (Unregistered) is not registered" in results["refused"]
    assert "register_keras_serializable" in results["refused"]
    assert "\n" not in results["refused"] and not results["refused_wrote"]
    # keras-hub ViT: logits as keras-hub predicts them on 0..255 pixels; one size only.
    _close(results["vit_logits"], "ViT logits")
    assert results["vit_fv_width"] == 8
    assert "exactly 32 pixels" in results["vit_other_size"]
    assert results["vit_check"]


def _keras_layer_on_jax(results: dict, tmp_path) -> None:
    """exporter.KerasLayer in a JAX model: frozen, the SavedModel's numbers exactly; trainable,
    fine-tuned with TensorFlow's numbers (the same steps are repeated here, on TensorFlow)."""
    assert results["keras_layer_eager"]["gap"] == results["keras_layer_jit"]["gap"] == 0
    assert results["keras_layer_frozen_losses"] == 0  # Frozen: no regularization losses.
    _close(results["keras_layer_tuned"], "KerasLayer(trainable=True) on jax")
    _close(results["keras_layer_training"], "a training call on jax (batch statistics)")
    assert results["keras_layer_moving"] <= 1e-5, "moving statistics after a training call"
    _close(results["keras_layer_losses"], "regularization losses on jax")
    jax = dict(np.load(tmp_path / "fine_tuned_jax.npz"))
    assert len(jax["losses"]) > 0  # weight_decay: the export has regularization losses.
    gap = np.abs(jax["training"] - jax["inference"]).max()
    assert gap > 1e-2 * np.abs(jax["inference"]).max(), "training=True used batch statistics"
    # The regularization losses count in the loss: evaluate = mse + sum(model.losses).
    np.testing.assert_allclose(*jax["evaluated"], rtol=1e-5)
    assert jax["moved"].mean() > 0.5, f"{jax['moved'].sum()} of {jax['moved'].size} moved"
    assert jax["next_loss"][0] < jax["first_loss"][0], "fit's first step lowered the loss"
    import backends_worker  # On TensorFlow, in this process: the same steps.

    tensorflow = backends_worker.fine_tune(tmp_path / "mobilenet")
    assert sorted(tensorflow) == sorted(jax)
    weights = max(float(np.abs(v).max()) for k, v in tensorflow.items() if k.startswith("step_"))
    for key, expected in tensorflow.items():  # All but the second step's loss.
        if key == "next_loss":
            continue
        # The weights after one step, on the scale of all of them (some are near zero).
        scale = weights if key.startswith("step_") else max(float(np.abs(expected).max()), 1e-3)
        gap = float(np.abs(jax[key].astype(float) - expected.astype(float)).max())
        assert gap <= 1e-5 * scale, f"{key}: jax differs from tensorflow by {gap} (scale {scale})"


def test_both_clis_run_tensorflow_whatever_keras_backend_says(tmp_path):
    inputs = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(features))
    model.save(tmp_path / "tiny.keras")
    commands = {
        "jax": ["exporter.feature_vector"],
        "torch": ["exporter.classification", "--num_classes=2"],
    }
    for backend, (command, *extra) in commands.items():
        out = tmp_path / backend
        done = subprocess.run(
            [sys.executable, "-m", command, f"--backbone={tmp_path / 'tiny.keras'}",
             "--preprocessing=tf", "--native_size=32", f"--out={out}", *extra],
            env=_env(backend), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        note = f"note: KERAS_BACKEND={backend} set aside: exporter's commands run Keras on"
        assert done.stderr.count(note) == 1, done.stderr
        assert (out / "saved_model.pb").is_file()


def test_on_tensorflow_an_in_memory_model_is_exported_as_it_is(tmp_path):
    """In this (TensorFlow) process: no copy, no child; a Lambda is fine here."""
    inputs = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(8, 3, strides=2, kernel_initializer="ones")(inputs)
    features = keras.layers.Lambda(lambda x: x * 0.5)(features)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(features), name="mine")
    path = exporter.export_classifier(
        model, tmp_path / "cls", preprocessing="identity", native_size=32, num_classes=3,
        weight_decay=1e-4,
    )  # fmt: skip
    assert all(getattr(v, "regularizer", None) is None for v in model.trainable_variables)
    images = random_images(2, 40)
    assert tf.saved_model.load(str(path))(images).shape == (2, 3)
    metadata = json.loads((path / "assets.extra" / "metadata.json").read_text())
    assert metadata["backbone"]["name"] == "mine"
    assert metadata["backbone"]["keras"] == {"backend": "tensorflow", "version": keras.__version__}
    assert metadata["backbone"]["source"] == "in-memory Keras model 'mine' (Functional)"


def test_what_cannot_cross_is_refused_in_one_line_before_anything_is_written(tmp_path):
    inputs = keras.Input((None, None, 3))
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda x: x, name="twice")(inputs))
    with pytest.raises(exporter.ExportError, match="layer 'twice' \\(Lambda\\) is a Lambda"):
        in_memory.check_rebuildable(lambda_model)

    @keras.saving.register_keras_serializable(package="test_backends_main")
    class Local(keras.layers.Layer):
        def call(self, inputs):
            return inputs

    Local.__module__ = "__main__"  # As when defined in the user's script.
    local_model = keras.Model(inputs, Local(name="local")(inputs))
    with pytest.raises(exporter.ExportError, match="defined in __main__, which another process"):
        in_memory.check_rebuildable(local_model)
    with pytest.raises(exporter.ExportError, match="pass native_size=...") as error:
        exporter.export_feature_vector(lambda_model, tmp_path / "out", preprocessing="tf")
    assert "in-memory Keras model" in str(error.value)
    assert not (tmp_path / "out").exists()
    assert np.isfinite(lambda_model(random_images(1, 8))).all()


def test_on_tensorflow_a_keras_hub_backbone_exports_with_its_converter(tmp_path):
    """Through a preset folder in this process, as ``save_to_preset`` would export it."""
    import keras_hub
    from keras_hub_configs import SIZE, make_backbone

    backbone = make_backbone("ViT")
    converter = keras_hub.layers.ViTImageConverter(
        image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0
    )
    path = exporter.export_feature_vector(backbone, tmp_path / "fv", preprocessing=converter)
    metadata = json.loads((path / "assets.extra" / "metadata.json").read_text())
    assert metadata["preprocessing"]["mode"] == "affine"
    np.testing.assert_allclose(metadata["preprocessing"]["offset"], [-1.0])
    assert metadata["input"]["fixed_size"] and metadata["pooling"] == "token"
    assert metadata["backbone"]["source"].startswith("in-memory keras-hub")
    assert tf.saved_model.load(str(path))(random_images(2, SIZE)).shape == (2, 16)
