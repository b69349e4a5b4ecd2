"""Every registered backbone: its facts, a round trip and preprocessing parity.

One test per backbone does everything with one weights file and one export, in its own
scratch directory that it removes (the largest, ConvNeXtXLarge, is 1.4 GB of weights).
"""

import gc
import json
import shutil
import tempfile
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import BACKBONES, random_images

import exporter
from exporter import conformance


def _reference_and_weights(name: str, directory: Path) -> tuple[keras.Model, Path]:
    """The Keras model with random weights (batch-norm statistics too), and its weights file."""
    keras.utils.set_random_seed(zlib.crc32(name.encode()))
    facts = exporter.get_backbone(name)
    size = facts.native_size if facts.fixed_size else None
    model = facts.build(include_top=False, weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.uniform(-0.1, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    path = directory / f"{name}.weights.h5"
    model.save_weights(path)
    return model, path


def _graph_call(model, images):
    # Graph mode with static shapes, as Keras documents the model; eager execution can
    # silently compute on maps that are too small.
    return tf.function(lambda x: model(x, training=False))(tf.constant(images))


@pytest.fixture
def scratch():
    path = Path(tempfile.mkdtemp(prefix="exporter-zoo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
    keras.backend.clear_session()
    gc.collect()


def test_names_follow_the_keras_function_names():
    for name in BACKBONES:
        facts = exporter.get_backbone(name)
        assert name.replace("_", "") == facts.build.__name__.lower(), name
        assert name == name.lower()


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_facts_round_trip_and_parity(scratch, name):
    facts = exporter.get_backbone(name)
    reference, weights = _reference_and_weights(name, scratch)
    module = exporter.build_feature_vector(name, weights=weights)
    assert module.num_features == facts.num_features
    path = exporter.save(module, scratch / "export")
    del module
    obj = tf.saved_model.load(str(path))

    sizes = [facts.native_size] if facts.fixed_size else [facts.min_size, facts.min_size + 13]
    # Parity with the Keras model under the family's own preprocess_input.
    images = random_images(2, sizes[0])
    family = getattr(keras.applications, facts.family)
    expected = np.mean(_graph_call(reference, family.preprocess_input(images * 255.0)), (1, 2))
    actual = obj(tf.constant(images)).numpy()
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)

    # The minimum works on the real model; one pixel less is refused, naming the minimum.
    if not facts.fixed_size:
        assert _graph_call(reference, np.zeros((1, facts.min_size, facts.min_size, 3))).ndim == 4
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"at least {facts.min_size}"):
            obj(tf.zeros([1, facts.min_size - 1, facts.min_size, 3]))
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"exactly {facts.native_size}"):
            obj(tf.zeros([1, facts.native_size + 1, facts.native_size, 3]))

    # Last: training=True updates the loaded copy's batch-norm statistics.
    for size in sizes:
        for training in (False, True):
            out = obj(tf.constant(random_images(2, size)), training=training)
            assert out.dtype == tf.float32 and out.shape == (2, facts.num_features)

    metadata = json.loads((Path(path) / "assets.extra" / "metadata.json").read_text())
    assert metadata["num_features"] == facts.num_features
    assert metadata["input"]["min_size"] == (facts.native_size if facts.fixed_size else
                                             facts.min_size)  # fmt: skip
    assert metadata["preprocessing"]["mode"] == facts.preprocessing
    on_disk = sum(f.stat().st_size for f in (Path(path) / "variables").iterdir())
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in reference.weights)
    assert on_disk <= 1.02 * weight_bytes


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_own_classifier_exports_and_conforms(scratch, name):
    # Exporting runs every conformance rule with the card required; check again, to be sure.
    facts = exporter.get_backbone(name)
    path = exporter.export_classifier(name, scratch / "classifier", weights="none")
    report = conformance.check(path, strict_metadata=True)
    assert report.failed() == [], report.to_text()
    assert report.task == "image_classification"
    metadata = json.loads((Path(path) / "assets.extra" / "metadata.json").read_text())
    assert metadata["num_classes"] == facts.num_classes
    assert metadata["classes"]["activation"] == "softmax"
    assert metadata["input"]["fixed_size"] == (facts.fixed_size or facts.classifier_fixed_size)
