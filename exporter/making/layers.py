"""What an export reads off Keras models, and sets on their layers while it traces.

Both Keras generations: a Keras 3 model (functional, sequential or subclassed) or a tf-keras
(Keras 2) one. Their ``tf.Variable``s, regularization losses, output width, declared input
size, batch norms, and the exports nested in them (``NestedExport``).
"""

from __future__ import annotations

import contextlib
from typing import Protocol, runtime_checkable

import keras
import tensorflow as tf

from exporter import spec
from exporter.errors import ExportError


@runtime_checkable
class NestedExport(Protocol):
    """What a layer that wraps a reusable SavedModel offers the module around it.

    ``exporter.KerasLayer`` is one. The making side finds it by this protocol, never by its
    class: making never imports the use side.
    """

    trainable: bool
    #: The numeric hparams of the wrapped ``__call__``, with their values in this layer.
    hparams: dict
    #: Scalar tensors by hparam name, set while the outer export traces; else None.
    hparam_overrides: dict | None
    #: The wrapped export's ``input`` facts (min_size, native_size, ...), if it has ours.
    input_facts: dict | None
    #: Its zero-argument regularization loss functions.
    regularization_losses: list


def tf_variable(variable) -> tf.Variable:
    """Return the ``tf.Variable`` behind a Keras 3 variable (or the variable itself)."""
    if isinstance(variable, tf.Variable):
        return variable
    inner = getattr(variable, "value", None)
    if isinstance(inner, tf.Variable):
        return inner
    raise TypeError(
        f"Expected a Keras variable backed by a tf.Variable (the TensorFlow backend). "
        f"Received: {type(variable).__name__} {getattr(variable, 'path', variable)!r}."
    )


def unique(variables) -> list:
    seen, kept = set(), []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            kept.append(variable)
    return kept


def scalar_loss(compute) -> tf.function:
    @tf.function(input_signature=[])
    def loss():
        return tf.cast(compute(), tf.float32)

    return loss


def regularization_losses(layers, keras_trainable, inner=()) -> list:
    """One zero-argument function per weight regularizer, for both Keras generations."""
    losses = [scalar_loss(fn) for i in inner if i.trainable for fn in i.regularization_losses]
    for variable in keras_trainable:
        regularizer = getattr(variable, "regularizer", None)  # Keras 3 keeps them here.
        if regularizer is not None:
            inner = tf_variable(variable)
            losses.append(scalar_loss(lambda r=regularizer, v=inner: r(v)))
    for layer in layers:
        if is_tf_keras(layer):  # tf-keras keeps zero-argument callables on each layer.
            for sublayer in layer._flatten_layers():
                losses += [scalar_loss(fn) for fn in sublayer._callable_losses]
    return losses


def check_backbone(backbone) -> None:
    """Raise TypeError unless ``backbone`` is a Keras 3 (TensorFlow backend) or tf-keras model."""
    if not isinstance(backbone, keras.Model) and not is_tf_keras(backbone):
        raise TypeError(
            f"Expected a Keras 3 or tf-keras model as backbone. Received: {backbone!r}."
        )
    backend = keras.backend.backend()
    if isinstance(backbone, keras.Model) and backend != "tensorflow":
        raise TypeError(
            f"A module wraps the model's tf.Variables: it needs the TensorFlow backend "
            f"(KERAS_BACKEND=tensorflow); received {backend}. Use exporter.export_feature_vector"
            f"(model, out, ...) or export_classifier: they rebuild it under TensorFlow."
        )


def is_tf_keras(model) -> bool:
    """Whether ``model`` is a tf-keras (Keras 2) model rather than a Keras 3 one."""
    return type(model).__module__.startswith("tf_keras") and hasattr(model, "_flatten_layers")


def _known_outputs(model) -> bool:
    try:
        return bool(model.outputs)
    except (AttributeError, ValueError):  # Subclassed models have no symbolic outputs.
        return False


def static_input_size(model) -> int | None:
    """The one height and width ``model``'s input declares, or None when they are free.

    A Keras model built on ``Input((32, 32, 3))`` may trace at other sizes and still fail
    there (a learned position embedding, a static reshape): its export is fixed-size.

    Raises:
        ValueError: If the declared height and width differ (only square sizes are fixed).
    """
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # Subclassed models declare no input.
        return None
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        return None
    shape = tuple(inputs[0].shape)
    if shape[1] is None and shape[2] is None:
        return None
    if shape[1] != shape[2]:
        raise ValueError(
            "Expected a backbone whose input has a free height and width, or one square size. "
            f"Received input shape {shape}."
        )
    return int(shape[1])


def feature_width(model, size: int) -> int:
    """Return the channel width of ``model``'s output, found symbolically at ``size``."""
    shape = (1, size, size, spec.CHANNELS)
    if is_tf_keras(model):
        output = tf.TensorSpec(model.compute_output_shape(shape))
    elif isinstance(model, keras.Model) and _known_outputs(model):
        # Functional and sequential models know their output from construction; a symbolic
        # call could trip over nested models built for a fixed size (ConvNeXt's stem).
        output = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    else:
        output = model.compute_output_spec(keras.KerasTensor(shape))
    if isinstance(output, (list, tuple, dict)):
        raise ValueError(
            f"Expected a backbone with one output (a feature map or pooled features). "
            f"Received a model with outputs {output}."
        )
    if len(output.shape) not in (2, 4):
        raise ValueError(
            "Expected a backbone whose output is a [batch, height, width, channels] feature "
            f"map or [batch, features]. Received output shape {output.shape}."
        )
    return int(output.shape[-1])


def sublayers(layer) -> list:
    """``layer`` and every layer nested in it, for both Keras generations."""
    if hasattr(layer, "_flatten_layers"):
        return list(layer._flatten_layers(include_self=True, recursive=True))
    return [layer]


def nested_exports(layers) -> list:
    """Sublayers that wrap a reusable SavedModel (``exporter.KerasLayer``).

    Found by what they offer, not by class: the making side never imports the using side.
    Their hparams join the module's, and their regularization losses its own.
    """
    found = [s for layer in layers for s in sublayers(layer)]
    return unique(s for s in found if isinstance(s, NestedExport))


def nested_sizes(inner, min_size: int, fixed_size, native_size):
    """Narrow the admissible sizes to those of the wrapped exports that document theirs."""
    for layer in inner:
        facts = layer.input_facts or {}
        if isinstance(facts.get("min_size"), int):
            min_size = max(min_size, facts["min_size"])
        if facts.get("fixed_size") and fixed_size is None:
            fixed_size = facts.get("max_size")
        if native_size is None and isinstance(facts.get("native_size"), int):
            native_size = facts["native_size"]
    if native_size is not None:
        native_size = max(native_size, min_size)
    return min_size, fixed_size, native_size


def batch_norms(layers) -> list:
    # Both Keras generations (and synchronized variants) keep these two attributes.
    found = [s for layer in layers for s in sublayers(layer)]
    return unique(s for s in found if hasattr(s, "moving_mean") and hasattr(s, "momentum"))


@contextlib.contextmanager
def overridden(layers, attribute: str, value):
    """Set ``attribute`` of every layer to ``value`` while tracing, then restore it."""
    if value is None:
        yield
        return
    saved = [getattr(layer, attribute) for layer in layers]
    try:
        for layer in layers:
            setattr(layer, attribute, value)
        yield
    finally:
        for layer, old in zip(layers, saved, strict=True):
            setattr(layer, attribute, old)


def admissible_sizes(backbone, nested, min_size: int, fixed_size, native_size):
    """``(min_size, fixed_size, native_size)``, narrowed by the nested exports and by the
    backbone's declared input size (a body built for one size is fixed at it)."""
    min_size, fixed_size, native_size = nested_sizes(nested, min_size, fixed_size, native_size)
    static = static_input_size(backbone)
    if static is not None and fixed_size not in (None, static):
        raise ValueError(
            f"Expected fixed_size to match the backbone's input size {static}. Received: "
            f"fixed_size={fixed_size} (given, or a nested export's fixed size)."
        )
    fixed_size = static if static is not None else fixed_size
    if fixed_size is not None:
        min_size = fixed_size
    return min_size, fixed_size, native_size


KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


def add_weight_decay(layers, weight_decay: float) -> None:
    """Attach an L2 regularizer of ``weight_decay`` to every kernel that has none yet.

    Regularizers a model already has are kept. The penalty is ``weight_decay *
    sum(kernel ** 2)`` (``keras.regularizers.L2``), added to the loss as it is.
    """
    if weight_decay < 0:
        raise ExportError(f"Expected weight_decay >= 0. Received: {weight_decay}.")
    if not weight_decay:
        return
    for layer in layers:
        for variable in layer.trainable_variables:
            if variable.name in KERNELS and getattr(variable, "regularizer", None) is None:
                variable.regularizer = keras.regularizers.L2(weight_decay)


POOLINGS = ("avg", "max")  # Of a feature map, by the module.
# Of a backbone that pools inside (a keras-hub classifier's body): documented, not applied.
# "none": features [batch, n] used as they are (a .keras model that outputs them).
POOLED_INSIDE = ("token", "gap", "flatten", "map", "none")


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is known, else a ValueError listing the known ones."""
    if pooling not in POOLINGS + POOLED_INSIDE:
        known = ", ".join(POOLINGS + POOLED_INSIDE)
        raise ValueError(f"Unknown pooling {pooling!r}; known: {known}.")
    return pooling


def described_pooling(backbone, pooling: str | None) -> tuple[str, str]:
    """The pooling a module documents, and what its features are in words, by default.

    ``None`` is ``"avg"`` for a backbone that outputs a feature map (or does not declare its
    output), and ``"none"`` for one that declares ``[batch, n]`` features, used as they are:
    the card never names a pooling the graph does not do.
    """
    if pooling is None:
        shape = _declared_output_shape(backbone)
        if shape is not None and len(shape) == 2:
            return "none", f"the model's own output ({shape[-1]} features), used as it is"
        pooling = "avg"
    check_pooling(pooling)
    return pooling, f"the {pooling}-pooled last feature map"


def _declared_output_shape(model) -> tuple | None:
    try:
        outputs = list(model.outputs or [])
    except (AttributeError, ValueError):  # Subclassed models declare no output.
        return None
    return tuple(outputs[0].shape) if len(outputs) == 1 else None


def pooled(features: tf.Tensor, pooling: str) -> tf.Tensor:
    """A feature map pooled globally by ``pooling``; pooled features as they are."""
    if features.shape.rank != 4:
        return features
    if pooling not in POOLINGS:
        raise ValueError(
            f"Expected pooling {' or '.join(POOLINGS)} for a backbone that outputs a feature "
            f"map. Received: pooling={pooling!r}."
        )
    reduce = tf.reduce_mean if pooling == "avg" else tf.reduce_max
    return reduce(features, axis=[1, 2])
