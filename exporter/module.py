"""The exported object: a ``tf.Module`` that keeps the reusable SavedModel image API.

It wraps a Keras backbone (and, for classification, a head) and exposes exactly what
``SPEC.md`` lists: ``__call__(images, training=False)``, ``variables``,
``trainable_variables``, ``regularization_losses`` and a ``serving_default`` function.
Saving lives in ``exporter.save``; nothing here writes files.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from exporter import spec
from exporter.preprocessing import check_mode, preprocess

POOLINGS = ("avg", "max")
ACTIVATIONS = ("softmax", "sigmoid")


class _Hidden:
    """Holds Keras objects out of the SavedModel's object graph.

    A Keras 3 variable is a wrapper around a ``tf.Variable``; if the Keras model were an
    attribute, the saver would store both (``model.export`` does: a ResNet50 doubles to
    181 MB). The module tracks the inner ``tf.Variable``s in plain lists instead.
    """

    def __init__(self, **objects):
        self.__dict__.update(objects)


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


def _unique(variables) -> list:
    seen, kept = set(), []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            kept.append(variable)
    return kept


def _scalar_loss(compute) -> tf.function:
    @tf.function(input_signature=[])
    def loss():
        return tf.cast(compute(), tf.float32)

    return loss


def _regularization_losses(layers, keras_trainable) -> list:
    """One zero-argument function per weight regularizer, for both Keras generations."""
    losses = []
    for variable in keras_trainable:
        regularizer = getattr(variable, "regularizer", None)  # Keras 3 keeps them here.
        if regularizer is not None:
            inner = tf_variable(variable)
            losses.append(_scalar_loss(lambda r=regularizer, v=inner: r(v)))
    for layer in layers:
        if is_tf_keras(layer):  # tf-keras keeps zero-argument callables on each layer.
            for sublayer in layer._flatten_layers():
                losses += [_scalar_loss(fn) for fn in sublayer._callable_losses]
    return losses


def is_tf_keras(model) -> bool:
    """Whether ``model`` is a tf-keras (Keras 2) model rather than a Keras 3 one."""
    return type(model).__module__.startswith("tf_keras") and hasattr(model, "_flatten_layers")


def _known_outputs(model) -> bool:
    try:
        return bool(model.outputs)
    except (AttributeError, ValueError):  # Subclassed models have no symbolic outputs.
        return False


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


def new_head(num_classes: int, dropout_rate: float = 0.0) -> keras.Sequential:
    """A new classifier: ``Dropout(dropout_rate) -> Dense(num_classes)``, giving logits."""
    return keras.Sequential(
        [keras.layers.Dropout(dropout_rate), keras.layers.Dense(num_classes)], name="classifier"
    )


class ImageModule(tf.Module):
    """A Keras backbone (plus an optional head) behind the reusable SavedModel image API.

    The backbone is a Keras 3 model (functional, sequential or subclassed) or a tf-keras
    (Keras 2) model. Use ``FeatureVectorModule`` or ``ClassifierModule``; this base holds
    what they share.
    """

    # tf.Module defines these as computed properties; the reusable SavedModel API needs them
    # as saved attributes, so they are plain lists here.
    variables = None
    trainable_variables = None

    def __init__(
        self,
        backbone,
        *,
        task: str,
        output_name: str,
        preprocessing: str,
        pooling: str = "avg",
        head: keras.Layer | None = None,
        min_size: int = 32,
        fixed_size: int | None = None,
        native_size: int | None = None,
        source: str | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if not isinstance(backbone, keras.Model) and not is_tf_keras(backbone):
            raise TypeError(
                f"Expected a Keras 3 or tf-keras model as backbone. Received: {backbone!r}."
            )
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; known: {', '.join(POOLINGS)}.")
        if fixed_size is not None:
            min_size = fixed_size
        self.task = task
        self.output_name = output_name
        self.preprocessing = check_mode(preprocessing)
        self.pooling = pooling
        self.min_size = int(min_size)
        self.fixed_size = fixed_size
        self.native_size = int(fixed_size or native_size or min_size)
        self.backbone_name = name or backbone.name
        self.source = source or f"user-supplied Keras model ({type(backbone).__name__})"
        self.num_features = feature_width(backbone, fixed_size or max(self.min_size, 32))
        if head is not None and not head.built:
            head.build((None, self.num_features))
        self._keras = _Hidden(backbone=backbone, head=head)
        layers = [backbone] + ([head] if head is not None else [])
        keras_variables = _unique(v for layer in layers for v in layer.variables)
        keras_trainable = _unique(v for layer in layers for v in layer.trainable_variables)
        self.variables = _unique(tf_variable(v) for v in keras_variables)
        self.trainable_variables = _unique(tf_variable(v) for v in keras_trainable)
        self.regularization_losses = _regularization_losses(layers, keras_trainable)

    @property
    def hparams(self) -> dict:
        """Keyword arguments of ``__call__`` that override a hyperparameter, with defaults."""
        return {}

    @property
    def keras_backbone(self) -> keras.Model:
        """The wrapped Keras backbone (not saved as such: its variables are)."""
        return self._keras.backbone

    # No autograph: every branch here is on static facts, and autograph would re-wrap the
    # contract's InvalidImagesError raised at trace time into a StagingError.
    @tf.function(autograph=False)
    def __call__(self, images, training=False):
        """Map float32 RGB images in [0, 1], [batch, height, width, 3], to the task's output.

        Args:
            images: A float32 tensor [batch_size, height, width, 3], values in [0, 1].
            training: Python bool. True runs batch norm on batch statistics (updating its
                moving averages) and turns dropout on, for fine-tuning.

        Returns:
            A float32 tensor [batch_size, num_features] or [batch_size, num_classes].
        """
        if not isinstance(training, bool):
            raise TypeError(f"Expected training to be a Python bool. Received: {training!r}.")
        # A restored __call__ re-infers shapes for each concrete input; a too-small image
        # would then fail inside the backbone before the size check could say what is wrong.
        return self._forward(images, training=training, forget_size=True)

    @tf.function(input_signature=[spec.IMAGE_SPEC], autograph=False)
    def serve(self, images):
        """The ``serving_default`` signature: inference only, one named output."""
        # Signatures run as traced, so the size check comes first without forgetting the
        # static size (which the TFLite converter cannot lower).
        return {self.output_name: self._forward(images, training=False, forget_size=False)}

    def _forward(self, images, *, training: bool, forget_size: bool):
        images = tf.convert_to_tensor(images)
        checks = spec.check_images(images, min_size=self.min_size, fixed_size=self.fixed_size)
        with tf.control_dependencies(checks):
            if forget_size:
                images = tf.raw_ops.PlaceholderWithDefault(
                    input=images, shape=spec.IMAGE_SPEC.shape
                )
            else:
                images = tf.identity(images)
        inputs = preprocess(images, self.preprocessing)
        # Our own scope first: a Keras name like "_my_model" is invalid as a root scope.
        with tf.name_scope("backbone"):
            features = self._keras.backbone(inputs, training=training)
        if features.shape.rank == 4:
            reduce = tf.reduce_mean if self.pooling == "avg" else tf.reduce_max
            features = reduce(features, axis=[1, 2])
        outputs = tf.cast(features, tf.float32)
        if self._keras.head is not None:
            with tf.name_scope("head"):
                outputs = tf.cast(self._keras.head(outputs, training=training), tf.float32)
        return outputs

    def trace(self) -> None:
        """Trace ``__call__`` for both values of ``training`` on the contract's input spec."""
        for training in (False, True):
            self.__call__.get_concrete_function(spec.IMAGE_SPEC, training=training)
        self.serve.get_concrete_function()


class FeatureVectorModule(ImageModule):
    """An image feature vector: the pooled last feature map, ``[batch, num_features]``.

    No dropout is applied to the output; that choice is the consumer's.

    Example:
        >>> backbone = keras.applications.MobileNetV2(
        ...     include_top=False, weights=None, input_shape=(None, None, 3))
        >>> module = FeatureVectorModule(backbone, preprocessing="tf")
        >>> module(tf.zeros([2, 96, 96, 3])).shape
        TensorShape([2, 1280])
    """

    def __init__(
        self,
        backbone: keras.Model,
        *,
        preprocessing: str,
        pooling: str = "avg",
        min_size: int = 32,
        fixed_size: int | None = None,
        native_size: int | None = None,
        source: str | None = None,
        name: str | None = None,
    ):
        super().__init__(
            backbone,
            task="image_feature_vector",
            output_name=spec.FEATURE_VECTOR_OUTPUT,
            preprocessing=preprocessing,
            pooling=pooling,
            min_size=min_size,
            fixed_size=fixed_size,
            native_size=native_size,
            source=source,
            name=name,
        )


class ClassifierModule(ImageModule):
    """Image classification: logits ``[batch, num_classes]`` (scores before softmax).

    The head is either ``head`` (a Keras layer from pooled features to logits, such as a
    backbone's own classifier with its softmax removed) or a new
    ``Dropout(dropout_rate) -> Dense(num_classes)``. ``activation`` documents whether
    softmax (mutually exclusive classes) or sigmoid (independent classes) applies to the
    logits; it is not applied.

    Example:
        >>> backbone = keras.applications.MobileNetV2(
        ...     include_top=False, weights=None, input_shape=(None, None, 3))
        >>> module = ClassifierModule(backbone, preprocessing="tf", num_classes=5)
        >>> module(tf.zeros([1, 96, 96, 3])).shape
        TensorShape([1, 5])
    """

    def __init__(
        self,
        backbone: keras.Model,
        *,
        preprocessing: str,
        num_classes: int | None = None,
        head: keras.Layer | None = None,
        dropout_rate: float = 0.0,
        labels: list[str] | None = None,
        activation: str = "softmax",
        pooling: str = "avg",
        min_size: int = 32,
        fixed_size: int | None = None,
        native_size: int | None = None,
        source: str | None = None,
        name: str | None = None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)} (softmax "
                "for mutually exclusive classes, sigmoid for independent ones)."
            )
        if head is None:
            if not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(
                    "Expected num_classes to be a positive int when no head is given. "
                    f"Received: num_classes={num_classes!r}."
                )
            head = new_head(num_classes, dropout_rate)
        super().__init__(
            backbone,
            task="image_classification",
            output_name=spec.CLASSIFICATION_OUTPUT,
            preprocessing=preprocessing,
            pooling=pooling,
            head=head,
            min_size=min_size,
            fixed_size=fixed_size,
            native_size=native_size,
            source=source,
            name=name,
        )
        self.activation = activation
        width = head.compute_output_shape((None, self.num_features))[-1]
        if num_classes is not None and width != num_classes:
            raise ValueError(
                f"Expected a head with num_classes={num_classes} outputs. Received a head "
                f"with {width} outputs."
            )
        self.num_classes = int(width)
        self.labels = None if labels is None else tuple(_checked_labels(labels, self.num_classes))


def _checked_labels(labels: list[str], num_classes: int) -> list[str]:
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise ValueError(
            f"Expected one label per class ({num_classes}). Received {len(labels)} labels."
        )
    bad = [label for label in labels if not label.strip() or "\n" in label]
    if bad:
        raise ValueError(f"Labels must be non-empty single lines. Received: {bad[:3]!r}.")
    return labels
