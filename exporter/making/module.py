"""The exported object: a ``tf.Module`` that keeps the reusable SavedModel image API.

It wraps a Keras backbone (and, for classification, a head) and exposes exactly what the
contract (``docs/contract.md``, "The loaded object") lists: ``__call__(images,
training=False, **hparams)``, ``variables``, ``trainable_variables``,
``regularization_losses`` and a ``serving_default`` function.
Saving lives in ``exporter.making.save``; nothing here writes files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import tensorflow as tf

from exporter import spec
from exporter.making.head import (
    DEFAULT_DROPOUT,
    HeadDropout,
    check_activation,
    checked_labels,
    new_head,
)
from exporter.making.hparams import call_signature, checked_hparams, hparam_defaults
from exporter.making.layers import (
    admissible_sizes,
    batch_norms,
    check_backbone,
    described_pooling,
    feature_width,
    nested_exports,
    overridden,
    pooled,
    regularization_losses,
    sublayers,
    tf_variable,
    unique,
)
from exporter.making.preprocessing import Mode, check_mode, preprocess
from exporter.making.rewrites import Rewrites
from exporter.making.tracing import saver_tracing

LABELS_FILE = "labels.txt"  # The labels asset's name under assets/ (spec.LABELS_ASSET).


class _Hidden:
    """Holds Keras objects out of the SavedModel's object graph.

    A Keras 3 variable is a wrapper around a ``tf.Variable``; if the Keras model were an
    attribute, the saver would store both (as ``model.export`` does; ``docs/contract.md``,
    "Known traps"). The module tracks the inner ``tf.Variable``s in plain lists instead.
    """

    def __init__(self, **objects):
        self.__dict__.update(objects)


class ImageModule(tf.Module):
    """A Keras backbone (plus an optional head) behind the reusable SavedModel image API.

    The backbone is a Keras 3 model (functional, sequential or subclassed) or a tf-keras
    (Keras 2) model. Use ``FeatureVectorModule`` or ``ClassifierModule``; this base holds
    what they share.

    A backbone whose output is a feature map is pooled here (``pooling``); one that outputs
    ``[batch, features]`` already pooled inside (and perhaps normalized after, as ConvNeXt
    does), and then ``pooling`` and ``bottleneck`` only document what it does. ``bottleneck``
    says what the features are, for the model card; default: "the <pooling>-pooled last
    feature map" (``pooling=None`` on ``[batch, n]`` features: "the model's own output").
    ``weights`` says where the weights came from, for the card ("imagenet", "random", "file
    NAME"; None when not known, as for your own model).
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
        preprocessing: Mode,
        pooling: str | None = None,
        head: keras.Layer | None = None,
        min_size: int = 32,
        fixed_size: int | None = None,
        native_size: int | None = None,
        source: str | None = None,
        name: str | None = None,
        bottleneck: str | None = None,
        weights: str | None = None,
        float32_twin: ImageModule | None = None,
    ):
        super().__init__(name=name)
        check_backbone(backbone)
        pooling, features = described_pooling(backbone, pooling)
        layers = [backbone] + ([head] if head is not None else [])
        nested = nested_exports(layers)
        min_size, fixed_size, native_size = admissible_sizes(
            backbone, nested, min_size, fixed_size, native_size
        )
        self.task = task
        self.output_name = output_name
        self.preprocessing = check_mode(preprocessing)  # A named mode, or an Affine.
        self.pooling = pooling
        # What the pooled features are, for the model card (a backbone may pool inside).
        self.bottleneck = bottleneck or features
        self.min_size = int(min_size)
        self.fixed_size = fixed_size
        self.native_size = int(fixed_size or native_size or min_size)
        self.backbone_name = name or backbone.name
        self.source = source or f"user-supplied Keras model ({type(backbone).__name__})"
        self.weights = weights  # "imagenet", "random", "file NAME"; None: not known.
        self.num_features = feature_width(backbone, fixed_size or max(self.min_size, 32))
        if head is not None and not head.built:
            head.build((None, self.num_features))
        self._track_variables(layers, nested)
        norms = batch_norms(layers)
        dropouts = [s for s in sublayers(head) if isinstance(s, HeadDropout)] if head else []
        self._hparams = hparam_defaults(dropouts, norms, nested)
        self._signature = call_signature(self._hparams)
        # Everything the saver must not see, in one place: a Keras object in the module's
        # object graph would be saved, its variables a second time (see _Hidden).
        self._held = _Hidden(
            backbone=backbone,
            head=head,
            tunable={"dropout_rate": dropouts, "batch_norm_momentum": norms, "nested": nested},
            rewrites=Rewrites(layers, norms),
            float32_twin=float32_twin,
            # trace()'s concrete functions: {False: ..., True: ..., "serve": ...,
            # ("refuse", dtype name, training): ...}.
            traces={},
        )
        self._make_call()

    def _track_variables(self, layers, nested) -> None:
        """The ``tf.Variable``s behind the Keras ones, each once, and the regularizers."""
        keras_variables = unique(v for layer in layers for v in layer.variables)
        keras_trainable = unique(v for layer in layers for v in layer.trainable_variables)
        self.variables = unique(tf_variable(v) for v in keras_variables)
        self.trainable_variables = unique(tf_variable(v) for v in keras_trainable)
        self.regularization_losses = regularization_losses(layers, keras_trainable, nested)

    def _make_call(self) -> None:
        """Make ``__call__`` as a ``tf.function`` with this module's own signature.

        Which hparams exist depends on the model, so the traced function is made here:
        consumers read the argument names and defaults from its signature.
        """

        def call(*args, **kwargs):
            return self._traced_call(*args, **kwargs)

        call.__signature__ = self._signature
        call.__name__ = call.__qualname__ = "__call__"  # Names its graph functions.
        call.__doc__ = ImageModule.__call__.__doc__
        # Found by the saver as the root's __call__, and traced only by trace(): exactly
        # the traces the contract asks for are saved. No autograph: every branch in it is on
        # static facts, and autograph would re-wrap the contract's InvalidImagesError raised
        # at trace time into a StagingError.
        self.__dict__["__call__"] = tf.function(call, autograph=False)
        # What calling the module in Python runs: its traces for other shapes stay unsaved.
        self._held.local_call = tf.function(call, autograph=False)

    @property
    def hparams(self) -> dict:
        """Keyword arguments of ``__call__`` that override a hyperparameter, with defaults.

        ``dropout_rate`` where the head has a ``HeadDropout``; ``batch_norm_momentum`` where
        the model has batch norm (with one momentum throughout).
        """
        return dict(self._hparams)

    @property
    def float32_twin(self) -> ImageModule | None:
        """The float32 build of a module built in a lower precision (unsaved), else None."""
        return self._held.float32_twin

    def labels_asset(self, scratch: str) -> contextlib.AbstractContextManager:
        """While saving: the labels as the SavedModel's ``labels_file`` asset (none here)."""
        del scratch
        return contextlib.nullcontext()

    @property
    def keras_backbone(self) -> keras.Model:
        """The wrapped Keras backbone (not saved as such: its variables are)."""
        return self._held.backbone

    def __call__(self, images, training=False, **hparams):
        """Map float32 RGB images in [0, 1], [batch, height, width, 3], to the task's output.

        Args:
            images: A float32 tensor [batch_size, height, width, 3], values in [0, 1].
            training: Python bool. True runs batch norm on batch statistics (updating its
                moving averages) and turns dropout on, for fine-tuning.
            **hparams: The module's ``hparams``, each a float scalar overriding its default.

        Returns:
            A float32 tensor [batch_size, num_features] or [batch_size, num_classes].
        """
        return self._held.local_call(**self._call_arguments(images, training, **hparams))

    def _call_arguments(self, *args, **kwargs) -> dict:
        """``__call__``'s arguments, bound, with defaults, each hparam a float32 tensor."""
        arguments = self._bind(*args, **kwargs)
        # Hparams go in as tensors, so every value reuses the two traces that get saved.
        for name in self._hparams:
            arguments[name] = tf.convert_to_tensor(arguments[name], tf.float32)
        return arguments

    def _bind(self, *args, **kwargs) -> dict:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(
                f"{error}. Expected __call__{self._signature}; this module's hparams are "
                f"{sorted(self._hparams) or 'none'}."
            ) from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def _traced_call(self, *args, **kwargs):
        arguments = self._bind(*args, **kwargs)
        images, training = arguments.pop("images"), arguments.pop("training")
        if not isinstance(training, bool):
            raise TypeError(f"Expected training to be a Python bool. Received: {training!r}.")
        if getattr(images, "shape", None) is not None and images.shape.rank is None:
            return self._refusal(images)  # Only trace() makes these: see spec.REFUSED_DTYPES.
        if not training:
            return self._inference(images, arguments)
        # A restored __call__ re-infers shapes for each concrete input; a too-small image
        # would then fail inside the backbone before the size check could say what is wrong.
        return self._forward(images, training=training, forget_size=True, hparams=arguments)

    def _inference(self, images, hparams: dict):
        """``__call__(training=False)``: checks, then a call of ``serving_default``'s trace.

        The backbone's inference graph is traced and saved once, for both: a copy of its
        own would cost tracing time, ``saved_model.pb`` size and load time
        (``BUILD_NOTES.md``, "Tracing and saving"). The hparams change nothing in inference
        but are checked all the same.
        """
        checked = checked_hparams(hparams)
        # Shape-free, for the reason in _traced_call; serve checks the sizes again.
        images = self._checked_images(images, False, forget_size=True, also=checked.values())
        return self.serve(images)[self.output_name]

    def _refusal(self, images):
        """A trace for images of unknown rank and any dtype: it fails with the contract's
        message at run time (``spec.refuse_at_run_time``), and costs no backbone graph."""
        width = self.num_features if self._held.head is None else self.num_classes
        with tf.control_dependencies(spec.refuse_at_run_time(images)):
            return tf.zeros([0, width], tf.float32)

    @tf.function(input_signature=[spec.IMAGE_SPEC], autograph=False)
    def serve(self, images):
        """The ``serving_default`` signature: inference only, one named output."""
        # Signatures run as traced, so the size check comes first without forgetting the
        # static size (which the TFLite converter cannot lower).
        return {self.output_name: self._forward(images, training=False, forget_size=False)}

    def _checked_images(self, images, training: bool, *, forget_size: bool, also=()):
        """``images``, once the contract's checks (and ``also``'s) have run; with the static
        height and width forgotten if ``forget_size``."""
        images = tf.convert_to_tensor(images)
        checks = spec.check_images(images, min_size=self.min_size, fixed_size=self.fixed_size)
        if training:
            checks += spec.check_training_images(images)
        with tf.control_dependencies([*checks, *also]):
            if forget_size:
                images = tf.raw_ops.PlaceholderWithDefault(input=images, shape=[None] * 3 + [3])
            else:
                images = tf.identity(images)
            # A fixed size, set once checked (MiT and Swin reshape with it), on the shape-free
            # tensor: a restored call at another size then meets the check, not a shape error.
            size = self.fixed_size
            return tf.ensure_shape(images, [None, size, size, 3]) if size else images

    def _forward(self, images, *, training: bool, forget_size: bool, hparams=None):
        images = self._checked_images(images, training, forget_size=forget_size)
        inputs = preprocess(images, self.preprocessing)
        overrides = checked_hparams(hparams or {})
        rate, momentum = overrides.get("dropout_rate"), overrides.get("batch_norm_momentum")
        tunable = self._held.tunable
        with (
            overridden(tunable["dropout_rate"], "override", rate),
            overridden(tunable["batch_norm_momentum"], "momentum", momentum),
            overridden(tunable["nested"], "hparam_overrides", overrides or None),
            self._held.rewrites.applied(training),
        ):
            # Our own scope first: a Keras name like "_my_model" is invalid as a root scope.
            with tf.name_scope("backbone"):
                features = self._held.backbone(inputs, training=training)
            outputs = tf.cast(pooled(features, self.pooling), tf.float32)
            if self._held.head is not None:
                with tf.name_scope("head"):
                    outputs = tf.cast(self._held.head(outputs, training=training), tf.float32)
        return outputs

    def trace(self) -> None:
        """Trace ``__call__`` for both training values (each hparam a float32 scalar) and
        ``serving_default``, once, as ``tf.saved_model.save`` will trace them.

        Traced inside the saver's tracing context (``tracing.saver_tracing``), so that the
        saver finds these traces in its cache instead of tracing the backbone again.
        """
        functions = self._held.traces
        if functions:
            return
        # Named as the saver names them when it asks its cache for these traces.
        hparams = {name: tf.TensorSpec([], tf.float32, name=name) for name in self._hparams}
        traced = self.__dict__["__call__"]
        with saver_tracing():
            for training in (False, True):
                functions[training] = traced.get_concrete_function(
                    spec.IMAGE_SPEC, training=training, **hparams
                )
            # After the real ones: a restored function calls the first trace that matches.
            for dtype in spec.REFUSED_DTYPES:
                for training in (False, True):
                    functions["refuse", dtype.name, training] = traced.get_concrete_function(
                        tf.TensorSpec(None, dtype, name="images"), training=training, **hparams
                    )
            functions["serve"] = self.serve.get_concrete_function()

    def refusal_functions(self) -> list[str]:
        """The names of the traces that only refuse bad images (``_refusal``), once traced."""
        return [f.name.decode() for key, f in self._held.traces.items() if isinstance(key, tuple)]

    def traced_inference(self, images) -> tf.Tensor:
        """Inference through the trace that ``trace()`` made and the export saves.

        Calling the module instead traces its graph again for the images' shape, which
        costs seconds for a large backbone; this reuses the shape-free trace.
        """
        self.trace()
        arguments = self._call_arguments(tf.convert_to_tensor(images), training=False)
        return self._held.traces[False](**arguments)


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
        preprocessing: Mode,
        pooling: str | None = None,
        min_size: int = 32,
        fixed_size: int | None = None,
        native_size: int | None = None,
        source: str | None = None,
        name: str | None = None,
        bottleneck: str | None = None,
        weights: str | None = None,
        float32_twin: ImageModule | None = None,
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
            bottleneck=bottleneck,
            weights=weights,
            float32_twin=float32_twin,
        )


class ClassifierModule(ImageModule):
    """Image classification: logits ``[batch, num_classes]`` (scores before softmax).

    The head is either ``head`` (a Keras layer from pooled features to logits, such as a
    backbone's own classifier with its softmax removed) or a new
    ``HeadDropout(dropout_rate) -> Dense(num_classes)``. A ``HeadDropout`` in the head makes
    ``dropout_rate`` an hparam of ``__call__``. ``activation`` documents whether
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
        preprocessing: Mode,
        num_classes: int | None = None,
        head: keras.Layer | None = None,
        dropout_rate: float = DEFAULT_DROPOUT,
        labels: list[str] | None = None,
        activation: str = "softmax",
        pooling: str | None = None,
        min_size: int = 32,
        fixed_size: int | None = None,
        native_size: int | None = None,
        source: str | None = None,
        name: str | None = None,
        bottleneck: str | None = None,
        weights: str | None = None,
        float32_twin: ImageModule | None = None,
    ):
        check_activation(activation)
        head = head if head is not None else new_head(num_classes, dropout_rate)
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
            bottleneck=bottleneck,
            weights=weights,
            float32_twin=float32_twin,
        )
        self.activation = activation
        width = head.compute_output_shape((None, self.num_features))[-1]
        if num_classes is not None and width != num_classes:
            raise ValueError(
                f"Expected a head with num_classes={num_classes} outputs. Received a head "
                f"with {width} outputs."
            )
        self.num_classes = int(width)
        self.labels = None if labels is None else tuple(checked_labels(labels, self.num_classes))

    @contextlib.contextmanager
    def labels_asset(self, scratch: str):
        """While saving: the labels, one per line, as the ``labels_file`` asset.

        The file is written under ``scratch``; the saver copies it to ``assets/``.
        """
        if not self.labels:
            yield
            return
        path = Path(scratch, LABELS_FILE)
        path.write_text("".join(f"{label}\n" for label in self.labels), encoding="utf-8")
        self.labels_file = tf.saved_model.Asset(str(path))
        try:
            yield
        finally:
            del self.labels_file
