"""Graph rewrites while an export traces: fused batch norm, and one shared swish.

Neither changes what the model computes; both change how the traced graph computes it, so
that the export fine-tunes as fast as tf-keras does and saves small. ``Rewrites.applied``
is the one context manager the module traces under; outside it the Keras layers are as the
user made them. See ``BUILD_NOTES.md`` ("Tracing and saving") for the measurements.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from exporter.making.layers import overridden, sublayers, unique


class Rewrites:
    """The layers of one module that trace differently, and the context that does it.

    Args:
        layers: The module's Keras models (backbone, head).
        norms: Their batch norms (``layers.batch_norms``).
    """

    def __init__(self, layers, norms):
        self.swish_layers = _swish_layers(layers)
        self.fused_norms = _fusable_batch_norms(norms)

    @contextlib.contextmanager
    def applied(self, training: bool):
        """Trace with every swish shared and, for ``training``, batch norm fused."""
        with (
            overridden(self.swish_layers, "activation", shared_silu),
            _fused_training(self.fused_norms, training),
        ):
            yield


# TensorFlow's fused kernel refuses a smaller epsilon (tf.compat.v1.nn.fused_batch_norm).
_FUSED_MIN_EPSILON = 1.001e-5


def _fusable_batch_norms(norms) -> list:
    """The Keras 3 batch norms whose training pass can run TensorFlow's fused kernel.

    Keras 3 computes a training pass's batch norm from separate ops (the moments, then the
    normalization) and their gradients; tf-keras, and TensorFlow models generally, run one
    fused kernel each way. Only plain ``keras.layers.BatchNormalization`` over the channels
    of a channels-last map qualifies: not renorm, not synchronized across replicas, not a
    subclass with its own ``call``.
    """
    plain = keras.layers.BatchNormalization
    return [
        n for n in norms
        if isinstance(n, plain) and type(n).call is plain.call and not n.renorm
        and not n.synchronized and n.axis in (-1, 3) and n.epsilon >= _FUSED_MIN_EPSILON
    ]  # fmt: skip


def _fused_training_call(layer):
    """``layer.call``, computing a training pass on 4-D float inputs with the fused kernel.

    It computes what Keras 3's own training pass does: outputs normalized by the batch's
    mean and (biased) variance, and the moving statistics updated with ``layer.momentum``
    from that mean and variance (the kernel reports the variance with Bessel's correction,
    undone here). Anything else (inference, a mask, another rank or dtype) is Keras' own.
    """
    keras_call = type(layer).call.__get__(layer)
    floats = (tf.float16, tf.bfloat16, tf.float32)

    def call(inputs, training=None, mask=None):
        inputs = tf.convert_to_tensor(inputs)
        if (
            not (training and layer.trainable) or mask is not None
            or inputs.shape.rank != 4 or inputs.dtype not in floats
        ):  # fmt: skip
            return keras_call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # As Keras 3 computes batch norm: in float32.
        channels = x.shape[-1]
        gamma = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones([channels])
        beta = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros([channels])
        outputs, mean, corrected = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=layer.epsilon, data_format="NHWC", is_training=True
        )
        count = tf.cast(tf.reduce_prod(tf.shape(x, out_type=tf.int64)[:-1]), tf.float32)
        variance = corrected * (tf.maximum(count - 1.0, 1.0) / count)
        momentum = tf.cast(layer.momentum, tf.float32)
        moving_mean = tf.cast(layer.moving_mean, tf.float32)
        moving_variance = tf.cast(layer.moving_variance, tf.float32)
        layer.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, layer.compute_dtype)

    return call


@contextlib.contextmanager
def _fused_training(norms, training: bool):
    """While tracing a training pass, each of ``norms`` (``_fusable_batch_norms``) calls
    ``_fused_training_call``; Keras' own ``call`` is back afterwards."""
    if not training:
        yield
        return
    try:
        for norm in norms:
            norm.__dict__["call"] = _fused_training_call(norm)
        yield
    finally:
        for norm in norms:
            norm.__dict__.pop("call", None)


# One traced swish per dtype, shared by every activation of every module in the process.
_SILU_FUNCTIONS: dict = {}


def shared_silu(x):
    """swish (silu), ``tf.nn.silu`` itself, called through one traced function per dtype.

    ``tf.nn.silu``, which both Keras generations call, wraps itself in a custom gradient (it
    keeps only its input for the backward pass). Called inline, each activation registers
    its own gradient, and the saver traces every one of them for every saved function
    (most of an EfficientNet save's time: ``BUILD_NOTES.md``, "Tracing and saving").
    Through one shape-free function the gradient is registered and saved once; forward
    values, gradients and training memory stay those of ``tf.nn.silu``.
    """
    x = tf.convert_to_tensor(x)
    function = _SILU_FUNCTIONS.get(x.dtype)
    if function is None:
        traced = tf.function(tf.nn.silu, autograph=False)
        function = traced.get_concrete_function(tf.TensorSpec(None, x.dtype))
        _SILU_FUNCTIONS[x.dtype] = function
    y = function(x)
    y.set_shape(x.shape)  # A shape-free function returns a tensor of unknown rank.
    return y


def _is_silu(function) -> bool:
    """Whether ``function`` is Keras' or tf-keras' own swish/silu activation."""
    if function is keras.activations.silu:
        return True
    module = getattr(function, "__module__", "") or ""
    return getattr(function, "__name__", None) in ("silu", "swish") and module.startswith(
        ("keras.", "tf_keras.")
    )


def _swish_layers(layers) -> list:
    found = [s for layer in layers for s in sublayers(layer)]
    return unique(s for s in found if _is_silu(getattr(s, "activation", None)))
