"""A Keras 3 layer that fine-tunes any reusable SavedModel, with ``hub.KerasLayer``'s arguments.

``tensorflow_hub.KerasLayer`` is a tf-keras layer: a Keras 3 model refuses it. Keras 3's own
``TFSMLayer`` calls a serving signature, so it never passes ``training``, drops
``regularization_losses``, returns a dict and takes no hparams. ``KerasLayer`` here calls the
root ``__call__(images, training=..., **arguments)`` as hub does, and tracks the restored
variables as its weights (shared, never copied), so the optimizer updates the SavedModel.

Migrating from tensorflow_hub means changing one import::

    layer = exporter.KerasLayer(path, trainable=True)  # was: hub.KerasLayer(path, ...)
"""

from __future__ import annotations

import contextvars
import inspect
import os
from pathlib import Path

import keras
import tensorflow as tf
from keras.src.saving import serialization_lib

from exporter.checking import savedmodel
from exporter.errors import UnsafeOpsError

UnsafeSavedModelError = UnsafeOpsError  # The name this module raised before.
_OPT_IN = (
    "If you trust it, pass allow_unsafe_ops=True, or safe_mode=False to keras.models.load_model."
)
_FILE_OPT_IN = (
    "If you trust it, pass safe_mode=False to keras.models.load_model (in safe mode, a Keras "
    "file or config cannot allow unsafe ops: the allow_unsafe_ops in it is ignored)."
)
# Set while from_config builds a layer from a Keras file: the error then says so.
_FROM_FILE: contextvars.ContextVar[bool] = contextvars.ContextVar("from_file", default=False)


def _structure(outputs):
    """The restored function's output structure, as TensorSpecs."""
    return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), outputs)


def _safe_name(variable: tf.Variable) -> str:
    # Keras variable names may not contain "/" (Keras 3.15); drop the ":0" suffix too.
    return variable.name.split(":")[0].replace("/", "_")


@keras.saving.register_keras_serializable(package="exporter")
class KerasLayer(keras.layers.Layer):
    """Wrap a reusable SavedModel as a Keras 3 layer that can be fine-tuned.

    The SavedModel's variables become the layer's weights, shared with the restored object:
    training updates them in place. Its ``trainable_variables`` are trainable weights only
    when the layer is trainable, and ``training=True`` reaches the SavedModel only then
    (batch norm on batch statistics, updating its moving averages; dropout on). While
    trainable, every call adds the SavedModel's ``regularization_losses`` with ``add_loss``.

    Create the layer (or load a model holding it) inside the ``tf.distribute`` strategy
    scope it trains in: the restored variables are made by that strategy.

    Args:
        handle: The SavedModel directory.
        trainable: Whether fine-tuning updates the SavedModel's trainable variables.
        arguments: Extra keyword arguments of ``__call__``, such as the hparams
            ``dropout_rate`` or ``batch_norm_momentum``.
        signature: Call this signature instead of ``__call__`` (inference only: no
            ``training``, no ``arguments``).
        output_key: The output to return from a dict of outputs (a signature's).
        signature_outputs_as_dict: Return a signature's whole dict of outputs.
        allow_unsafe_ops: Load a SavedModel even if it holds ops that touch files,
            processes, the network or Python (found by ``exporter.checking.unsafe_ops``).
            From a Keras file (``from_config``) this is honoured only outside Keras' safe
            mode: ``keras.models.load_model(..., safe_mode=False)``.
        **kwargs: Passed to ``keras.layers.Layer`` (``name``, ``dtype``, ...).

    Raises:
        FileNotFoundError: If ``handle`` does not exist.
        ValueError: If ``handle`` is not a SavedModel, or has no ``__call__`` (without
            ``signature``), or ``signature``, ``output_key`` or an argument is unknown.
        UnsafeSavedModelError: If it holds unsafe ops and they are not allowed.

    Example:
        >>> model = keras.Sequential([
        ...     keras.Input((224, 224, 3)),
        ...     exporter.KerasLayer("exports/mobilenet_v2", trainable=True),
        ...     keras.layers.Dense(5),
        ... ])
    """

    def __init__(
        self,
        handle: str | os.PathLike,
        trainable: bool = False,
        arguments: dict | None = None,
        signature: str | None = None,
        output_key: str | None = None,
        signature_outputs_as_dict: bool = False,
        allow_unsafe_ops: bool = False,
        **kwargs,
    ):
        super().__init__(trainable=trainable, **kwargs)
        self.handle = str(handle)
        self.arguments = dict(arguments or {})
        self.signature = signature
        self.output_key = output_key
        self.signature_outputs_as_dict = bool(signature_outputs_as_dict)
        self.allow_unsafe_ops = bool(allow_unsafe_ops)
        # The variables are made by the strategy in scope now (mirrored under Mirrored...).
        self._strategy = tf.distribute.get_strategy()
        self._defaults = {}
        # Scalar tensors by hparam name while an export that holds this layer is traced.
        self.hparam_overrides = None
        allowed = self.allow_unsafe_ops or serialization_lib.in_safe_mode() is False
        opt_in = _FILE_OPT_IN if _FROM_FILE.get() else _OPT_IN
        try:
            self._loaded = savedmodel.load(self.handle, allow_unsafe_ops=allowed, opt_in=opt_in)
        except savedmodel.UnreadableError as error:
            kind = FileNotFoundError if not Path(self.handle).exists() else ValueError
            raise kind(f"Expected a SavedModel directory as handle. {error}") from None
        self._metadata, _ = savedmodel.metadata(self.handle)
        self._function, self._outputs = self._find_function()
        self._check_output_key()
        self._track_restored_variables()
        self._build_at_init()

    # -- construction --------------------------------------------------------------------

    def _find_function(self):
        loaded = self._loaded
        signatures = sorted(getattr(loaded, "signatures", {}) or {})
        if self.signature is not None:
            if self.signature not in signatures:
                raise ValueError(
                    f"Unknown signature {self.signature!r} in {self.handle}; it has: "
                    f"{', '.join(signatures) or 'none'}."
                )
            if self.arguments:
                raise ValueError(
                    f"arguments are passed to __call__ only; a signature takes none. "
                    f"Received: arguments={self.arguments!r}, signature={self.signature!r}."
                )
            function = loaded.signatures[self.signature]
            return function, _structure(function.structured_outputs)
        call = loaded.__call__ if callable(loaded) else None
        traced = list(getattr(call, "concrete_functions", None) or [])
        if not traced:
            raise ValueError(
                f"Expected a SavedModel with a traced __call__ at {self.handle}. Received one "
                f"without; its signatures are: {', '.join(signatures) or 'none'} (pass "
                "signature=... to call one for inference)."
            )
        parameters = inspect.signature(call).parameters
        offered = [name for name in list(parameters)[1:] if name != "training"]
        unknown = sorted(set(self.arguments) - set(offered))
        if unknown:
            raise ValueError(
                f"Unknown arguments {unknown} for the SavedModel at {self.handle}; its "
                f"__call__ offers: {', '.join(offered) or 'none'}."
            )
        self._takes_training = "training" in parameters
        self._defaults = {
            name: parameters[name].default
            for name in offered
            if isinstance(parameters[name].default, (int, float))
            and not isinstance(parameters[name].default, bool)
        }
        return call, _structure(traced[0].structured_outputs)

    def _check_output_key(self) -> None:
        if not isinstance(self._outputs, dict):
            if self.output_key is not None:
                raise ValueError(
                    f"output_key={self.output_key!r} given, but the SavedModel at "
                    f"{self.handle} returns a single tensor, not a dict."
                )
            return
        keys = sorted(self._outputs)
        if self.output_key is not None and self.output_key not in self._outputs:
            raise ValueError(
                f"Unknown output_key {self.output_key!r}; the outputs are: {', '.join(keys)}."
            )
        if self.output_key is None and not self.signature_outputs_as_dict and len(keys) > 1:
            raise ValueError(
                f"The outputs are a dict ({', '.join(keys)}): pass output_key=... to pick one, "
                "or signature_outputs_as_dict=True."
            )

    def _track_restored_variables(self) -> None:
        # Keras 3 wraps a tf.Variable without copying it, so the wrappers are the SavedModel's
        # own variables; tracked before build, as TFSMLayer does (Keras 3.15).
        variables = list(getattr(self._loaded, "variables", []) or [])
        trainable = {id(v) for v in getattr(self._loaded, "trainable_variables", []) or []}
        seen = set()
        for variable in variables:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            wrapper = keras.Variable(
                initializer=variable,
                trainable=id(variable) in trainable,
                dtype=variable.dtype,
                shape=variable.shape,
                name=_safe_name(variable),
            )
            self._track_variable(wrapper)
        self._regularization_losses = list(getattr(self._loaded, "regularization_losses", []) or [])

    @property
    def hparams(self) -> dict:
        """The numeric hparams of ``__call__`` with their values here (``arguments`` first)."""
        return {name: self.arguments.get(name, value) for name, value in self._defaults.items()}

    @property
    def regularization_losses(self) -> list:
        """The SavedModel's zero-argument loss functions (added while trainable)."""
        return list(self._regularization_losses)

    @property
    def input_facts(self) -> dict | None:
        """The ``input`` facts of the SavedModel's exporter metadata, if it has ours."""
        facts = (self._metadata or {}).get("input")
        return facts if isinstance(facts, dict) else None

    # -- calling ---------------------------------------------------------------------------

    def call(self, inputs, training=None):
        self._check_strategy()
        inputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), inputs)
        if self.signature is not None:
            outputs = self._function(inputs)
        else:
            train = bool(training) and self.trainable  # hub's semantics: frozen is inference.
            arguments = {**self.arguments, **(self.hparam_overrides or {})}
            arguments = {k: v for k, v in arguments.items() if k in self._defaults
                         or k in self.arguments}  # fmt: skip
            if self._takes_training:
                outputs = self._function(inputs, training=train, **arguments)
            else:
                outputs = self._function(inputs, **arguments)
            if self.trainable:
                for loss in self._regularization_losses:
                    self.add_loss(tf.cast(loss(), tf.float32))
        if isinstance(outputs, dict) and not self.signature_outputs_as_dict:
            outputs = outputs[self.output_key or next(iter(outputs))]
        return tf.nest.map_structure(lambda x: tf.cast(x, self.compute_dtype), outputs)

    def _check_strategy(self) -> None:
        # Outside any scope (inference, saving after training) the variables still read.
        current = tf.distribute.get_strategy()
        if tf.distribute.has_strategy() and current is not self._strategy:
            raise RuntimeError(
                f"exporter.KerasLayer({self.handle!r}) was created under "
                f"{type(self._strategy).__name__} and is now used under "
                f"{type(current).__name__}. Its variables belong to the strategy it was "
                "created in: create the layer (or load the model) inside the scope it trains in."
            )

    def compute_output_shape(self, input_shape):
        batch = tuple(input_shape)[0] if input_shape else None
        outputs = self._outputs
        if isinstance(outputs, dict) and not self.signature_outputs_as_dict:
            outputs = outputs[self.output_key or next(iter(outputs))]
        return tf.nest.map_structure(lambda s: (batch, *s.shape.as_list()[1:]), outputs)

    def compute_output_spec(self, inputs, training=None):
        shapes = self.compute_output_shape(tuple(inputs.shape))
        if isinstance(shapes, dict):
            return {k: keras.KerasTensor(v, dtype=self.compute_dtype) for k, v in shapes.items()}
        return keras.KerasTensor(shapes, dtype=self.compute_dtype)

    # -- serialization ---------------------------------------------------------------------

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "handle": self.handle,
            "arguments": self.arguments,
            "signature": self.signature,
            "output_key": self.output_key,
            "signature_outputs_as_dict": self.signature_outputs_as_dict,
            "allow_unsafe_ops": self.allow_unsafe_ops,
        }

    @classmethod
    def from_config(cls, config: dict) -> KerasLayer:
        """Recreate the layer from a Keras file's config.

        A ``.keras`` file is data people download, so under Keras' safe mode (the default
        of ``keras.models.load_model`` and ``keras.saving.deserialize_keras_object``)
        nothing in it grants trust: its ``allow_unsafe_ops`` is ignored and the SavedModel
        is scanned. Only the caller's ``safe_mode=False`` lets an unsafe SavedModel load.
        Outside any deserialization (``keras.models.clone_model`` of a layer made in
        code), the config is the caller's own and is honoured.
        """
        if serialization_lib.in_safe_mode() is not True:
            return super().from_config(config)
        token = _FROM_FILE.set(True)
        try:
            return super().from_config({**config, "allow_unsafe_ops": False})
        finally:
            _FROM_FILE.reset(token)
