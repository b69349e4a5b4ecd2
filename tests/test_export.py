"""Exports keep the contract: shapes, parity with Keras, errors, size on disk."""

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import CORE, keras_reference, random_images, tiered

import exporter


def _close(actual, expected, rtol=1e-4):
    """Agreement to ``rtol`` relative to the output's scale."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.max(np.abs(expected))
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _preprocess_input(name, images):
    family = getattr(keras.applications, exporter.get_backbone(name).family)
    return family.preprocess_input(images.copy() * 255.0)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.parametrize("weights", ["none", "file"])
@pytest.mark.parametrize("name", tiered(CORE))
def test_export_loads_and_keeps_shapes(export, name, weights):
    facts = exporter.get_backbone(name)
    obj = tf.saved_model.load(str(export("feature_vector", name, weights)))
    for size in (facts.min_size, facts.min_size * 2 + 1):
        for batch in (1, 3):
            images = tf.constant(random_images(batch, size))
            for training in (False, True):
                out = obj(images, training=training)
                assert out.dtype == tf.float32
                assert out.shape == (batch, facts.num_features)
    assert all(v.trainable for v in obj.trainable_variables)
    assert {id(v) for v in obj.trainable_variables} <= {id(v) for v in obj.variables}
    assert list(obj.regularization_losses) == []


@pytest.mark.parametrize("name", tiered(CORE))
def test_feature_vector_matches_keras_preprocess_input(export, weights_file, name):
    obj = tf.saved_model.load(str(export("feature_vector", name)))
    reference = keras_reference(name, weights_file(name))
    images = random_images(2, 75)
    expected = np.mean(reference(_preprocess_input(name, images), training=False), axis=(1, 2))
    _close(obj(tf.constant(images)), expected)
    served = obj.signatures["serving_default"](images=tf.constant(images))
    _close(served["feature_vector"], expected)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_max_pooling(export, weights_file):
    obj = tf.saved_model.load(str(export("feature_vector", "mobilenet_v2", pooling="max")))
    reference = keras_reference("mobilenet_v2", weights_file("mobilenet_v2"))
    images = random_images(2, 64)
    expected = np.max(reference(_preprocess_input("mobilenet_v2", images)), axis=(1, 2))
    _close(obj(tf.constant(images)), expected)


# Heads of two shapes: pooled Dense (resnet50, mobilenet_v2), Dropout then Dense
# (efficientnet_b0).
OWN_HEADS = CORE


@pytest.mark.parametrize("name", tiered(OWN_HEADS))
def test_own_classifier_gives_the_keras_logits(export, weights_file, name):
    facts = exporter.get_backbone(name)
    obj = tf.saved_model.load(str(export("classification", name)))
    reference = keras_reference(name, weights_file(name, include_top=True), include_top=True)
    images = random_images(2, facts.native_size)
    expected = reference(_preprocess_input(name, images), training=False)
    logits = obj(tf.constant(images))
    _close(logits, expected)
    # Logits, not probabilities: softmax of ours is what the Keras default head outputs.
    assert not np.allclose(np.sum(logits, axis=-1), 1.0)
    assert logits.shape == (2, facts.num_classes)
    if facts.classifier_fixed_size:
        with pytest.raises(tf.errors.InvalidArgumentError, match="exactly 224"):
            obj(tf.constant(random_images(1, facts.min_size)))
    else:  # Any size in range works, although Keras builds this head at native size only.
        small = obj(tf.constant(random_images(1, facts.min_size)))
        assert small.shape == (1, facts.num_classes)
    # ImageNet's class names ship with it, as package data (nothing is downloaded).
    labels = Path(obj.labels_file.asset_path.numpy().decode()).read_text().splitlines()
    assert len(labels) == facts.num_classes == 1000
    assert labels[:2] == ["tench", "goldfish"] and len(set(labels)) == 1000


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_classifier_from_a_keras_file(workdir, weights_file):
    source = weights_file("mobilenet_v2", include_top=True, suffix=".keras")
    out = exporter.export_classifier("mobilenet_v2", workdir / "from-keras-file", weights=source)
    reference = keras_reference("mobilenet_v2", source, include_top=True)
    images = random_images(1, 224)
    expected = reference(_preprocess_input("mobilenet_v2", images))
    _close(tf.saved_model.load(str(out))(tf.constant(images)), expected)


LABELS = [f"class_{i}" for i in range(5)]


@pytest.mark.slow  # 10 s or more in the quick tier, with its setup (docs/development.md).
def test_new_head_with_labels(export):
    path = export("classification", "efficientnet_b0", "none", num_classes=5, labels=LABELS)
    obj = tf.saved_model.load(str(path))
    images = tf.constant(random_images(3, 40))
    assert obj(images).shape == (3, 5)
    assert obj(images, training=True).shape == (3, 5)
    assert obj.signatures["serving_default"](images=images)["logits"].shape == (3, 5)
    shipped = Path(obj.labels_file.asset_path.numpy().decode())
    assert shipped.parent == Path(path) / "assets"
    assert shipped.read_text().splitlines() == LABELS


def test_classifier_dropout_is_active_only_in_training(export):
    # efficientnet_b0's own top dropout (0.2) sits before the logits.
    path = export("classification", "efficientnet_b0", "none", num_classes=5, labels=LABELS)
    obj = tf.saved_model.load(str(path))
    images = tf.constant(random_images(2, 32))
    np.testing.assert_array_equal(obj(images), obj(images))
    assert not np.allclose(obj(images, training=True), obj(images, training=True))


BAD_INPUTS = {
    "NCHW": (tf.zeros([1, 3, 64, 64]), "NCHW"),
    "1 channel": (tf.zeros([1, 64, 64, 1]), "1 channels"),
    "4 channels": (tf.zeros([1, 64, 64, 4]), "4 channels"),
    "uint8": (tf.zeros([1, 64, 64, 3], tf.uint8), "dtype=uint8"),
    "float64": (tf.zeros([1, 64, 64, 3], tf.float64), "dtype=float64"),
    "rank 3": (tf.zeros([64, 64, 3]), r"shape=\(64, 64, 3\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_in_memory(case):
    images, received = BAD_INPUTS[case]
    module = exporter.build_feature_vector("mobilenet_v2", weights=None)
    with pytest.raises(
        exporter.InvalidImagesError, match=r"Expected a float32 tensor \[batch"
    ) as e:
        module(images)
    assert e.match(received)


# What the reloaded export's message says it received: the run-time shape, "[1 3 64 64]".
RECEIVED_AFTER_RELOAD = {
    "NCHW": r"dtype=float32, shape=\[1 3 64 64\]\. This looks like NCHW",
    "1 channel": r"shape=\[1 64 64 1\]\. Got 1 channels",
    "4 channels": r"shape=\[1 64 64 4\]\. Got 4 channels",
    "uint8": r"dtype=uint8, shape=\[1 64 64 3\]\. Convert with",
    "float64": r"dtype=float64, shape=\[1 64 64 3\]\. Convert with",
    "rank 3": r"shape=\[64 64 3\]\. It is not 4-D: add a batch dimension",
}


def _our_line(error: Exception) -> str:
    """The line of a TensorFlow error that holds our message (one line: what was expected,
    what was received)."""
    lines = [line for line in str(error).splitlines() if "Expected a float32 tensor [" in line]
    assert len(lines) == 1, str(error)
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_by_the_reloaded_export_with_our_message(export, case):
    images, _ = BAD_INPUTS[case]
    path = str(export("feature_vector", "mobilenet_v2", "none"))
    obj = tf.saved_model.load(path)
    calls = {
        "__call__": obj,
        "__call__(training=True)": lambda x: obj(x, training=True),
        "serving_default": lambda x: obj.signatures["serving_default"](images=x),
        # Ours hands float64 to the export's float64 trace, which refuses it.
        "exporter.KerasLayer": exporter.KerasLayer(path),
    }
    for how, call in calls.items():
        if how == "serving_default" and case in ("uint8", "float64"):
            # A signature's dtype is fixed: TensorFlow refuses another before our graph runs.
            with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float"):
                call(images)
            continue
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            call(images)
        line = _our_line(error.value)
        assert re.search(RECEIVED_AFTER_RELOAD[case], line), (how, line)
        assert "height and width of at least" not in str(error.value), how  # Layout first.


def test_bad_input_is_refused_through_hub_keras_layer_with_our_message(export):
    import tensorflow_hub as hub

    path = str(export("feature_vector", "mobilenet_v2", "none"))
    # tf-keras casts float64 to the layer's float32 by default, as Keras 3 does; the images
    # reach the export as they are with autocast=False.
    assert hub.KerasLayer(path)(BAD_INPUTS["float64"][0]).shape == (1, 1280)
    layer = hub.KerasLayer(path, autocast=False)
    for case, (images, _) in BAD_INPUTS.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            layer(images)
        assert re.search(RECEIVED_AFTER_RELOAD[case], _our_line(error.value)), case


def test_the_card_states_what_refusing_costs(export):
    path = export("feature_vector", "mobilenet_v2", "none")
    facts = json.loads((path / "assets.extra" / "metadata.json").read_text())
    cost = facts["input"]["refused_with_our_message"]["saved_model_pb_bytes"]
    # Six small traces (three dtypes, both training values), no backbone graph in them.
    assert 0 < cost < 0.05 * (path / "saved_model.pb").stat().st_size, cost
    card = (path / "assets.extra" / "model_card.md").read_text()
    assert f"The traces that refuse them cost {cost:,} bytes." in card


@pytest.mark.parametrize("name", tiered(CORE))
def test_too_small_images_are_refused_by_the_export(export, name):
    facts = exporter.get_backbone(name)
    obj = tf.saved_model.load(str(export("feature_vector", name, "none")))
    small = facts.min_size - 1
    message = rf"at least {facts.min_size} pixels. Received \[height, width\]:.*{small}"
    for call in (obj, lambda x: obj.signatures["serving_default"](images=x)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call(tf.zeros([1, small, facts.min_size * 2, 3]))


def test_training_must_be_a_python_bool():
    module = exporter.build_feature_vector("mobilenet_v2", weights=None)
    with pytest.raises(TypeError, match="Python bool"):
        module(tf.zeros([1, 32, 32, 3]), training=tf.constant(True))


@pytest.mark.parametrize("name", tiered(CORE))
def test_each_variable_is_stored_once(export, weights_file, name):
    path = Path(export("feature_vector", name))
    on_disk = sum(f.stat().st_size for f in (path / "variables").iterdir())
    model = keras_reference(name, weights_file(name))
    weight_bytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    assert on_disk <= 1.02 * weight_bytes, (on_disk, weight_bytes)
    assert not (path / "tfhub_module.pb").exists()
    for item in path.rglob("*"):
        assert item.name[0].isalnum() or item.name[0] == "_", item


@pytest.mark.slow  # 10 s or more in the quick tier, with its setup (docs/development.md).
def test_swish_gradient_is_saved_once_and_equals_keras(export, calibrated_weights):
    """Every swish shares one saved gradient (issue 13), and gradients equal Keras' own."""
    from tensorflow.core.protobuf import saved_model_pb2

    name = "efficientnet_b0"
    path = Path(export("feature_vector", name, "calibrated"))
    proto = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    # Inline tf.nn.silu would register one per activation per saved function (196 here).
    assert len(proto.meta_graphs[0].graph_def.library.registered_gradients) == 1

    obj = tf.saved_model.load(str(path))
    reference = keras_reference(name, calibrated_weights(name))
    images = random_images(2, 64)
    projection = tf.constant(np.random.default_rng(3).standard_normal((1280, 1)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(obj(tf.constant(images), training=False) @ projection)
    ours = tape.gradient(loss, obj.trainable_variables)
    keras_variables = [v.value for v in reference.trainable_variables]
    with tf.GradientTape() as tape:
        features = reference(_preprocess_input(name, images), training=False)
        loss = tf.reduce_sum(tf.reduce_mean(features, axis=[1, 2]) @ projection)
    theirs = tape.gradient(loss, keras_variables)
    assert [v.shape for v in obj.trainable_variables] == [v.shape for v in keras_variables]
    for actual, expected in zip(ours, theirs, strict=True):
        _close(actual, expected, rtol=1e-3)


def _batch_norm_backbone() -> keras.Model:
    """Batch norms of every kind the module meets: fusable ones (with and without scale or
    offset, their own momentum), one with too small an epsilon for TensorFlow's fused
    kernel, and one after pooling (2-D): only the first three run the fused kernel."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="fused_full")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3)(x)
    x = keras.layers.BatchNormalization(scale=False, name="fused_no_scale")(x)
    x = keras.layers.BatchNormalization(center=False, epsilon=1e-3, name="fused_no_center")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-6, name="keras_tiny_epsilon")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization(name="keras_2d")(x)
    return keras.Model(inputs, x, name="norms")


def test_training_pass_runs_fused_batch_norm_and_equals_keras(tmp_path):
    """Training runs TensorFlow's fused batch-norm kernel where it can (issue 13: tf-keras
    fine-tunes with it, Keras 3 without), and computes exactly what Keras 3 does: outputs,
    moving statistics and gradients, in memory and reloaded."""
    keras.utils.set_random_seed(1)
    backbone, reference = _batch_norm_backbone(), _batch_norm_backbone()
    initial = backbone.get_weights()
    with pytest.warns(UserWarning, match="batch_norm_momentum"):  # Two momenta: no hparam.
        module = exporter.FeatureVectorModule(backbone, preprocessing="identity")
    # The 2-D one qualifies by its layer, and is left to Keras by its input's rank.
    assert [n.name for n in module._held.rewrites.fused_norms] == [
        "fused_full", "fused_no_scale", "fused_no_center", "keras_2d",
    ]  # fmt: skip
    obj = tf.saved_model.load(str(exporter.save(module, tmp_path / "export")))
    # A loss that differs per image and feature (the last batch norm makes any loss of
    # per-feature weights alone constant: every feature sums to its offset over the batch).
    weights = tf.constant(np.random.default_rng(2).standard_normal((3, 8)), tf.float32)

    def step(call, variables, images):
        with tf.GradientTape() as tape:
            features = call(images, training=True)
            loss = tf.reduce_sum(features * weights)
        return features, tape.gradient(loss, variables)

    for ours in (module, obj):
        reference.set_weights(initial)
        images = tf.constant(random_images(3, 37))
        features, gradients = step(ours, ours.trainable_variables, images)
        keras_variables = [v.value for v in reference.trainable_variables]
        expected, expected_gradients = step(reference, keras_variables, images)
        _close(features, expected, rtol=1e-5)
        # Relative to the largest gradient: a bias before a batch norm cancels, and its
        # gradient is float32 rounding in both (1e-5 against 1e-4 of a largest near 1).
        scale = max(float(np.max(np.abs(g))) for g in expected_gradients)
        assert scale > 0.1, scale
        for actual, wanted in zip(gradients, expected_gradients, strict=True):
            np.testing.assert_allclose(actual, wanted, rtol=1e-4, atol=1e-4 * scale)
        # Every variable as Keras left it: the moving statistics moved, and alike.
        assert len(ours.variables) == len(reference.variables)
        moved = 0
        pairs = zip(ours.variables, reference.variables, initial, strict=True)
        for actual, wanted, before in pairs:
            wanted = np.asarray(wanted)
            np.testing.assert_allclose(np.asarray(actual), wanted, rtol=1e-5, atol=1e-7)
            moved += not np.array_equal(wanted, before)
        assert moved == 10  # Two statistics of each of the five batch norms.

    # The saved training pass holds the fused kernel, one per fusable batch norm; the
    # inference pass is Keras' own graph.
    counts = {}
    for function in obj.__call__.concrete_functions:
        images, training = function.structured_input_signature[0][:2]
        if images.shape.rank is None:
            continue  # A trace that only refuses bad images (spec.refuse_at_run_time).
        graph = function.graph.as_graph_def()
        nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
        counts[training] = sum(n.op == "FusedBatchNormV3" for n in nodes)
    assert counts == {False: 0, True: 3}, counts
