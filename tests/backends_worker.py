"""In-memory exports from a JAX or PyTorch process, in one go (``tests/test_backends.py``).

Run as ``KERAS_BACKEND=jax python tests/backends_worker.py OUT_DIR``: prints one JSON object
of results. Each check is small (MobileNetV2 at alpha 0.35, a tiny ViT), and each export is
made once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

import exporter
from exporter.checking import conformance

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import backends_layers  # noqa: E402  A registered custom layer, importable by name.

RESULTS: dict = {"backend": keras.backend.backend()}


def _gap(actual, expected) -> dict:
    expected = np.asarray(keras.ops.convert_to_numpy(expected))
    actual = np.asarray(actual)
    return {
        "scale": float(np.abs(expected).max()),
        "gap": float(np.abs(actual - expected).max()),
    }


def images(batch: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, size, size, 3), dtype=np.float32)


def _load(path):
    import tensorflow as tf

    return tf.saved_model.load(str(path))


def mobilenet(out: Path) -> None:
    """Trained one step (batch norm statistics move), exported from memory, trained again."""
    model = keras.applications.MobileNetV2(
        weights=None, include_top=False, alpha=0.35, input_shape=(None, None, 3), pooling="avg"
    )
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    batch = images(8, 96, 0) * 2 - 1
    for layer in model.layers:  # Batch norm takes this batch's statistics at once.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model.fit(batch, np.ones((8, model.output_shape[-1])), epochs=1, verbose=0)
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    started = time.perf_counter()
    path = exporter.export_feature_vector(
        model, out / "mobilenet", preprocessing="tf", native_size=224, min_size=32,
        weight_decay=1e-4,  # regularization_losses, for KerasLayer on JAX.
    )  # fmt: skip
    RESULTS["mobilenet_export_s"] = round(time.perf_counter() - started, 1)
    after = [keras.ops.convert_to_numpy(v) for v in model.weights]
    unchanged = [np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    RESULTS["mobilenet_untouched"] = all(unchanged)
    loaded = _load(path)
    for size in (48, 64):
        x = images(2, size, size)
        RESULTS[f"mobilenet_{size}"] = _gap(loaded(x), model(x * 2 - 1, training=False))
    history = model.fit(batch, np.ones((8, model.output_shape[-1])), epochs=1, verbose=0)
    RESULTS["mobilenet_trains_again"] = bool(np.isfinite(history.history["loss"][0]))
    RESULTS["mobilenet_check"] = conformance.check(path, strict_metadata=True).ok
    metadata = json.loads((Path(path) / "assets.extra" / "metadata.json").read_text())
    RESULTS["mobilenet_origin"] = metadata["backbone"]["keras"]
    card = (Path(path) / "assets.extra" / "model_card.md").read_text()
    RESULTS["mobilenet_card"] = card.split("\n")[3]
    keras_layer(path, loaded)


def keras_layer(path, loaded) -> None:
    """JAX: frozen inference in a model, eagerly and under jit (predict, fit of a head); then
    fine-tuning (``fine_tune``, which the test repeats on TensorFlow to compare)."""
    if keras.backend.backend() != "jax":
        try:
            exporter.KerasLayer(path)
        except exporter.Error as error:
            RESULTS["keras_layer_refused"] = str(error)
        return
    x = images(3, 48, 7)
    layer = exporter.KerasLayer(path, trainable=False)
    model = keras.Sequential([keras.Input((48, 48, 3)), layer, keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros((3, 2)), epochs=1, verbose=0)  # The head only.
    features = keras.Model(model.inputs, layer.output)
    RESULTS["keras_layer_eager"] = _gap(layer(x), loaded(x))
    RESULTS["keras_layer_jit"] = _gap(features.predict(x, verbose=0), loaded(x))
    RESULTS["keras_layer_frozen_losses"] = len(model.losses)
    started = time.perf_counter()
    tuned = fine_tune(path)
    RESULTS["keras_layer_fine_tune_s"] = round(time.perf_counter() - started, 1)
    np.savez(Path(path).parent / "fine_tuned_jax.npz", **tuned)
    RESULTS["keras_layer_tuned"] = _gap(tuned["inference"], loaded(x))
    RESULTS["keras_layer_training"] = _gap(tuned["training"], loaded(x, training=True))
    moving = [v.numpy() for v in loaded.variables if not v.trainable]  # After that call.
    RESULTS["keras_layer_moving"] = max(
        _gap(tuned[f"moving_{i}"], expected)["gap"] for i, expected in enumerate(moving)
    )
    RESULTS["keras_layer_losses"] = _gap(
        tuned["losses"], [float(loss()) for loss in loaded.regularization_losses]
    )


def fine_tune(path) -> dict:
    """A trainable ``KerasLayer`` in a model on this backend: its outputs, a training call,
    the moving statistics it left, ``model.losses``, then two steps of ``fit``: the weights
    after the first (later steps drift apart between backends: batch norm on 2x2 maps of 3
    images amplifies rounding), the losses, and which weights moved."""
    x = images(3, 48, 7)
    layer = exporter.KerasLayer(path, trainable=True)
    head = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(1e-3))
    model = keras.Sequential([keras.Input((48, 48, 3)), layer, head])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    tuned = {"inference": layer(x), "training": layer(x, training=True)}
    moving = [w for w in layer._wrappers if not w.trainable]  # The SavedModel's order.
    tuned.update({f"moving_{i}": keras.ops.convert_to_numpy(w) for i, w in enumerate(moving)})
    tuned["losses"] = model.losses
    y = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    mse = float(np.mean((keras.ops.convert_to_numpy(model(x)) - y) ** 2))
    tuned["evaluated"] = [model.evaluate(x, y, verbose=0), mse + float(sum(model.losses))]
    before = [keras.ops.convert_to_numpy(w).copy() for w in layer.trainable_weights]
    tuned["first_loss"] = model.fit(x, y, verbose=0, shuffle=False).history["loss"]
    after = [keras.ops.convert_to_numpy(w) for w in layer.trainable_weights]
    tuned.update({f"step_{i}": w for i, w in enumerate(after)})
    tuned["moved"] = [not np.array_equal(b, a) for b, a in zip(before, after, strict=True)]
    tuned["next_loss"] = model.fit(x, y, verbose=0, shuffle=False).history["loss"]
    return {key: np.asarray(keras.ops.convert_to_numpy(v)) for key, v in tuned.items()}


def vit(out: Path) -> None:
    """A keras-hub ViT classifier with a non-identity converter: both exports from memory."""
    from keras_hub_configs import SIZE, make_task

    scale, offset = [0.01, 0.02, 0.015], [-1.0, -0.5, -2.0]
    task = make_task("ViT", scale=scale, offset=offset)
    cls = _load(exporter.export_classifier(task, out / "vit_cls"))
    fv_path = exporter.export_feature_vector(task, out / "vit_fv")
    x = images(2, SIZE, 1)
    pixels = x * 255.0
    RESULTS["vit_logits"] = _gap(cls(x), task.predict(pixels, verbose=0))
    fv = _load(fv_path)
    RESULTS["vit_fv_width"] = int(fv(x).shape[-1])
    try:
        fv(images(1, SIZE + 8, 2))
        RESULTS["vit_other_size"] = "accepted"
    except Exception as error:  # noqa: BLE001
        RESULTS["vit_other_size"] = str(error)
    RESULTS["vit_check"] = conformance.check(fv_path, strict_metadata=True).ok


def custom_layers(out: Path) -> None:
    """A registered custom layer crosses; an unregistered one is refused, nothing written."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    x = backends_layers.Scale(3.0)(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    path = exporter.export_feature_vector(
        model, out / "custom", preprocessing="identity", native_size=32
    )
    x = images(2, 32, 3)
    RESULTS["custom"] = _gap(_load(path)(x), model(x))

    class Unregistered(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(Unregistered(name="doubling")(inputs))
    try:
        exporter.export_feature_vector(
            keras.Model(inputs, pooled), out / "refused", preprocessing="identity", native_size=32
        )
        RESULTS["refused"] = "exported"
    except exporter.ExportError as error:
        RESULTS["refused"] = str(error)
    RESULTS["refused_wrote"] = (out / "refused").exists()


def main(out: str) -> None:
    out = Path(out)
    for check in (mobilenet, custom_layers, vit):
        started = time.perf_counter()
        try:
            check(out)
        except Exception as error:  # noqa: BLE001  Reported, and the other checks still run.
            RESULTS[f"{check.__name__}_error"] = f"{type(error).__name__}: {error}"
        RESULTS[f"{check.__name__}_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(RESULTS))


if __name__ == "__main__":
    main(sys.argv[1])
