"""Check one registered backbone end to end; run by tests/test_zoo.py in a fresh process.

Usage: ``python tests/zoo_check.py NAME [--own_head]``. Checks the feature vector and, with
``--own_head``, the classifier that keeps the backbone's own ImageNet head. Exit status 0
means every check passed; a failed check raises, so the traceback names it.

A fresh process per backbone keeps exports fast: after dozens of backbones in one process,
TensorFlow's and Keras' global state grows (10 GB) and one export slowed from about a
minute to ten.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import random_images  # noqa: E402  (this script's folder is on sys.path)

import exporter  # noqa: E402


def reference_and_weights(name: str, directory: Path, include_top: bool):
    """The Keras model with random weights (batch-norm statistics too), and its weights file."""
    keras.utils.set_random_seed(zlib.crc32(name.encode()) + include_top)
    facts = exporter.get_backbone(name)
    if include_top:
        model = facts.build(include_top=True, weights=None, classifier_activation=None)
    else:
        size = facts.native_size if facts.fixed_size else None
        model = facts.build(include_top=False, weights=None, input_shape=(size, size, 3))
    set_batch_norm_statistics(model)
    path = directory / f"{name}-{'top' if include_top else 'notop'}.weights.h5"
    model.save_weights(path)
    return model, path


def set_batch_norm_statistics(model) -> None:
    """Give every batch norm moving statistics near, but not at, the identity, and damp it.

    Fresh batch norm is the identity in inference, which would hide any mishandling of
    the moving averages. Statistics far from it are no better: deep random networks
    (EfficientNetV2-S to L) then grow their activations to 1e5 and become chaotic, so
    float32 round-off alone breaks the 1e-4 checks. Fresh EfficientNetV2-L is chaotic even
    so (an image alone and in a batch differ by 75%); scales near 0.5 tame every backbone.
    """
    rng = np.random.default_rng(1)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.uniform(-0.02, 0.02, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.9, 1.1, layer.moving_variance.shape))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.4, 0.6, layer.gamma.shape))


def graph_call(model, images):
    # Graph mode with static shapes, as Keras documents the model; eager execution can
    # silently compute on maps that are too small.
    return tf.function(lambda x: model(x, training=False))(tf.constant(images)).numpy()


def assert_close(actual, expected):
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def check_feature_vector(name: str, scratch: Path) -> None:
    facts = exporter.get_backbone(name)
    reference, weights = reference_and_weights(name, scratch, include_top=False)
    module = exporter.build_feature_vector(name, weights=weights)
    assert module.num_features == facts.num_features, (module.num_features, facts.num_features)
    path = exporter.save(module, scratch / "feature_vector")
    del module
    obj = tf.saved_model.load(str(path))

    # The fact sheet's width is the real model's pooled output width.
    sizes = [facts.native_size] if facts.fixed_size else [facts.min_size, facts.min_size + 13]
    images = random_images(2, sizes[0])
    feature_map = graph_call(reference, np.zeros((1, sizes[0], sizes[0], 3), np.float32))
    assert feature_map.shape[-1] == facts.num_features, feature_map.shape

    # Parity with the Keras model under the family's own preprocess_input.
    family = getattr(keras.applications, facts.family)
    expected = np.mean(graph_call(reference, family.preprocess_input(images * 255.0)), (1, 2))
    assert_close(obj(tf.constant(images)).numpy(), expected)

    # The minimum works on the real model; one pixel less is refused, naming the minimum.
    if facts.fixed_size:
        with _raises(f"exactly {facts.native_size}"):
            obj(tf.zeros([1, facts.native_size + 1, facts.native_size, 3]))
    else:
        assert feature_map.ndim == 4
        assert graph_call(reference, np.zeros((1, facts.min_size, facts.min_size, 3))).ndim == 4
        with _raises(f"at least {facts.min_size}"):
            obj(tf.zeros([1, facts.min_size - 1, facts.min_size, 3]))

    # Round trip: both training values, at the smallest sizes (training=True last: it
    # updates the loaded copy's batch-norm statistics).
    for size in sizes:
        for training in (False, True):
            out = obj(tf.constant(random_images(2, size)), training=training)
            assert out.dtype == tf.float32 and out.shape == (2, facts.num_features), out.shape

    metadata = json.loads((Path(path) / "assets.extra" / "metadata.json").read_text())
    assert metadata["num_features"] == facts.num_features
    min_size = facts.native_size if facts.fixed_size else facts.min_size
    assert metadata["input"]["min_size"] == min_size, metadata["input"]
    assert metadata["preprocessing"]["mode"] == facts.preprocessing
    # batch_norm_momentum is an hparam exactly when the model has batch norm.
    layers = reference._flatten_layers(include_self=False, recursive=True)
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    expected_hparams = {"batch_norm_momentum": norms[0].momentum} if norms else {}
    assert {k: v["default"] for k, v in metadata["hparams"].items()} == expected_hparams
    # Each variable is stored once (Keras' own export stores them twice).
    on_disk = sum(f.stat().st_size for f in (Path(path) / "variables").iterdir())
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in reference.weights)
    assert on_disk <= 1.02 * weight_bytes, (on_disk, weight_bytes)


def check_own_classifier(name: str, scratch: Path) -> None:
    facts = exporter.get_backbone(name)
    reference, weights = reference_and_weights(name, scratch, include_top=True)
    # Exporting runs every conformance rule, with the card required, and fails on any.
    path = exporter.export_classifier(name, scratch / "classifier", weights=weights)
    metadata = json.loads((Path(path) / "assets.extra" / "metadata.json").read_text())
    assert metadata["num_classes"] == facts.num_classes
    assert metadata["classes"]["activation"] == "softmax"
    assert metadata["input"]["fixed_size"] == (facts.fixed_size or facts.classifier_fixed_size)
    # Its own dropout before the logits, or 0.2 where it has none.
    assert metadata["hparams"]["dropout_rate"]["default"] == (facts.top_dropout or 0.2)

    # The logits are Keras' own classifier's, softmax removed.
    obj = tf.saved_model.load(str(path))
    images = random_images(2, facts.native_size)
    family = getattr(keras.applications, facts.family)
    expected = graph_call(reference, family.preprocess_input(images * 255.0))
    assert_close(obj(tf.constant(images)).numpy(), expected)
    if not (facts.fixed_size or facts.classifier_fixed_size):
        small = obj(tf.constant(random_images(1, facts.min_size)), training=True)
        assert small.shape == (1, facts.num_classes), small.shape
    else:  # A head fixed at the native size refuses any other, saying which it needs.
        with _raises(f"exactly {facts.native_size}"):
            obj(tf.zeros([1, facts.native_size - 1, facts.native_size, 3]))


@contextlib.contextmanager
def _raises(text: str):
    """Expect an InvalidArgumentError whose message contains ``text``."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if text not in str(error):
            raise
        return
    raise AssertionError(f"Expected an InvalidArgumentError naming {text!r}.")


def main(name: str, own_head: bool) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=f"exporter-zoo-{name}-"))
    checks = (check_feature_vector, check_own_classifier) if own_head else (check_feature_vector,)
    try:
        for check in checks:
            start = time.perf_counter()
            check(name, scratch)
            print(f"{name}: {check.__name__} passed in {time.perf_counter() - start:.1f} s")
            keras.backend.clear_session()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--own_head"]):
        sys.exit(f"usage: {sys.argv[0]} NAME [--own_head]")
    main(sys.argv[1], own_head=sys.argv[2:] == ["--own_head"])
