"""The exported object: a ``tf.Module`` that keeps the reusable SavedModel image API.

It wraps a Keras backbone (and, for classification, a head) and exposes exactly what
``SPEC.md`` lists: ``__call__(images, training=False, **hparams)``, ``variables``,
``trainable_variables``, ``regularization_losses`` and a ``serving_default`` function.
Saving lives in ``exporter.making.save``; nothing here writes files.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings

import keras
import tensorflow as tf

from exporter import spec
from exporter.making.preprocessing import check_mode, preprocess

POOLINGS = ("avg", "max")
ACTIVATIONS = ("softmax", "sigmoid")
# The dropout before the logits when a backbone has none of its own (issue 3).
DEFAULT_DROPOUT = 0.2
HPARAMS = {
    "dropout_rate": "the rate of the dropout before the logits layer, in [0, 1); active only "
    "with training=True",
    "batch_norm_momentum": "the momentum of every batch norm's moving mean and variance, in "
    "[0, 1]; they are updated only with training=True",
}


class _Hidden:
    """Holds Keras objects out of the SavedModel's object graph.

    A Keras 3 variable is a wrapper around a ``tf.Variable``; if the Keras model were an
    attribute, the saver would store both (``model.export`` does: a ResNet50 doubles to
    181 MB). The module tracks the inner ``tf.Variable``s in plain lists instead.
    """

    def __init__(self, **objects):
        self.__dict__.update(objects)


SAVE_OPTIONS = tf.saved_model.SaveOptions()


@contextlib.contextmanager
def saver_tracing():
    """Trace ``tf.function``s here as ``tf.saved_model.save(..., options=SAVE_OPTIONS)`` does.

    TensorFlow keys its trace cache on whether a save is in progress (and on the save's
    variable policy), so the saver traces every function again that was traced outside a
    save: for our module, the whole backbone three more times (ResNet50: seconds).
    Traces made in here are the saver's own. The context is TensorFlow's internal
    ``save_context``; without it (a future TensorFlow), tracing is plain and the saver
    traces again, as before.
    """
    try:
        from tensorflow.python.saved_model import save_context
    except ImportError:  # pragma: no cover - depends on the TensorFlow version
        yield
        return
    if save_context.in_save_context():
        yield
        return
    with save_context.save_context(SAVE_OPTIONS):
        yield


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


def _regularization_losses(layers, keras_trainable, inner=()) -> list:
    """One zero-argument function per weight regularizer, for both Keras generations."""
    losses = [_scalar_loss(fn) for i in inner if i.trainable for fn in i.regularization_losses]
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


class HeadDropout(keras.layers.Layer):
    """Dropout before the logits layer, whose rate the ``dropout_rate`` hparam can override.

    Keras' own ``Dropout`` decides in Python whether its rate is zero, so it cannot take
    the rate as a tensor; this one can. Active only with ``training=True``.
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Expected a dropout rate in [0, 1). Received: {rate!r}.")
        self.rate = float(rate)
        self.override = None  # A scalar tensor while an export traces __call__.

    def call(self, inputs, training=None):
        if not training:
            return inputs
        return tf.nn.dropout(inputs, rate=self.rate if self.override is None else self.override)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


def new_head(num_classes: int, dropout_rate: float = DEFAULT_DROPOUT) -> keras.Sequential:
    """A new classifier: ``HeadDropout(dropout_rate) -> Dense(num_classes)``, giving logits."""
    return keras.Sequential(
        [HeadDropout(dropout_rate, name="head_dropout"), keras.layers.Dense(num_classes)],
        name="classifier",
    )


def _sublayers(layer) -> list:
    """``layer`` and every layer nested in it, for both Keras generations."""
    if hasattr(layer, "_flatten_layers"):
        return list(layer._flatten_layers(include_self=True, recursive=True))
    return [layer]


def _inner_exports(layers) -> list:
    """Sublayers that wrap a reusable SavedModel (``exporter.KerasLayer``, issue 9).

    Found by what they offer, not by class: the making side never imports the using side.
    Their hparams join the module's, and their regularization losses its own.
    """
    found = [s for layer in layers for s in _sublayers(layer)]
    return _unique(s for s in found if hasattr(s, "hparam_overrides"))


def _inner_sizes(inner, min_size: int, fixed_size, native_size):
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


def _batch_norms(layers) -> list:
    # Both Keras generations (and synchronized variants) keep these two attributes.
    found = [s for layer in layers for s in _sublayers(layer)]
    return _unique(s for s in found if hasattr(s, "moving_mean") and hasattr(s, "momentum"))


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


def _shared(values, hparam: str):
    """The one value all of ``values`` share, the hparam's default; None if there is none."""
    values = sorted(set(values))
    if len(values) > 1:
        warnings.warn(
            f"Not offering the {hparam} hparam: it needs one value for the whole model, and "
            f"this one has {len(values)}: {values}.",
            stacklevel=3,
        )
    return values[0] if len(values) == 1 else None


def _checked_hparams(hparams: dict) -> dict:
    """Each hparam as a float32 scalar that fails at run time outside its interval."""
    return {
        name: _checked(value, name, upper_inclusive=name == "batch_norm_momentum")
        for name, value in hparams.items()
    }


def _checked(value, name: str, upper_inclusive: bool) -> tf.Tensor:
    """``value`` as a float32 scalar that fails at run time unless it is in [0, 1) or [0, 1]."""
    value = tf.convert_to_tensor(value, tf.float32)
    upper = value <= 1.0 if upper_inclusive else value < 1.0
    interval = "[0, 1]" if upper_inclusive else "[0, 1)"
    check = tf.debugging.Assert(
        tf.logical_and(value >= 0.0, upper), [f"Expected {name} in {interval}. Received:", value]
    )
    with tf.control_dependencies([check]):
        return tf.identity(value)


# One traced swish per dtype, shared by every activation of every module in the process.
_SILU_FUNCTIONS: dict = {}


def shared_silu(x):
    """swish (silu), ``tf.nn.silu`` itself, called through one traced function per dtype.

    ``tf.nn.silu``, which both Keras generations call, wraps itself in a custom gradient (it
    keeps only its input for the backward pass). Called inline, each activation registers
    its own gradient, and the saver traces every one of them for every saved function:
    196 in an EfficientNetB0 export, 33 of the 46 s of an EfficientNetV2-S save
    (BUILD_NOTES). Through one shape-free function the gradient is registered and saved
    once; forward values, gradients and training memory stay those of ``tf.nn.silu``.
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
    found = [s for layer in layers for s in _sublayers(layer)]
    return _unique(s for s in found if _is_silu(getattr(s, "activation", None)))


def _call_signature(hparams: dict) -> inspect.Signature:
    """``(images, training=False, <hparam>=<default>, ...)``."""
    names = {"images": inspect.Parameter.empty, "training": False, **hparams}
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(k, kind, default=v) for k, v in names.items()])


@contextlib.contextmanager
def _overridden(layers, attribute: str, value):
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


class ImageModule(tf.Module):
    """A Keras backbone (plus an optional head) behind the reusable SavedModel image API.

    The backbone is a Keras 3 model (functional, sequential or subclassed) or a tf-keras
    (Keras 2) model. Use ``FeatureVectorModule`` or ``ClassifierModule``; this base holds
    what they share.

    A backbone whose output is a feature map is pooled here (``pooling``); one that outputs
    ``[batch, features]`` already pooled inside (and perhaps normalized after, as ConvNeXt
    does), and then ``pooling`` and ``bottleneck`` only document what it does. ``bottleneck``
    says what the features are, for the model card; default: "the <pooling>-pooled last
    feature map".
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
        bottleneck: str | None = None,
    ):
        super().__init__(name=name)
        if not isinstance(backbone, keras.Model) and not is_tf_keras(backbone):
            raise TypeError(
                f"Expected a Keras 3 or tf-keras model as backbone. Received: {backbone!r}."
            )
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; known: {', '.join(POOLINGS)}.")
        inner = _inner_exports([backbone] + ([head] if head is not None else []))
        min_size, fixed_size, native_size = _inner_sizes(inner, min_size, fixed_size, native_size)
        if fixed_size is not None:
            min_size = fixed_size
        self.task = task
        self.output_name = output_name
        self.preprocessing = check_mode(preprocessing)
        self.pooling = pooling
        # What the pooled features are, for the model card (a backbone may pool inside).
        self.bottleneck = bottleneck or f"the {pooling}-pooled last feature map"
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
        self.regularization_losses = _regularization_losses(layers, keras_trainable, inner)
        dropouts = [s for s in _sublayers(head) if isinstance(s, HeadDropout)] if head else []
        norms = _batch_norms(layers)
        self._tunable = _Hidden(dropout_rate=dropouts, batch_norm_momentum=norms, inner=inner)
        # Hidden from the saver, like the rest: a plain list of layers would be saved as
        # objects of the export (EfficientNetB0's variables/ grew by 1.3 MB).
        self._swish = _Hidden(layers=_swish_layers(layers))
        self._fused = _Hidden(norms=_fusable_batch_norms(norms))
        rates = [d.rate for d in dropouts] + [i.hparams["dropout_rate"] for i in inner
                                              if "dropout_rate" in i.hparams]  # fmt: skip
        momenta = [float(n.momentum) for n in norms] + [
            i.hparams["batch_norm_momentum"] for i in inner if "batch_norm_momentum" in i.hparams
        ]
        defaults = {
            "dropout_rate": _shared(rates, "dropout_rate"),
            "batch_norm_momentum": _shared(momenta, "batch_norm_momentum"),
        }
        self._hparams = {k: v for k, v in defaults.items() if v is not None}
        self._signature = _call_signature(self._hparams)

        # Which hparams exist depends on the model, so the traced function is made here, with
        # that signature: consumers read the argument names and defaults from it.
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
        self._local = _Hidden(call=tf.function(call, autograph=False))
        # trace()'s concrete functions: {False: ..., True: ..., "serve": ...}.
        self._traces = _Hidden(functions={})

    @property
    def hparams(self) -> dict:
        """Keyword arguments of ``__call__`` that override a hyperparameter, with defaults.

        ``dropout_rate`` where the head has a ``HeadDropout``; ``batch_norm_momentum`` where
        the model has batch norm (with one momentum throughout).
        """
        return dict(self._hparams)

    @property
    def keras_backbone(self) -> keras.Model:
        """The wrapped Keras backbone (not saved as such: its variables are)."""
        return self._keras.backbone

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
        return self._local.call(**self._call_arguments(images, training, **hparams))

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
        if not training:
            return self._inference(images, arguments)
        # A restored __call__ re-infers shapes for each concrete input; a too-small image
        # would then fail inside the backbone before the size check could say what is wrong.
        return self._forward(images, training=training, forget_size=True, hparams=arguments)

    def _inference(self, images, hparams: dict):
        """``__call__(training=False)``: checks, then a call of ``serving_default``'s trace.

        The backbone's inference graph is traced and saved once, for both: a copy of its
        own cost ResNet50 1.5 s of tracing, and MobileNetV2 a sixth of ``saved_model.pb``
        and its share of every load. The hparams change nothing in inference but are
        checked all the same.
        """
        checked = _checked_hparams(hparams)
        # Shape-free, for the reason in _traced_call; serve checks the sizes again.
        images = self._checked_images(images, False, forget_size=True, also=checked.values())
        return self.serve(images)[self.output_name]

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
                return tf.raw_ops.PlaceholderWithDefault(input=images, shape=spec.IMAGE_SPEC.shape)
            return tf.identity(images)

    def _forward(self, images, *, training: bool, forget_size: bool, hparams=None):
        images = self._checked_images(images, training, forget_size=forget_size)
        inputs = preprocess(images, self.preprocessing)
        overrides = _checked_hparams(hparams or {})
        rate, momentum = overrides.get("dropout_rate"), overrides.get("batch_norm_momentum")
        with (
            _overridden(self._tunable.dropout_rate, "override", rate),
            _overridden(self._tunable.batch_norm_momentum, "momentum", momentum),
            _overridden(self._tunable.inner, "hparam_overrides", overrides or None),
            _overridden(self._swish.layers, "activation", shared_silu),
            _fused_training(self._fused.norms, training),
        ):
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
        """Trace ``__call__`` for both training values (each hparam a float32 scalar) and
        ``serving_default``, once, as ``tf.saved_model.save`` will trace them.

        Traced inside a save context (``saver_tracing``): the saver finds these traces in
        its cache instead of tracing the backbone again for each.
        """
        functions = self._traces.functions
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
            functions["serve"] = self.serve.get_concrete_function()

    def traced_inference(self, images) -> tf.Tensor:
        """Inference through the trace that ``trace()`` made and the export saves.

        Calling the module instead traces its graph again for the images' shape, which
        costs seconds for a large backbone; this reuses the shape-free trace.
        """
        self.trace()
        arguments = self._call_arguments(tf.convert_to_tensor(images), training=False)
        return self._traces.functions[False](**arguments)


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
        bottleneck: str | None = None,
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
        preprocessing: str,
        num_classes: int | None = None,
        head: keras.Layer | None = None,
        dropout_rate: float = DEFAULT_DROPOUT,
        labels: list[str] | None = None,
        activation: str = "softmax",
        pooling: str = "avg",
        min_size: int = 32,
        fixed_size: int | None = None,
        native_size: int | None = None,
        source: str | None = None,
        name: str | None = None,
        bottleneck: str | None = None,
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
            bottleneck=bottleneck,
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
