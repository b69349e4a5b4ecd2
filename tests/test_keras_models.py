"""Weight decay, user regularizers, and tf-keras (Keras 2) models through the Python API."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_images

import exporter
from exporter.making.layers import KERNELS, add_weight_decay


def _l2(weights, factor):
    return [factor * float(np.sum(np.square(w.numpy()))) for w in weights]


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_weight_decay_equals_the_l2_penalty_by_hand(tmp_path):
    module = exporter.build_classifier("mobilenet_v2", weights=None, num_classes=3,
                                       weight_decay=1e-3)  # fmt: skip
    obj = tf.saved_model.load(str(exporter.save(module, tmp_path / "model")))
    kernels = [
        w for layer in (module.keras_backbone, module._held.head)
        for w in layer.trainable_weights if w.name in KERNELS
    ]  # fmt: skip
    penalties = [float(loss()) for loss in obj.regularization_losses]
    assert len(penalties) == len(kernels) > 50  # Backbone and head kernels alike.
    np.testing.assert_allclose(sorted(penalties), sorted(_l2(kernels, 1e-3)), rtol=1e-5)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_hub_keras_layer_adds_them_to_the_model_losses(tmp_path):
    import tensorflow_hub as hub
    import tf_keras

    module = exporter.build_feature_vector("mobilenet_v2", weights=None, weight_decay=1e-4)
    path = str(exporter.save(module, tmp_path / "model"))
    layer = hub.KerasLayer(path, trainable=True)
    model = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), layer])
    model(tf.zeros([1, 32, 32, 3]))
    loaded = tf.saved_model.load(path)  # Held: its losses read its variables.
    expected = sum(float(loss()) for loss in loaded.regularization_losses)
    assert len(model.losses) == len(module.regularization_losses) > 0
    np.testing.assert_allclose(float(tf.add_n(model.losses)), expected, rtol=1e-5)


def test_weight_decay_keeps_a_users_own_regularizers():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, kernel_regularizer=keras.regularizers.L1(0.5))(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(5, 1)(x))
    add_weight_decay([model], 1e-2)
    module = exporter.FeatureVectorModule(model, preprocessing="identity", min_size=8)
    first, second = (layer.kernel for layer in model.layers[1:])
    values = sorted(float(loss()) for loss in module.regularization_losses)
    expected = sorted([0.5 * float(np.sum(np.abs(first.numpy()))), *_l2([second], 1e-2)])
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_negative_weight_decay_is_refused():
    with pytest.raises(exporter.ExportError, match="weight_decay >= 0"):
        exporter.build_feature_vector("mobilenet_v2", weights=None, weight_decay=-1.0)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_tf_keras_resnet50(tmp_path):
    import tf_keras

    model = tf_keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    module = exporter.FeatureVectorModule(model, preprocessing="caffe", min_size=32,
                                          native_size=224)  # fmt: skip
    obj = tf.saved_model.load(str(exporter.save(module, tmp_path / "model")))
    images = random_images(2, 64)
    pixels = tf_keras.applications.resnet50.preprocess_input(images.copy() * 255.0)
    expected = np.mean(model(pixels, training=False), axis=(1, 2))
    actual = obj(tf.constant(images)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.max(np.abs(expected)))
    assert obj(tf.constant(images), training=True).shape == (2, 2048)
    assert len(obj.variables) == len(model.variables)
    assert len(obj.trainable_variables) == len(model.trainable_variables)


def test_tf_keras_regularizers_are_kept(tmp_path):
    import tf_keras

    conv = tf_keras.layers.Conv2D(4, 3, kernel_regularizer=tf_keras.regularizers.l2(0.01))
    model = tf_keras.Sequential([tf_keras.Input((None, None, 3)), conv,
                                 tf_keras.layers.BatchNormalization()])  # fmt: skip
    module = exporter.FeatureVectorModule(model, preprocessing="identity", min_size=8)
    obj = tf.saved_model.load(str(exporter.save(module, tmp_path / "model")))
    penalties = [float(loss()) for loss in obj.regularization_losses]
    np.testing.assert_allclose(penalties, _l2([conv.kernel], 0.01), rtol=1e-5)


def test_tf_keras_batch_norm_momentum_is_an_hparam(tmp_path):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((None, None, 3)), tf_keras.layers.Conv2D(4, 3),
                                 tf_keras.layers.BatchNormalization(momentum=0.95)])  # fmt: skip
    module = exporter.FeatureVectorModule(model, preprocessing="identity", min_size=8)
    assert module.hparams == {"batch_norm_momentum": 0.95}
    path = exporter.save(module, tmp_path / "model")
    images = tf.constant(random_images(4, 16))
    moved = {}
    for momentum in (0.9, 0.99):
        obj = tf.saved_model.load(str(path))
        mean = next(v for v in obj.variables if "moving_mean" in v.name)
        before = mean.numpy()
        obj(images, training=True, batch_norm_momentum=momentum)
        moved[momentum] = np.sum(np.abs(mean.numpy() - before))
    np.testing.assert_allclose(moved[0.9] / moved[0.99], 10.0, rtol=1e-3)


def _vit_body(image_size: int = 32):
    """A keras-hub ViT's CLS token as features: a body that only works at ``image_size``."""
    import keras_hub

    keras.utils.set_random_seed(3)
    vit = keras_hub.models.ViTBackbone(
        image_shape=(image_size, image_size, 3), patch_size=8, num_layers=1, num_heads=2,
        hidden_dim=16, mlp_dim=32,
    )  # fmt: skip
    return keras.Model(vit.inputs, vit.output[:, 0])


def test_a_body_with_a_static_input_size_exports_as_fixed_size(tmp_path):
    """Its learned position embedding fits one size: the export says so and refuses others
    with our message, instead of claiming any size of at least 32 and failing in the graph."""
    body = _vit_body(32)
    module = exporter.FeatureVectorModule(body, preprocessing="identity", min_size=32)
    assert module.fixed_size == 32 and module.native_size == 32
    path = exporter.save(module, tmp_path / "model")
    facts = json.loads((path / exporter.spec.METADATA_FILE).read_text())
    assert facts["input"]["fixed_size"] is True and facts["input"]["native_size"] == 32
    obj = tf.saved_model.load(str(path))
    images = random_images(2, 32)
    np.testing.assert_allclose(obj(images), body(images), rtol=1e-5, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="exactly 32 pixels"):
        obj(random_images(1, 64))
    with pytest.raises(ValueError, match="fixed_size to match the backbone's input size 32"):
        exporter.FeatureVectorModule(body, preprocessing="identity", fixed_size=64)


class FirstSizeOnly(keras.Model):
    """A subclassed body (no declared input) whose dense kernel fits 32x32 images only."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4)

    def call(self, images):
        return self.dense(keras.ops.reshape(images, (-1, 32 * 32 * 3)))


def test_an_export_that_fails_at_a_second_size_fails_its_verification(tmp_path):
    body = FirstSizeOnly()
    body(tf.zeros([1, 32, 32, 3]))
    module = exporter.FeatureVectorModule(
        body, preprocessing="identity", min_size=32, native_size=32
    )
    with pytest.raises(exporter.ExportError, match="failed verification"):
        exporter.save(module, tmp_path / "model")
    assert not (tmp_path / "model").exists()
