"""The contract's real consumers load our exports: tf-keras + hub, Keras 3, TF1, LiteRT."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import CORE, random_images, tiered

import exporter


def _moving_means(layer):
    return [w for w in layer.non_trainable_weights if "moving_mean" in w.name]


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.parametrize("name", tiered(CORE))
def test_hub_keras_layer_fine_tunes(export, name):
    import tensorflow_hub as hub
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    path = str(export("feature_vector", name, "none"))
    layer = hub.KerasLayer(path, trainable=True)
    model = tf_keras.Sequential([tf_keras.Input((48, 48, 3)), layer, tf_keras.layers.Dense(2)])
    model.compile(
        tf_keras.optimizers.Adam(1e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images, labels = random_images(4, 48), np.array([0, 1, 0, 1])
    means = _moving_means(layer)
    assert means, "no batch-norm moving means among the non-trainable weights"
    before = [m.numpy().copy() for m in means]
    history = model.fit(images, labels, epochs=8, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    assert any(not np.allclose(b, m.numpy()) for b, m in zip(before, means, strict=True))
    obj = tf.saved_model.load(path)
    assert len(layer.trainable_weights) == len(obj.trainable_variables)


def test_hub_keras_layer_frozen_has_no_trainable_weights(export):
    import tensorflow_hub as hub
    import tf_keras

    layer = hub.KerasLayer(str(export("feature_vector", "mobilenet_v2", "none")), trainable=False)
    model = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), layer])
    assert model.trainable_weights == []
    assert layer.non_trainable_weights


def test_keras3_tfsm_layer_predicts(export):
    import keras

    path = str(export("feature_vector", "mobilenet_v2", "none"))
    model = keras.Sequential(
        [keras.Input((40, 40, 3)), keras.layers.TFSMLayer(path, call_endpoint="serving_default")]
    )
    images = random_images(3, 40)
    predicted = model.predict(images, verbose=0)["feature_vector"]
    expected = tf.saved_model.load(path)(tf.constant(images))
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_tf1_session_loader_runs_serving_default_by_tensor_names(export):
    # The classifier test_hparams.py exports too: made once per session, shared.
    path = str(export("classification", "mobilenet_v2", "none", num_classes=5))
    images = random_images(2, 32)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta_graph.signature_def["serving_default"]
        assert list(signature.inputs) == ["images"]
        assert list(signature.outputs) == ["logits"]
        logits = session.run(
            signature.outputs["logits"].name, {signature.inputs["images"].name: images}
        )
    expected = tf.saved_model.load(path)(tf.constant(images))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", tiered(CORE))
def test_litert_runs_the_converted_serving_default(export, name):
    from ai_edge_litert.interpreter import Interpreter  # tf.lite.Interpreter is deprecated.

    path = str(export("feature_vector", name, "none"))
    converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["serving_default"])
    interpreter = Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner("serving_default")
    images = random_images(1, 64)
    output = runner(images=images)["feature_vector"]
    expected = tf.saved_model.load(path)(tf.constant(images))
    assert output.shape == (1, exporter.get_backbone(name).num_features)
    np.testing.assert_allclose(output, expected, rtol=1e-3, atol=1e-3 * np.max(np.abs(expected)))
