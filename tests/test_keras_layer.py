"""``exporter.KerasLayer``: Keras 3 fine-tunes a reusable SavedModel (issue 9).

Most tests use a tiny export made here (two regularized convolutions with batch norm and a
new classifier head: both hparams and two regularization losses, in seconds); fine-tuning,
parity and re-export use a calibrated MobileNetV2 export (features of order 1).
"""

import inspect
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, random_images
from keras.src.saving.serialization_lib import SafeModeScope

import exporter
from exporter.checking import conformance
from exporter.use.keras_layer import UnsafeSavedModelError

SIZE = 32
LABELS = np.array([0, 1, 0, 1, 1, 0, 1, 0])


def tiny_backbone(name: str = "tiny") -> keras.Model:
    """Two regularized convolutions with batch norm: a backbone that exports in seconds."""
    l2 = keras.regularizers.L2(1e-2)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, kernel_regularizer=l2)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, kernel_regularizer=l2)(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A classifier export: hparams dropout_rate and batch_norm_momentum, two losses."""
    keras.utils.set_random_seed(0)
    module = exporter.ClassifierModule(
        tiny_backbone(), preprocessing="identity", num_classes=3, min_size=24, native_size=40
    )
    return str(exporter.save(module, tmp_path_factory.mktemp("tiny") / "export"))


@pytest.fixture(scope="module")
def mobilenet(export):
    return str(export("feature_vector", "mobilenet_v2", "calibrated"))


def _values(variables) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in variables]


def _moved(before, variables) -> list[bool]:
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True)]


def _moving_means(obj) -> list:
    return [v for v in obj.variables if "moving_mean" in v.name]


def _compile(model, learning_rate=1e-2):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def test_sequential_fine_tuning_moves_the_saved_model(tiny):
    keras.utils.set_random_seed(0)
    layer = exporter.KerasLayer(tiny, trainable=True)
    obj = layer._loaded
    # Shared, not copied: the layer's weights are the restored variables themselves.
    assert {id(w.value) for w in layer.weights} == {id(v) for v in obj.variables}
    assert len(layer.trainable_weights) == len(obj.trainable_variables)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layer, keras.layers.Dense(2)])
    assert model.output_shape == (None, 2)
    _compile(model)
    trainable, means = list(obj.trainable_variables), _moving_means(obj)
    before, means_before = _values(trainable), _values(means)
    history = model.fit(random_images(8, SIZE), LABELS, epochs=6, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    assert all(_moved(before, trainable))
    assert all(_moved(means_before, means))


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_re_export_of_a_changed_mobilenet_has_parity(mobilenet, tmp_path):
    # MobileNetV2 (calibrated) without fit: its first training step takes a minute to
    # trace on 2 cores. Batch statistics moved by training calls, a kernel by assign.
    layer = exporter.KerasLayer(mobilenet, trainable=True)
    images = random_images(8, SIZE)
    means = _moving_means(layer._loaded)
    before = _values(means)
    layer(images, training=True)
    assert all(_moved(before, means))
    kernel = layer.trainable_weights[0]
    kernel.assign(kernel.numpy() * 1.5)
    body = keras.Sequential([keras.Input((None, None, 3)), layer])
    module = exporter.FeatureVectorModule(body, preprocessing="identity")
    # The same variables, not copies.
    assert sorted(map(id, module.variables)) == sorted(map(id, layer._loaded.variables))
    out = exporter.save(module, tmp_path / "again")
    expected = body(images, training=False).numpy()
    assert np.max(np.abs(expected)) > 1e-2  # Calibrated: a parity check that can fail.
    reloaded = tf.saved_model.load(str(out))
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(reloaded(images), expected, rtol=1e-4, atol=1e-4 * scale)
    original = tf.saved_model.load(mobilenet)(images)
    assert not np.allclose(original, expected, atol=1e-2 * scale)
    facts = json.loads((out / "assets.extra" / "metadata.json").read_text())
    assert facts["input"]["min_size"] == 32  # From the inner export's metadata.
    assert list(facts["hparams"]) == ["batch_norm_momentum"]
    assert facts["hparams"]["batch_norm_momentum"]["default"] == 0.999


def test_functional_fine_tuning_and_moving_means_only_in_training(tiny):
    keras.utils.set_random_seed(1)
    layer = exporter.KerasLayer(tiny, trainable=True)
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.Dense(2)(layer(inputs))
    model = keras.Model(inputs, outputs)
    obj = layer._loaded
    means = _moving_means(obj)
    images = random_images(8, SIZE)
    before = _values(means)
    model(images, training=False)
    assert not any(_moved(before, means))  # Inference leaves the statistics alone.
    _compile(model)
    trainable, weights_before = list(obj.trainable_variables), _values(obj.trainable_variables)
    losses = model.fit(images, LABELS, epochs=6, batch_size=8, verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses
    assert all(_moved(weights_before, trainable))
    assert all(_moved(before, means))


def test_frozen_changes_nothing_in_the_saved_model_and_the_head_trains(tiny):
    layer = exporter.KerasLayer(tiny)
    head = keras.layers.Dense(2)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layer, head])
    assert model.trainable_weights == head.trainable_weights
    assert layer.non_trainable_weights and not layer.trainable_weights
    obj = layer._loaded
    before, head_before = _values(obj.variables), _values(head.weights)
    _compile(model)
    model.fit(random_images(8, SIZE), LABELS, epochs=2, batch_size=4, verbose=0)
    assert not any(_moved(before, obj.variables))
    assert all(_moved(head_before, head.weights))
    assert model.losses == []

    # Unfreezing later works as in Keras (after recompiling).
    layer.trainable = True
    assert len(layer.trainable_weights) == len(obj.trainable_variables)
    _compile(model)
    before = _values(obj.trainable_variables)
    model.fit(random_images(8, SIZE), LABELS, epochs=1, batch_size=4, verbose=0)
    assert all(_moved(before, obj.trainable_variables))


def test_losses_are_the_export_s_regularization_losses_while_trainable(tiny):
    images = random_images(2, SIZE)
    trainable = exporter.KerasLayer(tiny, trainable=True)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), trainable])
    model(images)
    expected = [float(fn()) for fn in trainable._loaded.regularization_losses]
    assert len(expected) == 2 and all(value > 0 for value in expected)
    assert [float(loss) for loss in model.losses] == pytest.approx(expected)
    model(images)  # Added on every call, not accumulated across calls.
    assert len(model.losses) == 2
    frozen = exporter.KerasLayer(tiny)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), frozen])
    model(images)
    assert model.losses == []


def test_hparams_through_arguments(tiny):
    images = tf.constant(random_images(4, SIZE))

    def train_twice(**arguments):
        layer = exporter.KerasLayer(tiny, trainable=True, arguments=arguments)
        return layer(images, training=True).numpy(), layer(images, training=True).numpy(), layer

    quiet_a, quiet_b, _ = train_twice(dropout_rate=0.0)
    np.testing.assert_allclose(quiet_a, quiet_b, rtol=1e-6)
    noisy_a, noisy_b, _ = train_twice(dropout_rate=0.5)
    assert not np.allclose(noisy_a, noisy_b)
    _, _, still = train_twice(dropout_rate=0.0, batch_norm_momentum=1.0)
    reference = tf.saved_model.load(tiny)
    for mean, original in zip(_moving_means(still._loaded), _moving_means(reference), strict=True):
        np.testing.assert_array_equal(mean.numpy(), original.numpy())
    assert still.hparams == {"dropout_rate": 0.0, "batch_norm_momentum": 1.0}
    with pytest.raises(ValueError, match=r"Unknown arguments \['dropot_rate'\].*offers: "
                       "dropout_rate, batch_norm_momentum"):  # fmt: skip
        exporter.KerasLayer(tiny, arguments=dict(dropot_rate=0.1))


def test_signature_and_output_key(tiny):
    images = tf.constant(random_images(3, SIZE))
    expected = tf.saved_model.load(tiny).signatures["serving_default"](images=images)["logits"]
    layer = exporter.KerasLayer(tiny, signature="serving_default", output_key="logits")
    np.testing.assert_allclose(layer(images), expected, rtol=1e-6)
    assert layer.compute_output_shape((None, SIZE, SIZE, 3)) == (None, 3)
    # As in hub.KerasLayer (issue 24), a signature needs output_key or
    # signature_outputs_as_dict=True, even when it has one output.
    with pytest.raises(ValueError, match="signature='serving_default', pass exactly one of"):
        exporter.KerasLayer(tiny, signature="serving_default")
    as_dict = exporter.KerasLayer(tiny, signature="serving_default", signature_outputs_as_dict=True)
    assert list(as_dict(images)) == ["logits"]
    with pytest.raises(ValueError, match="Unknown signature 'serve'.*has: serving_default"):
        exporter.KerasLayer(tiny, signature="serve", output_key="logits")
    with pytest.raises(ValueError, match="Unknown output_key 'probs'.*outputs are: logits"):
        exporter.KerasLayer(tiny, signature="serving_default", output_key="probs")


def test_bad_handles(tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected a SavedModel directory.*No such path"):
        exporter.KerasLayer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="Not a SavedModel: no saved_model.pb"):
        exporter.KerasLayer(tmp_path / "empty")
    module = tf.Module()
    module.serve = tf.function(lambda images: {"out": images * 2.0}).get_concrete_function(
        tf.TensorSpec([None, 3], tf.float32, name="images")
    )
    tf.saved_model.save(module, str(tmp_path / "signature_only"), signatures=module.serve)
    with pytest.raises(ValueError, match="without; its signatures are: serving_default"):
        exporter.KerasLayer(tmp_path / "signature_only")


def test_rank_3_images_are_refused_by_the_saved_model(tiny):
    # The export's own trace for images of unknown rank refuses them, with its message.
    layer = exporter.KerasLayer(tiny)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"shape=\[32 32 3\]\. It is not 4-D"):
        layer(tf.zeros([SIZE, SIZE, 3]))


class _Printing(tf.Module):
    """A SavedModel whose __call__ prints: PrintV2 is one of the unsafe ops."""

    def __init__(self):
        super().__init__()
        self.scale = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        tf.print("hello from the SavedModel")
        return tf.reduce_mean(images, axis=[1, 2]) * self.scale


def test_unsafe_ops_are_refused_unless_allowed(tiny, tmp_path):
    unsafe = tmp_path / "unsafe"
    tf.saved_model.save(_Printing(), str(unsafe))
    assert "safe_ops" in conformance.check(unsafe).failed()
    with pytest.raises(UnsafeSavedModelError, match="PrintV2 in function"):
        exporter.KerasLayer(unsafe)
    assert exporter.KerasLayer(unsafe, allow_unsafe_ops=True)(tf.ones([1, 8, 8, 3])).shape == (1, 3)

    # Keras' unsafe mode (safe_mode=False, or keras.config.enable_unsafe_deserialization(),
    # the same switch) grants nothing by itself: only the argument does (issue 32). A .keras
    # file's own allow_unsafe_ops=True counts only when it is loaded with safe_mode=False.
    with SafeModeScope(False), pytest.raises(UnsafeSavedModelError, match="PrintV2"):
        exporter.KerasLayer(unsafe)
    layer = exporter.KerasLayer(unsafe, allow_unsafe_ops=True)
    model = keras.Sequential([keras.Input((8, 8, 3)), layer])
    model.save(tmp_path / "model.keras")
    # Keras 3.15 re-raises a layer's from_config error as a TypeError quoting it.
    with pytest.raises((UnsafeSavedModelError, TypeError), match="PrintV2.*safe_mode=False"):
        keras.models.load_model(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=False)
    images = tf.ones([1, 8, 8, 3])
    np.testing.assert_allclose(loaded(images), model(images))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(tiny, policy):
    keras.config.set_dtype_policy(policy)
    try:
        layer = exporter.KerasLayer(tiny, trainable=True)
        model = keras.Sequential(
            [keras.Input((SIZE, SIZE, 3)), layer, keras.layers.Dense(2, dtype="float32")]
        )
        assert layer.compute_dtype == policy.split("_")[1]
        _compile(model)
        obj = layer._loaded
        before = _values(obj.trainable_variables)
        model.fit(random_images(8, SIZE), LABELS, epochs=1, batch_size=4, verbose=0)
        assert all(_moved(before, obj.trainable_variables))
        assert layer(random_images(2, SIZE)).dtype == policy.split("_")[1]
    finally:
        keras.config.set_dtype_policy("float32")


def test_re_export_keeps_losses_hparams_and_sizes_of_the_inner_export(tiny, tmp_path):
    keras.utils.set_random_seed(2)
    layer = exporter.KerasLayer(tiny, trainable=True, arguments=dict(dropout_rate=0.0))
    body = keras.Sequential([keras.Input((None, None, 3)), layer])
    module = exporter.ClassifierModule(
        body, preprocessing="identity", num_classes=2, labels=["a", "b"], dropout_rate=0.0
    )
    assert (module.min_size, module.native_size) == (32, 40)  # max(32, 24); the inner's 40.
    out = exporter.save(module, tmp_path / "again")
    reloaded = tf.saved_model.load(str(out))
    parameters = inspect.signature(reloaded.__call__).parameters
    assert parameters["dropout_rate"].default == 0.0
    assert parameters["batch_norm_momentum"].default == 0.99
    inner = [float(fn()) for fn in layer.regularization_losses]
    assert len(reloaded.regularization_losses) == len(inner) == 2
    assert sorted(float(fn()) for fn in reloaded.regularization_losses) == pytest.approx(
        sorted(inner)
    )
    # The outer hparam reaches the inner export: momentum 1 keeps its moving means.
    means = _moving_means(reloaded)
    assert means
    before = _values(means)
    reloaded(tf.constant(random_images(4, SIZE)), training=True, batch_norm_momentum=1.0)
    assert not any(_moved(before, means))
    reloaded(tf.constant(random_images(4, SIZE)), training=True, batch_norm_momentum=0.5)
    assert all(_moved(before, means))


def test_keras_file_round_trip_in_a_fresh_process(tiny, tmp_path):
    keras.utils.set_random_seed(3)
    layer = exporter.KerasLayer(tiny, trainable=True)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layer, keras.layers.Dense(2)])
    _compile(model)
    images = random_images(4, SIZE)
    model.fit(random_images(8, SIZE), LABELS, epochs=3, batch_size=4, verbose=0)
    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, keras, exporter\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "layer = model.layers[0]\n"
        "assert type(layer) is exporter.KerasLayer and layer.trainable, layer\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.keras"),
         str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    actual = np.load(tmp_path / "out.npy")
    assert np.max(np.abs(expected)) > 1e-2
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    # The fine-tuned weights, not the original export's.
    fresh = keras.Sequential([keras.Input((SIZE, SIZE, 3)), exporter.KerasLayer(tiny)])
    fresh_head = keras.layers.Dense(2)
    fresh_head.build((None, 3))
    fresh_head.set_weights(model.layers[1].get_weights())
    original = fresh_head(fresh(images)).numpy()
    assert not np.allclose(original, expected, atol=1e-4)


def _tf_keras_export(model, path) -> str:
    model.save(str(path), save_format="tf")  # The classic TF2 publishing path (tf-keras).
    return str(path)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_a_tf_keras_mobilenet_export_passes_the_checker_and_loads(tmp_path):
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    source = tf_keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), include_top=False, weights=None, pooling="avg"
    )
    path = _tf_keras_export(source, tmp_path / "mobilenet_v2")
    layer = exporter.KerasLayer(path, trainable=True)
    assert len(layer.trainable_weights) == len(source.trainable_weights)
    images = random_images(4, SIZE)
    expected = source(images, training=False).numpy()
    np.testing.assert_allclose(layer(images), expected, rtol=1e-5, atol=1e-6)
    # The checker runs on the same loaded object (one load of a big graph instead of two).
    report = conformance.check(path, task="image_feature_vector", loaded=layer._loaded)
    assert report.ok, report.to_text()
    hparams = next(r for r in report.results if r.rule == "hparams")
    assert hparams.status == conformance.WARN and "mask traced only as None" in hparams.message


def test_a_tf_keras_export_fine_tunes_in_keras_3(tmp_path):
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential(
        [
            tf_keras.Input((None, None, 3)),
            tf_keras.layers.Conv2D(8, 3, strides=2),
            tf_keras.layers.BatchNormalization(),
            tf_keras.layers.ReLU(),
            tf_keras.layers.GlobalAveragePooling2D(),
        ]
    )
    layer = exporter.KerasLayer(_tf_keras_export(source, tmp_path / "small"), trainable=True)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layer, keras.layers.Dense(2)])
    _compile(model)
    obj = layer._loaded
    before, means_before = _values(obj.trainable_variables), _values(_moving_means(obj))
    losses = model.fit(random_images(8, SIZE), LABELS, epochs=6, verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses
    assert all(_moved(before, obj.trainable_variables))
    assert all(_moved(means_before, _moving_means(obj)))


def test_the_readme_example_runs_as_written(tiny, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Fine-tuning an export in Keras 3", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "mobilenet_v2").symlink_to(tiny)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    model = namespace["model"]
    assert model.output_shape == (None, 5)
    assert model.layers[0].trainable_weights
