"""tensorflow_hub's own ``hub.KerasLayer`` tests, on ``exporter.KerasLayer`` in Keras 3 (issue 24).

tensorflow_hub's ``tensorflow_hub/keras_layer_test.py`` has 40 tests (classes ``KerasTest``
and ``KerasLayerTest``, parametrized cases counted one by one). Each test here checks the
behaviour of one of them, and says which in its docstring: the SavedModels are made the way
that suite makes them (tf-keras models given to ``tf.saved_model.save``, or a
``tf.train.Checkpoint`` holding ``tf.function``s and variables lists), and consumed in a
Keras 3 model through ``exporter.KerasLayer``, with the values that suite expects. Where
Keras 3 itself differs from tf-keras (not the layer), a comment says so at that spot.

The SavedModels are tiny and each is written once per module (every layer loads its own
copy of the variables, so tests cannot disturb each other through them).
"""

import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import exporter

RAW, FROM_KERAS = "raw", "from_keras"  # upstream's TF2SavedModel_SavedRaw / _SavedFromKeras
FORMATS = pytest.mark.parametrize("fmt", [RAW, FROM_KERAS])


def _json_cycle(config: dict) -> dict:
    return json.loads(json.dumps(config))


def _checkpoint_with(call, model=None, trainable=(), losses=()):
    """A hub-style object: ``__call__``, ``variables``, ``trainable_variables``, losses."""
    obj = tf.train.Checkpoint()
    obj.__call__ = call
    if model is not None:
        obj.variables = model.trainable_variables + model.non_trainable_variables
        obj.trainable_variables = list(trainable)
        obj.regularization_losses = [tf.function(loss, input_signature=[]) for loss in losses]
    return obj


# -- the SavedModels of the upstream suite, written our way ------------------------------------


def write_half_plus_one(path, fmt):
    """y = w*x + 1 with w = 0.5 trainable and L2-regularized; the +1 layer frozen."""
    inputs = tf_keras.Input((1,), dtype=tf.float32)
    times_w = tf_keras.layers.Dense(
        1,
        use_bias=False,
        kernel_initializer=tf_keras.initializers.Constant([[0.5]]),
        kernel_regularizer=tf_keras.regularizers.l2(0.01),
    )
    plus_one = tf_keras.layers.Dense(
        1,
        kernel_initializer=tf_keras.initializers.Constant([[1.0]]),
        bias_initializer=tf_keras.initializers.Constant([1.0]),
        trainable=False,
    )
    model = tf_keras.Model(inputs, plus_one(times_w(inputs)))
    if fmt == FROM_KERAS:
        tf.saved_model.save(model, str(path))
        return
    call = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, 1), tf.float32)],
    )
    assert len(model.losses) == 1
    obj = _checkpoint_with(call, model, [times_w.kernel], [lambda: model.losses[0]])
    assert len(obj.variables) == 3
    tf.saved_model.save(obj, str(path))


class _StringLength(tf_keras.layers.Layer):
    def call(self, inputs):
        return tf.strings.length(inputs)


def write_text_embedding(path, fmt):
    """Strings in: y = length(text) * w, with w = [0.1, 0.3] trainable and L2-regularized."""
    inputs = tf_keras.Input((1,), dtype=tf.string)
    times_w = tf_keras.layers.Dense(
        2,
        use_bias=False,
        kernel_initializer=tf_keras.initializers.Constant([0.1, 0.3]),
        kernel_regularizer=tf_keras.regularizers.l2(0.01),
    )
    model = tf_keras.Model(inputs, times_w(_StringLength()(inputs)))
    if fmt == FROM_KERAS:
        tf.saved_model.save(model, str(path))
        return
    call = tf.function(
        lambda text: model(text, training=False),
        input_signature=[tf.TensorSpec((None, 1), tf.string)],
    )
    obj = _checkpoint_with(call, model, [times_w.kernel], [lambda: model.losses[0]])
    assert len(obj.variables) == 1 and len(model.losses) == 1
    tf.saved_model.save(obj, str(path))


def write_batch_norm(path, fmt):
    """One batch norm (momentum 0.8); ``__call__`` traced for training True and False."""
    inputs = tf_keras.Input((1,), dtype=tf.float32)
    norm = tf_keras.layers.BatchNormalization(momentum=0.8)
    model = tf_keras.Model(inputs, norm(inputs))
    if fmt == FROM_KERAS:
        tf.saved_model.save(model, str(path))
        return

    @tf.function
    def call(x, training=False):
        return model(x, training=training)

    for training in (True, False):
        call.get_concrete_function(tf.TensorSpec((None, 1), tf.float32), training=training)
    obj = tf.train.Checkpoint()
    obj.__call__ = call
    obj.trainable_variables = [norm.beta, norm.gamma]
    obj.variables = [norm.beta, norm.gamma, norm.moving_mean, norm.moving_variance]
    obj.regularization_losses = []
    assert not model.losses
    tf.saved_model.save(obj, str(path))


def write_hparams(path):
    """y = a*x + b, with hparams a = 1 and b = 0 traced as scalar tensors; no variables."""

    @tf.function(input_signature=[tf.TensorSpec((None, 1), tf.float32), tf.TensorSpec(()),
                                  tf.TensorSpec(())])  # fmt: skip
    def call(x, a=1.0, b=0.0):
        return a * x + b

    obj = tf.train.Checkpoint()
    obj.__call__ = call
    tf.saved_model.save(obj, str(path))


def write_custom_attributes(path, scratch, fmt):
    """Strings parsed as int64; an Asset ``sample_input`` and a Variable ``sample_output``."""

    def parse(text):
        return tf.strings.to_number(text, tf.int64)

    if fmt == FROM_KERAS:
        inputs = tf_keras.Input((1,), dtype=tf.string)
        obj = tf_keras.Model(inputs, tf_keras.layers.Lambda(parse)(inputs))
    else:
        obj = tf.train.Checkpoint()
        obj.__call__ = tf.function(parse, input_signature=[tf.TensorSpec((None, 1), tf.string)])
    scratch.mkdir(parents=True, exist_ok=True)
    source = scratch / "number.txt"
    source.write_text("12345\n")
    obj.sample_input = tf.saved_model.Asset(str(source))
    obj.sample_output = tf.Variable([[12345]], dtype=tf.int64)
    tf.saved_model.save(obj, str(path))
    source.unlink()  # Only the SavedModel's copy of the asset is left.


def write_dict_in_out(path):
    """A dict {x, y} in; out sigma = [x+y, x+2y], or with return_dict=True also delta = x-y."""

    @tf.function
    def call(d, return_dict=False):
        x, y = d["x"], d["y"]
        sigma = tf.concat([x + y, x + 2 * y], axis=-1)
        return dict(sigma=sigma, delta=x - y) if return_dict else sigma

    spec = dict(x=tf.TensorSpec((None, 1), tf.float32), y=tf.TensorSpec((None, 1), tf.float32))
    for return_dict in (False, True):
        call.get_concrete_function(spec, return_dict=return_dict)
    obj = tf.train.Checkpoint()
    obj.__call__ = call
    tf.saved_model.save(obj, str(path))


def _broadcast_obscurely(x, shape):
    # Rounded-away noise hides the target shape from TensorFlow's static shape inference.
    noise = 0.1 * tf.sin(tf.random.uniform((), -3, 3)) + 0.3
    return tf.broadcast_to(x, tf.cast(tf.cast(shape, tf.float32) + noise, tf.int32))


def write_obscure_list(path):
    """A list out: i*x broadcast to [batch, i, ..., i] (i times) for i = 1, 2, 3, shapes
    unknown to the trace."""

    @tf.function(input_signature=[tf.TensorSpec((None, 1), tf.float32)])
    def call(x):
        batch = tf.shape(x)[0]
        return [
            _broadcast_obscurely(
                tf.reshape(float(i) * x, tf.concat([[batch], [1] * i], axis=0)),
                tf.concat([[batch], [i] * i], axis=0),
            )
            for i in (1, 2, 3)
        ]

    obj = tf.train.Checkpoint()
    obj.__call__ = call
    tf.saved_model.save(obj, str(path))


def write_plus_one(path):
    """x + 1 for a float32 of any shape; saving also makes it a ``serving_default``."""
    obj = tf.train.Checkpoint()
    obj.__call__ = tf.function(lambda x: x + 1, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(obj, str(path))


def write_plus_one_keras_default(path):
    """``__call__(x, training)`` (x + 1 only in training) and a signature ``plus_one``."""
    obj = tf.train.Checkpoint()
    obj.plus_one = tf.function(lambda x: x + 1, input_signature=[tf.TensorSpec(None, tf.float32)])

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec((), tf.bool)])
    def keras_default(x, training=False):
        return x + 1 if training else x

    obj.__call__ = keras_default
    tf.saved_model.save(obj, str(path), signatures={"plus_one": obj.plus_one})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(writer, *args)``: the SavedModel that ``writer`` writes, made once."""
    made = {}

    def get(writer, *args):
        key = (writer.__name__, *args)
        if key not in made:
            path = tmp_path_factory.mktemp(writer.__name__) / "model"
            if writer is write_custom_attributes:
                writer(path, path.parent / "scratch", *args)
            else:
                writer(path, *args)
            made[key] = str(path)
        return made[key]

    return get


def _losses(model) -> list[float]:
    return [float(loss) for loss in model.losses]


# -- KerasTest ------------------------------------------------------------------------------


@FORMATS
def test_half_plus_one_retraining(saved, fmt):
    """KerasTest.testHalfPlusOneRetraining (SavedRaw, SavedFromKeras)."""
    inputs = keras.Input((1,), dtype="float32")
    layer = exporter.KerasLayer(saved(write_half_plus_one, fmt), trainable=True)
    model = keras.Model(inputs, layer(inputs))
    np.testing.assert_array_equal(
        model(np.array([[0.0], [8.0], [10.0], [12.0]], np.float32)), [[1.0], [5.0], [6.0], [7.0]]
    )
    assert _losses(model) == pytest.approx([0.0025], rel=1e-6)
    assert len(model.trainable_weights) == 1
    # Keras 3 shapes are tuples (tf-keras: TensorShape, so upstream reads .shape.rank).
    assert len(model.trainable_weights[0].shape) == 2  # The kernel w.
    assert sorted(len(w.shape) for w in model.non_trainable_weights) == [1, 2]  # +1's kernel, bias
    trainable = {id(w) for w in model.trainable_weights}
    assert not trainable & {id(w) for w in model.non_trainable_weights}
    assert not {w.path for w in model.trainable_weights} & {
        w.path for w in model.non_trainable_weights
    }
    model.compile(keras.optimizers.SGD(0.002), "mean_squared_error", run_eagerly=True)
    x = np.array([[9.0], [10.0], [11.0]] * 10, np.float32)
    model.fit(x, x / 2 + 6, batch_size=len(x), epochs=10, verbose=0)
    # The frozen bias stays 1; the kernel grows to near 1 to make up for it.
    np.testing.assert_array_equal(model(np.array([[0.0]], np.float32)), [[1.0]])
    np.testing.assert_allclose(model(np.array([[10.0]], np.float32)), [[11.0]], rtol=0.03, atol=0)
    np.testing.assert_allclose(_losses(model), [0.01], rtol=0.06, atol=0)


@FORMATS
def test_regularization_loss_follows_trainable_at_once(saved, fmt):
    """KerasTest.testRegularizationLoss (SavedRaw, SavedFromKeras)."""
    inputs = keras.Input((1,), dtype="float32")
    layer = exporter.KerasLayer(saved(write_half_plus_one, fmt), trainable=False)
    model = keras.Model(inputs, layer(inputs))
    # Keras 3 has no callable losses: a frozen layer contributes no entry, where tf-keras
    # keeps hub's callable that returns 0. (so upstream expects [0.] here and below).
    assert _losses(model) == []
    layer.trainable = True  # No call in between: the toggle shows at once.
    assert _losses(model) == pytest.approx([0.0025], rel=1e-6)
    layer.trainable = False
    assert _losses(model) == []
    layer.trainable = True
    assert _losses(model) == pytest.approx([0.0025], rel=1e-6)
    # Beyond upstream: a compiled (graph) step adds them too; the fit here is exact.
    model.compile(keras.optimizers.SGD(0.0), "mean_squared_error")
    x = np.array([[2.0]], np.float32)
    assert model.fit(x, x / 2 + 1, verbose=0).history["loss"] == pytest.approx([0.0025])


def _batch_norm_variables(layer):
    variables = sorted(layer.variables, key=lambda v: v.name)
    # Keras 3 variable names have no ":0" (and "/" becomes "_"), so only the suffix is checked.
    suffixes = ["beta", "gamma", "moving_mean", "moving_variance"]
    assert len(variables) == 4
    assert all(v.name.endswith(s) for v, s in zip(variables, suffixes, strict=True))
    return variables


@FORMATS
def test_batch_norm_retraining(saved, fmt):
    """KerasTest.testBatchNormRetraining (SavedRaw, SavedFromKeras)."""
    inputs = keras.Input((1,), dtype="float32")
    layer = exporter.KerasLayer(saved(write_batch_norm, fmt), trainable=True)
    beta, _gamma, mean, _variance = _batch_norm_variables(layer)
    model = keras.Model(inputs, layer(inputs))
    model.compile(keras.optimizers.SGD(0.1), "mean_squared_error", run_eagerly=True)
    # Batch mean 12: the batch norm learns scale and offset that map x to 2x.
    x = np.array([[11.0], [12.0], [13.0]], np.float32)
    model.fit(x, 2 * x, batch_size=len(x), epochs=100, verbose=0)
    np.testing.assert_allclose(mean.numpy(), [12.0], rtol=1e-5)
    np.testing.assert_allclose(beta.numpy(), [24.0], rtol=1e-5)
    np.testing.assert_allclose(model(x), 2 * x, rtol=1e-5)
    # Inference uses the moving statistics, whatever the batch, and updates nothing.
    other = np.array([[10.0], [20.0], [30.0]], np.float32)
    for _ in range(100):
        np.testing.assert_allclose(model(other), 2 * other, rtol=1e-5)
    np.testing.assert_allclose(mean.numpy(), [12.0], rtol=1e-5)
    np.testing.assert_allclose(beta.numpy(), [24.0], rtol=1e-5)


@FORMATS
def test_batch_norm_freezing(saved, fmt):
    """KerasTest.testBatchNormFreezing (SavedRaw, SavedFromKeras)."""
    inputs = keras.Input((1,), dtype="float32")
    layer = exporter.KerasLayer(saved(write_batch_norm, fmt), trainable=False)
    variables = _batch_norm_variables(layer)
    dense = keras.layers.Dense(
        1, use_bias=False, kernel_initializer=keras.initializers.Constant([[1.5]])
    )
    model = keras.Model(inputs, dense(layer(inputs)))
    initial = [[0.0], [1.0], [0.0], [1.0]]  # beta, gamma, moving mean, moving variance
    np.testing.assert_allclose([v.numpy() for v in variables], initial)
    model.compile(keras.optimizers.SGD(0.1), "mean_squared_error", run_eagerly=True)
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    model.fit(x, 2 * x, batch_size=len(x), epochs=20, verbose=0)
    np.testing.assert_allclose([v.numpy() for v in variables], initial)  # Not one moved.
    np.testing.assert_allclose(model(x), 2 * x, rtol=1e-5)  # The Dense learnt it all.


@FORMATS
def test_custom_attributes_through_resolved_object(saved, fmt):
    """KerasTest.testCustomAttributes (SavedRaw, SavedFromKeras)."""
    layer = exporter.KerasLayer(saved(write_custom_attributes, fmt))
    expected = layer.resolved_object.sample_output.value().numpy()
    asset = layer.resolved_object.sample_input.asset_path.numpy().decode()
    with tf.io.gfile.GFile(asset) as file:
        text = tf.constant([[file.read()]], dtype=tf.string)
    outputs = layer(text)
    assert outputs.dtype == tf.int64  # Not cast to the layer's float dtype.
    np.testing.assert_array_equal(outputs.numpy(), expected)
    assert expected.tolist() == [[12345]]


@pytest.mark.parametrize("with_shapes", [False, True], ids=["no_output_shapes", "output_shapes"])
def test_input_output_dict(saved, with_shapes):
    """KerasTest.testInputOutputDict (NoOutputShapes, WithOutputShapes)."""
    # Keras 3 keys a functional model's dict inputs by the Inputs' names.
    x_in = keras.Input((1,), dtype="float32", name="x")
    y_in = keras.Input((1,), dtype="float32", name="y")
    kwargs = dict(arguments=dict(return_dict=True))  # Not the first trace: that returns sigma.
    if with_shapes:
        kwargs["output_shape"] = dict(sigma=(2,), delta=(1,))
    layer = exporter.KerasLayer(saved(write_dict_in_out), **kwargs)
    out = layer(dict(x=x_in, y=y_in))
    assert set(out) == {"sigma", "delta"}
    concat = keras.layers.concatenate([out["delta"], out["sigma"]])
    model = keras.Model(dict(x=x_in, y=y_in), [out["delta"], out["sigma"], concat])
    x = np.array([[11.0], [22.0], [33.0]], np.float32)
    y = np.array([[1.0], [2.0], [3.0]], np.float32)
    outputs = model(dict(x=x, y=y))
    assert len(outputs) == 3
    delta, sigma, concat = (np.asarray(o) for o in outputs)
    np.testing.assert_allclose(delta, [[10.0], [20.0], [30.0]])
    np.testing.assert_allclose(sigma, [[12.0, 13.0], [24.0, 26.0], [36.0, 39.0]])
    np.testing.assert_allclose(concat, [[10, 12, 13], [20, 24, 26], [30, 36, 39]])
    new_layer = exporter.KerasLayer.from_config(_json_cycle(layer.get_config()))
    # hub leaves _output_shape unset when none is given; here it is None, in the config too.
    assert new_layer.get_config()["output_shape"] == layer.get_config()["output_shape"]
    assert new_layer._output_shape == layer._output_shape
    assert layer.get_config()["output_shape"] == (
        {"sigma": [2], "delta": [1]} if with_shapes else None
    )


@pytest.mark.parametrize("with_shapes", [False, True], ids=["no_output_shapes", "output_shapes"])
def test_output_shape_list(saved, with_shapes):
    """KerasTest.testOutputShapeList (NoOutputShapes, WithOutputShapes)."""
    kwargs = dict(output_shape=[[1], [2, 2], [3, 3, 3]]) if with_shapes else {}
    inputs = keras.Input((1,), dtype="float32")
    layer = exporter.KerasLayer(saved(write_obscure_list), **kwargs)
    out = layer(inputs)
    expected_shapes = [(None, 1), (None, 2, 2), (None, 3, 3, 3)]
    if not with_shapes:  # The trace knows only the ranks.
        expected_shapes = [(None, None), (None, None, None), (None, None, None, None)]
    assert [o.shape for o in out] == expected_shapes
    model = keras.Model(inputs, out)
    outputs = model(np.array([[1.0], [10.0]], np.float32))
    assert len(outputs) == 3
    single, double, triple = (np.asarray(o) for o in outputs)
    np.testing.assert_allclose(single, [[1.0], [10.0]])
    np.testing.assert_allclose(double, [[[2.0, 2.0], [2.0, 2.0]], [[20.0, 20.0], [20.0, 20.0]]])
    np.testing.assert_allclose(triple, np.reshape([3.0] * 27 + [30.0] * 27, (2, 3, 3, 3)))
    new_layer = exporter.KerasLayer.from_config(_json_cycle(layer.get_config()))
    assert new_layer._output_shape == layer._output_shape
    assert layer.get_config()["output_shape"] == ([[1], [2, 2], [3, 3, 3]] if with_shapes else None)


@pytest.mark.parametrize("fmt", [RAW, FROM_KERAS])
def test_compute_output_shape(saved, fmt):
    """KerasTest.testComputeOutputShape (SavedRaw, SavedFromKeras)."""
    layer = exporter.KerasLayer(saved(write_half_plus_one, fmt))
    # Keras 3's compute_output_shape gives a tuple (tf-keras: a TensorShape, hence as_list()).
    assert layer.compute_output_shape((10, 1)) == (10, 1)
    layer.get_config()


@FORMATS
def test_compute_output_shape_with_other_input_dtypes(saved, fmt):
    """KerasTest.testComputeOutputShapeDifferentDtypes (SavedRaw, SavedFromKeras)."""
    path = saved(write_text_embedding, fmt)
    layer = exporter.KerasLayer(path, output_shape=(2,))
    assert layer.compute_output_shape((None, 1)) == (None, 2)
    assert layer.compute_output_shape((3, 1)) == (3, 2)
    # Beyond upstream: the traced string input's shape suffices without output_shape too.
    assert exporter.KerasLayer(path).compute_output_shape((3, 1)) == (3, 2)


@FORMATS
def test_resave_with_mixed_precision(saved, fmt, tmp_path):
    """KerasTest.testResaveWithMixedPrecision (SavedRaw, SavedFromKeras)."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((1,), dtype="string")
        layer = exporter.KerasLayer(saved(write_text_embedding, fmt), trainable=True)
        model = keras.Model(inputs, layer(inputs))
        model.compile(
            keras.optimizers.SGD(0.002, momentum=0.001), "mean_squared_error", run_eagerly=True
        )
        # Keras 3's fit refuses NumPy string arrays ("Invalid dtype: str96"); a tf.string
        # tensor passes (tf-keras took the Python lists).
        x = tf.constant([["a"], ["aa"], ["aaa"]])
        y = np.array([[1.0], [2.0], [3.0]], np.float32)
        model.fit(x, y, verbose=0)
        # tf-keras models are given to tf.saved_model.save; Keras 3's way is model.export.
        model.export(str(tmp_path / "resaved"), verbose=False)
    finally:
        keras.config.set_dtype_policy("float32")
    resaved = tf.saved_model.load(str(tmp_path / "resaved"))
    np.testing.assert_allclose(
        resaved.serve(x), model(x), rtol=1e-3
    )  # The fine-tuned weights went with it.


@FORMATS
def test_get_config_from_config(saved, fmt):
    """KerasTest.testGetConfigFromConfig (SavedRaw, SavedFromKeras)."""
    layer = exporter.KerasLayer(saved(write_half_plus_one, fmt))
    value = np.array([[10.0]], np.float32)
    result = layer(value).numpy()
    new_layer = exporter.KerasLayer.from_config(_json_cycle(layer.get_config()))
    assert new_layer(value).numpy() == result
    assert result.tolist() == [[6.0]]


def test_get_config_from_config_with_hparams(saved):
    """KerasTest.testGetConfigFromConfigWithHParams."""
    layer = exporter.KerasLayer(saved(write_hparams), arguments=dict(a=10.0))  # b stays 0.
    value = np.array([[1.0], [2.0], [3.0]], np.float32)
    result = layer(value).numpy()
    np.testing.assert_array_equal(result, [[10.0], [20.0], [30.0]])
    new_layer = exporter.KerasLayer.from_config(_json_cycle(layer.get_config()))
    np.testing.assert_array_equal(new_layer(value).numpy(), result)


@FORMATS
def test_save_model_config(saved, fmt):
    """KerasTest.testSaveModelConfig (SavedRaw, SavedFromKeras)."""
    model = keras.Sequential([exporter.KerasLayer(saved(write_half_plus_one, fmt))])
    value = np.array([[10.0]], np.float32)
    result = np.asarray(model(value))
    new_model = keras.models.model_from_json(
        model.to_json(), custom_objects={"KerasLayer": exporter.KerasLayer}
    )
    assert np.asarray(new_model(value)) == result
    assert result.tolist() == [[6.0]]


# -- KerasLayerTest ---------------------------------------------------------------------------


# Upstream's three ways to read plus-one: __call__, a signature's dict, one of its keys.
SIGNATURE_CASES = [
    (None, None, False), ("serving_default", None, True), ("serving_default", "output_0", False)
]  # fmt: skip


def _plus_one_layer(saved, signature, output_key, as_dict):
    return exporter.KerasLayer(
        saved(write_plus_one),
        signature=signature,
        output_key=output_key,
        signature_outputs_as_dict=as_dict,
    )


def test_load_with_defaults(saved):
    """KerasLayerTest.test_load_with_defaults."""
    layer = exporter.KerasLayer(saved(write_plus_one))
    assert float(layer(10.0)) == 11.0  # A Python float, passed positionally.


@pytest.mark.parametrize("signature, output_key, as_dict", SIGNATURE_CASES)
def test_load_callable_saved_model_with_signature(saved, signature, output_key, as_dict):
    """KerasLayerTest.test_load_callable_saved_model_v2_with_signature (its 3 cases)."""
    layer = _plus_one_layer(saved, signature, output_key, as_dict)
    output = layer(10.0)
    if as_dict:
        assert isinstance(output, dict)
        assert float(output["output_0"]) == 11.0
    else:
        assert float(output) == 11.0


def test_load_callable_keras_default_saved_model_with_signature(saved):
    """KerasLayerTest.test_load_callable_keras_default_saved_model_v2_with_signature."""
    path = saved(write_plus_one_keras_default)
    layer = exporter.KerasLayer(path, signature="plus_one", signature_outputs_as_dict=True)
    output = layer(10.0)
    assert isinstance(output, dict)
    assert float(output["output_0"]) == 11.0
    # Beyond upstream: __call__ takes training as a tensor; frozen, training=True is inference.
    assert float(exporter.KerasLayer(path)(10.0, training=True)) == 10.0
    assert float(exporter.KerasLayer(path, trainable=True)(10.0, training=True)) == 11.0


@pytest.mark.parametrize("signature, output_key, as_dict", SIGNATURE_CASES)
def test_keras_layer_get_config(saved, signature, output_key, as_dict):
    """KerasLayerTest.test_keras_layer_get_config (its 3 cases)."""
    layer = _plus_one_layer(saved, signature, output_key, as_dict)
    outputs = layer(10.0)
    new_layer = exporter.KerasLayer.from_config(_json_cycle(layer.get_config()))
    new_outputs = new_layer(10.0)
    if as_dict:
        assert {k: float(v) for k, v in new_outputs.items()} == {"output_0": 11.0}
        assert set(outputs) == set(new_outputs)
    else:
        assert float(new_outputs) == float(outputs) == 11.0


def test_fails_if_signature_output_not_specified(saved):
    """KerasLayerTest.test_keras_layer_fails_if_signature_output_not_specified."""
    with pytest.raises(ValueError, match="signature='serving_default', pass exactly one of "
                       r"output_key=.* or signature_outputs_as_dict=True"):  # fmt: skip
        exporter.KerasLayer(saved(write_plus_one), signature="serving_default")


def test_fails_if_with_outputs_as_dict_but_no_signature(saved):
    """KerasLayerTest.test_keras_layer_fails_if_with_outputs_as_dict_but_no_signature."""
    with pytest.raises(ValueError, match="signature_outputs_as_dict=True is only valid with a "
                       "signature"):  # fmt: skip
        exporter.KerasLayer(saved(write_plus_one), signature_outputs_as_dict=True)


def test_fails_if_saved_model_v2_with_tags(saved):
    """KerasLayerTest.test_keras_layer_fails_if_saved_model_v2_with_tags."""
    with pytest.raises(ValueError, match=r"Unknown tags \['train'\].*tagged: \[\['serve'\]\]"):
        exporter.KerasLayer(saved(write_plus_one), signature=None, tags=["train"])
    assert float(exporter.KerasLayer(saved(write_plus_one), tags=["serve"])(1.0)) == 2.0


def test_fails_if_setting_both_output_key_and_as_dict(saved):
    """KerasLayerTest.test_keras_layer_fails_if_setting_both_output_key_and_as_dict."""
    with pytest.raises(ValueError, match="signature='default', pass exactly one of output_key"):
        exporter.KerasLayer(
            saved(write_plus_one),
            signature="default",
            signature_outputs_as_dict=True,
            output_key="output",
        )


def test_fails_if_output_is_not_dict(saved):
    """KerasLayerTest.test_keras_layer_fails_if_output_is_not_dict."""
    layer = exporter.KerasLayer(saved(write_plus_one), output_key="output_0")
    with pytest.raises(ValueError, match="output_key='output_0' picks one output of a dict, "
                       "but the SavedModel's __call__ returns a single tensor"):  # fmt: skip
        layer(10.0)


def test_fails_if_signature_trainable(saved):
    """KerasLayerTest.test_keras_layer_fails_if_signature_trainable."""
    layer = exporter.KerasLayer(
        saved(write_plus_one),
        signature="serving_default",
        signature_outputs_as_dict=True,
        trainable=True,
    )
    layer.trainable = True
    with pytest.raises(ValueError, match="trainable=True is unsupported when calling a "
                       "SavedModel signature"):  # fmt: skip
        layer(10.0)


def test_logs_if_training_zero_variables(saved, caplog):
    """KerasLayerTest.test_keras_layer_logs_if_training_zero_variables."""
    layer = exporter.KerasLayer(saved(write_hparams), trainable=True)
    with caplog.at_level(logging.ERROR):
        layer([[10.0]])
        layer([[10.0]])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # Logged once, not on every call.
    assert "zero trainable weights" in errors[0].getMessage()


# -- beyond the upstream suite --------------------------------------------------------------


def test_text_embedding_fine_tunes_and_round_trips_a_keras_file(saved, tmp_path):
    """A string-input SavedModel (written as upstream writes one) fine-tunes in Keras 3, and
    a .keras file of the fine-tuned model loads back with the same outputs."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,), dtype="string")
    layer = exporter.KerasLayer(saved(write_text_embedding, RAW), trainable=True)
    model = keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)))
    model.compile(keras.optimizers.SGD(0.01), "mean_squared_error")
    x = tf.constant([["a"], ["abcd"], ["ab"], ["abcdef"]])  # Keras 3's fit takes no NumPy str.
    y = np.array([[1.0], [4.0], [2.0], [6.0]], np.float32)
    kernel = layer.resolved_object.trainable_variables[0]
    before = kernel.numpy().copy()
    history = model.fit(x, y, epochs=5, batch_size=4, verbose=0).history["loss"]
    assert history[-1] < history[0]
    assert not np.array_equal(kernel.numpy(), before)  # The SavedModel's own variable moved.
    model.save(tmp_path / "text.keras")
    loaded = keras.models.load_model(tmp_path / "text.keras")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    (inner,) = [lay for lay in loaded.layers if isinstance(lay, exporter.KerasLayer)]
    np.testing.assert_allclose(inner.resolved_object.trainable_variables[0], kernel.numpy())
    assert not np.allclose(inner(x), exporter.KerasLayer(inner.handle)(x))  # Not the original.


def test_inputs_of_any_dtype_and_structure(saved):
    """Ints, strings and nested Python lists convert to the traced dtype; lists of tensors and
    dicts pass as they are; floats of another dtype are cast to the traced one."""
    strings = exporter.KerasLayer(saved(write_text_embedding, RAW))
    np.testing.assert_allclose(strings([["abc"]]), [[0.3, 0.9]], rtol=1e-6)
    np.testing.assert_allclose(strings(np.array([["abc"]])), [[0.3, 0.9]], rtol=1e-6)
    affine = exporter.KerasLayer(saved(write_hparams), arguments=dict(b=1.0))
    np.testing.assert_array_equal(affine([[2]]), [[3.0]])  # Python ints, traced float32.
    np.testing.assert_array_equal(affine(np.array([[2.0]], np.float64)), [[3.0]])
    np.testing.assert_array_equal(affine(tf.constant([[2.0]], tf.float16)), [[3.0]])
    dicts = exporter.KerasLayer(saved(write_dict_in_out))
    np.testing.assert_array_equal(dicts(dict(x=[[1.0]], y=[[2.0]])), [[3.0, 5.0]])


def test_load_options_are_passed_and_checked(saved):
    """``load_options`` reaches ``tf.saved_model.load``; anything else is refused clearly."""
    options = tf.saved_model.LoadOptions(allow_partial_checkpoint=True)
    layer = exporter.KerasLayer(saved(write_plus_one), load_options=options)
    assert layer.load_options is options and float(layer(1.0)) == 2.0
    with pytest.raises(TypeError, match="load_options to be a tf.saved_model.LoadOptions.*dict"):
        exporter.KerasLayer(saved(write_plus_one), load_options={})


def test_output_shape_that_does_not_fit_is_refused(saved):
    """A wrong ``output_shape`` (structure or shape) fails with both named."""
    inputs = keras.Input((1,), dtype="float32")
    with pytest.raises(ValueError, match=r"output_shape in the structure.*Received "
                       r"output_shape=\[\[1\], \[2, 2\]\]"):  # fmt: skip
        exporter.KerasLayer(saved(write_obscure_list), output_shape=[[1], [2, 2]])(inputs)
    layer = exporter.KerasLayer(saved(write_obscure_list), output_shape=[[1], [2, 3], [3, 3, 3]])
    with pytest.raises(ValueError, match=r"Expected an output of shape \[2, 2, 3\]"):
        layer(np.array([[1.0], [2.0]], np.float32))
    # The traced rank is unknown here: Keras 3 needs one to build a model.
    with pytest.raises(ValueError, match="pass output_shape="):
        exporter.KerasLayer(saved(write_plus_one))(inputs)
    plus_one = exporter.KerasLayer(saved(write_plus_one), output_shape=[1])
    assert plus_one(inputs).shape == (None, 1)
