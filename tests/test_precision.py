"""Exports that compute in bfloat16 or float16: float32 in and out, checked, fine-tunable."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import random_images, run_cli

from exporter.checking import conformance
from exporter.making import precision


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def mixed(request, export):
    dtype = request.param
    return dtype, export("feature_vector", "mobilenet_v2", "calibrated", compute_dtype=dtype)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_mixed_export_passes_the_checker(mixed):
    dtype, path = mixed
    report = conformance.check(path, strict_metadata=True)
    assert report.failed() == [], report.to_text()  # output_dtype among them: float32 out.
    graph = conformance.read_saved_model(path).meta_graphs[0].graph_def
    dtypes = {
        attr.type
        for function in graph.library.function
        for node in function.node_def
        if node.op == "Conv2D"
        for attr in [node.attr["T"]]
    }
    assert dtypes == {tf.as_dtype(dtype).as_datatype_enum}  # It really computes in dtype.


@pytest.mark.slow  # 10 s or more in the quick tier, with its setup (docs/development.md).
def test_card_states_the_measured_deviation(mixed):
    dtype, path = mixed
    facts = json.loads((path / "assets.extra" / "metadata.json").read_text())
    compute = facts["compute"]
    assert compute["dtype"] == dtype and compute["weights"] == compute["io"] == "float32"
    measured = compute["deviation_from_float32"]
    assert 0 < measured["max_relative"] < 1
    assert precision.MIN_COSINE[dtype] <= measured["min_cosine"] < 1
    card = (path / "assets.extra" / "model_card.md").read_text()
    assert f"**Compute dtype**: {dtype}" in card
    assert f"least cosine similarity {measured['min_cosine']:.5f}" in card


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_mixed_export_fine_tunes_through_hub_keras_layer(mixed):
    import tensorflow_hub as hub
    import tf_keras

    _, path = mixed
    tf_keras.utils.set_random_seed(0)
    layer = hub.KerasLayer(str(path), trainable=True)
    model = tf_keras.Sequential([tf_keras.Input((48, 48, 3)), layer, tf_keras.layers.Dense(2)])
    model.compile(
        tf_keras.optimizers.Adam(1e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images, labels = random_images(4, 48), np.array([0, 1, 0, 1])
    means = [w for w in layer.non_trainable_weights if "moving_mean" in w.name]
    kernels = [w for w in layer.trainable_weights if "kernel" in w.name]
    assert means and kernels
    assert {w.dtype for w in layer.weights} == {tf.float32}  # Weights stay float32.
    before = [m.numpy().copy() for m in means], [k.numpy().copy() for k in kernels]
    history = model.fit(images, labels, epochs=4, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert any(not np.allclose(b, m.numpy()) for b, m in zip(before[0], means, strict=True))
    assert any(not np.allclose(b, k.numpy()) for b, k in zip(before[1], kernels, strict=True))


def test_deviation_bound():
    reference = np.array([[1.0, 0.0], [0.0, 1.0]])
    near = precision.deviation("bfloat16", reference + 0.01, reference)
    assert near.within_bound() and near.max_relative == pytest.approx(0.01)
    far = precision.deviation("bfloat16", reference[::-1], reference)
    assert not far.within_bound() and far.min_cosine == pytest.approx(0.0)


def test_cli_refuses_an_unknown_compute_dtype(tmp_path):
    done = run_cli(
        "feature_vector", "--backbone=mobilenet_v2", "--weights=none", "--compute_dtype=int8",
        f"--out={tmp_path / 'model'}",
    )  # fmt: skip
    assert done.returncode != 0
    assert "--compute_dtype=int8: value should be one of <float32|bfloat16|float16>" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_mixed_classifier_exports_and_tunes_its_dropout(export, dtype):
    """The dropout_rate override is a float32 scalar; the head computes in ``dtype``.
    Calibrated weights: fresh ones' vanishing features underflow float16 (the export then
    fails its deviation bound, rightly)."""
    path = export("classification", "mobilenet_v2", "calibrated", num_classes=3,
                  compute_dtype=dtype)  # fmt: skip
    obj = tf.saved_model.load(str(path))
    logits = obj(tf.constant(random_images(2, 32)), training=True, dropout_rate=0.5)
    assert logits.dtype == tf.float32 and logits.shape == (2, 3)
