"""Hyperparameters of ``__call__``: ``dropout_rate`` and ``batch_norm_momentum``.

Each is a float scalar tensor with a Python default, set by consumers through
``hub.KerasLayer(path, arguments=...)``.
"""

import inspect
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
from conftest import random_images, run_cli

import exporter


def _classifier(export):
    # A new head: HeadDropout(0.2) -> Dense(5); MobileNetV2's batch norm has momentum 0.999.
    return export("classification", "mobilenet_v2", "none", num_classes=5)


def _metadata(path) -> dict:
    return json.loads((Path(path) / "assets.extra" / "metadata.json").read_text())


def test_defaults_are_python_values_in_the_signature_and_the_card(export):
    path = _classifier(export)
    obj = tf.saved_model.load(str(path))
    parameters = inspect.signature(obj.__call__).parameters
    assert list(parameters) == ["images", "training", "dropout_rate", "batch_norm_momentum"]
    assert parameters["dropout_rate"].default == 0.2
    assert parameters["batch_norm_momentum"].default == 0.999
    # training=False and True, and six of unknown rank that only refuse bad images.
    assert len(obj.__call__.concrete_functions) == 2 + 6
    for concrete in obj.__call__.concrete_functions:
        args, kwargs = concrete.structured_input_signature
        bound = dict(zip(concrete.function_type.parameters, args, strict=False)) | kwargs
        for name in ("dropout_rate", "batch_norm_momentum"):
            assert bound[name] == tf.TensorSpec([], tf.float32, name=name)
    hparams = _metadata(path)["hparams"]
    assert {k: v["default"] for k, v in hparams.items()} == {
        "dropout_rate": 0.2,
        "batch_norm_momentum": 0.999,
    }
    card = (Path(path) / "assets.extra" / "model_card.md").read_text()
    assert "`dropout_rate` (default 0.2)" in card
    assert "`batch_norm_momentum` (default 0.999)" in card


def test_a_feature_vector_has_no_dropout_rate(export):
    obj = tf.saved_model.load(str(export("feature_vector", "resnet50", "none")))
    parameters = inspect.signature(obj.__call__).parameters
    assert list(parameters) == ["images", "training", "batch_norm_momentum"]
    assert parameters["batch_norm_momentum"].default == 0.99


def test_dropout_rate_zero_agrees_half_differs_inference_unchanged(export):
    obj = tf.saved_model.load(str(_classifier(export)))
    images = tf.constant(random_images(8, 32))
    # Batch norm in training mode normalizes with the batch's own statistics, so only
    # dropout can make two training calls on one batch differ.
    first = obj(images, training=True, dropout_rate=0.0).numpy()
    np.testing.assert_array_equal(first, obj(images, training=True, dropout_rate=0.0).numpy())
    half = [obj(images, training=True, dropout_rate=0.5).numpy() for _ in range(2)]
    assert np.max(np.abs(half[0] - half[1])) > 1e-3 * np.max(np.abs(first))
    inference = obj(images).numpy()
    for rate in (0.0, 0.5, 0.9):
        np.testing.assert_array_equal(obj(images, dropout_rate=rate).numpy(), inference)


def test_dropout_rate_through_hub_keras_layer(export):
    path = str(_classifier(export))
    images = tf.constant(random_images(8, 32))
    calls = {}
    for rate in (0.0, 0.5):
        layer = hub.KerasLayer(path, trainable=True, arguments=dict(dropout_rate=rate))
        calls[rate] = [layer(images, training=True).numpy() for _ in range(2)]
    np.testing.assert_array_equal(*calls[0.0])
    assert not np.allclose(*calls[0.5])


def _moving_means(layer) -> list[np.ndarray]:
    return [v.numpy() for v in layer.weights if "moving_mean" in v.name]


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.parametrize("task", ["classification", "feature_vector"])
def test_batch_norm_momentum_through_hub_keras_layer(export, task):
    options = {"num_classes": 5} if task == "classification" else {}
    path = str(export(task, "mobilenet_v2", "none", **options))
    images = random_images(8, 32)
    targets = np.zeros((8, 5 if task == "classification" else 1280), np.float32)
    moved = {}
    for momentum in (0.9, 0.99):
        layer = hub.KerasLayer(
            path, trainable=True, arguments=dict(dropout_rate=0.5, batch_norm_momentum=momentum)
        ) if task == "classification" else hub.KerasLayer(
            path, trainable=True, arguments=dict(batch_norm_momentum=momentum)
        )  # fmt: skip
        model = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), layer])
        model.compile(optimizer=tf_keras.optimizers.SGD(1e-3), loss="mse")
        before = _moving_means(layer)
        assert len(before) == 52  # Every batch norm of MobileNetV2.
        model.train_on_batch(images, targets)  # One training step.
        after = _moving_means(layer)
        moved[momentum] = sum(np.sum(np.abs(a - b)) for a, b in zip(after, before, strict=True))
    # One update moves each mean by (1 - momentum) * (batch mean - moving mean).
    assert moved[0.9] > moved[0.99] > 0
    np.testing.assert_allclose(moved[0.9] / moved[0.99], 10.0, rtol=1e-2)


def test_out_of_range_values_fail_naming_the_hparam(export):
    obj = tf.saved_model.load(str(_classifier(export)))
    images = tf.constant(random_images(2, 32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Expected dropout_rate in \[0, 1\)"):
        obj(images, training=True, dropout_rate=1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected batch_norm_momentum"):
        obj(images, training=True, batch_norm_momentum=-0.5)


def test_module_hparams_and_unknown_names():
    module = exporter.build_classifier("mobilenet_v2", weights=None, num_classes=3)
    assert module.hparams == {"dropout_rate": 0.2, "batch_norm_momentum": 0.999}
    images = tf.constant(random_images(2, 32))
    assert module(images, training=True, dropout_rate=0.3).shape == (2, 3)
    with pytest.raises(TypeError, match="hparams are \\['batch_norm_momentum', 'dropout_rate'\\]"):
        module(images, dropout=0.3)


def test_own_heads_keep_their_dropout_or_get_the_default():
    # EfficientNetB0's own top dropout is 0.2; ResNet50's head has none: the default, 0.2.
    efficientnet = exporter.build_classifier("efficientnet_b0", weights=None)
    assert efficientnet.hparams["dropout_rate"] == 0.2
    resnet = exporter.build_classifier("resnet50", weights=None)
    assert resnet.hparams == {"dropout_rate": 0.2, "batch_norm_momentum": 0.99}
    layers = [type(layer).__name__ for layer in resnet._held.head.layers]
    assert layers == ["HeadDropout", "Dense"]


def test_models_without_batch_norm_offer_no_momentum():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    module = exporter.FeatureVectorModule(model, preprocessing="identity", min_size=8)
    assert module.hparams == {}
    assert list(inspect.signature(module.__dict__["__call__"]).parameters) == [
        "images",
        "training",
    ]


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_dropout_rate_flag_sets_the_default(tmp_path):
    out = tmp_path / "classifier"
    done = run_cli(
        "classification", "--backbone=mobilenet_v2", "--weights=none", "--num_classes=3",
        f"--out={out}", "--dropout_rate=0.35",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert _metadata(out)["hparams"]["dropout_rate"]["default"] == 0.35
    obj = tf.saved_model.load(str(out))
    assert inspect.signature(obj.__call__).parameters["dropout_rate"].default == 0.35


def test_dropout_rate_out_of_range_is_refused_before_building(tmp_path):
    with pytest.raises(exporter.ExportError, match=r"Expected dropout_rate in \[0, 1\)"):
        exporter.export_classifier("mobilenet_v2", tmp_path / "c", weights="none", dropout_rate=1)
    assert not (tmp_path / "c").exists()
    done = run_cli("classification", "--backbone=mobilenet_v2", f"--out={tmp_path / 'd'}",
                   "--dropout_rate=1.5")  # fmt: skip
    assert done.returncode != 0 and "dropout_rate" in done.stderr
    assert not (tmp_path / "d").exists()
