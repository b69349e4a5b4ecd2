"""A Keras 3 layer that fine-tunes any reusable SavedModel, with ``hub.KerasLayer``'s arguments.

``tensorflow_hub.KerasLayer`` is a tf-keras layer: a Keras 3 model refuses it. Keras 3's own
``TFSMLayer`` calls a serving signature, so it never passes ``training``, drops
``regularization_losses``, returns a dict and takes no hparams. ``KerasLayer`` here calls the
root ``__call__(inputs, training=..., **arguments)`` as hub does, and tracks the restored
variables as its weights (shared, never copied), so the optimizer updates the SavedModel.

It behaves as ``hub.KerasLayer`` does on tensorflow_hub's own test suite
(``tests/test_hub_keras_layer_suite.py``): inputs of any dtype and structure that the
SavedModel traced (images, strings, ints, dicts, lists, and Python or NumPy values, which
are converted to tensors of the traced dtype); outputs as the SavedModel returns them (a
tensor, a dict, a list, nested), with the output structure of the trace that matches the
inputs and arguments in use; ``output_shape=`` for outputs whose shapes the SavedModel
does not state; ``regularization_losses`` in ``layer.losses`` / ``model.losses`` whenever
the layer is trainable (toggling ``trainable`` shows at once); ``resolved_object``;
``load_options``; and hub's argument checks. What still differs, and why, is in
``docs/consuming.md`` ("Migrating from ``hub.KerasLayer``").

On the JAX backend it runs frozen or fine-tunes too: its weights are then Keras variables
holding copies of the SavedModel's variables, and each call runs the TensorFlow function on
the host with their values, differentiably (``exporter.use.jax_bridge``). PyTorch is refused.

Migrating from tensorflow_hub means changing one import::

    layer = exporter.KerasLayer(path, trainable=True)  # was: hub.KerasLayer(path, ...)
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras.src.saving import serialization_lib

from exporter.checking import savedmodel
from exporter.errors import Error, UnsafeOpsError

logger = logging.getLogger(__name__)

UnsafeSavedModelError = UnsafeOpsError  # The name this module raised before.
_OPT_IN = "If you trust it, pass allow_unsafe_ops=True."
_FILE_OPT_IN = (
    "If you trust it, pass safe_mode=False to keras.models.load_model (in safe mode, a Keras "
    "file or config cannot allow unsafe ops: the allow_unsafe_ops in it is ignored)."
)
# Set while from_config builds a layer from a Keras file: the error then says so.
_FROM_FILE: contextvars.ContextVar[bool] = contextvars.ContextVar("from_file", default=False)


class _Trace(NamedTuple):
    """One traced call: its arguments by name, its first input's specs, its output specs."""

    bound: dict
    first: object
    outputs: object


# -- nests of shapes, specs and values --------------------------------------------------------


def _to_shapes(value):
    """A nest of shapes (lists or tuples of ints and None) as a nest of ``tf.TensorShape``."""
    if isinstance(value, dict):
        return {key: _to_shapes(item) for key, item in value.items()}
    if isinstance(value, tf.TensorShape):
        return value
    try:
        return tf.TensorShape(value)
    except (TypeError, ValueError):
        pass
    if isinstance(value, (list, tuple)):
        return type(value)(_to_shapes(item) for item in value)
    raise TypeError(
        "Expected output_shape to be a shape without the batch dimension (a list or tuple of "
        f"ints and None), or a dict, list or tuple of such shapes. Received: {value!r}."
    )


def _from_shapes(shapes):
    """The inverse of ``_to_shapes``, as JSON-friendly lists."""
    return tf.nest.map_structure(lambda shape: shape.as_list(), shapes)


def _is_tensor(value) -> bool:
    return isinstance(value, (keras.KerasTensor, tf.Variable)) or tf.is_tensor(value)


def _holds_tensors(value) -> bool:
    return any(_is_tensor(leaf) for leaf in tf.nest.flatten(value)) or any(
        isinstance(item, dict) for item in value
    )


def _dtype_fits(have, want: tf.DType, cast_floats: bool = True) -> bool:
    try:
        have = tf.as_dtype(have)
    except TypeError:  # e.g. a NumPy string dtype: the conversion decides.
        return True
    if cast_floats and have.is_floating and want.is_floating:
        return True  # Cast to the traced dtype (mixed precision hands us float16).
    return have == want or (have.is_integer and want.is_integer)


def _fits(value, spec, shapes_only: bool = False, cast_floats: bool = True) -> bool:
    """Whether ``value`` (tensors, Python values, or shapes) could be passed for ``spec``
    (with a float of another width cast, if ``cast_floats``)."""
    if isinstance(spec, tf.TensorSpec):
        if isinstance(value, dict):
            return False
        if shapes_only:
            try:
                shape = tf.TensorShape(value)
            except (TypeError, ValueError):
                return False
        else:
            dtype = getattr(value, "dtype", None)
            if dtype is not None and not _dtype_fits(dtype, spec.dtype, cast_floats):
                return False
            shape = getattr(value, "shape", None)
            try:
                shape = tf.TensorShape(np.shape(value) if shape is None else shape)
            except (TypeError, ValueError):  # A ragged Python list: the conversion decides.
                return True
        return spec.shape.is_compatible_with(shape)
    if isinstance(spec, dict):
        return (
            isinstance(value, dict)
            and set(value) == set(spec)
            and all(_fits(value[key], spec[key], shapes_only, cast_floats) for key in spec)
        )
    if isinstance(spec, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(spec)
            and all(_fits(v, s, shapes_only, cast_floats) for v, s in zip(value, spec, strict=True))
        )
    return True  # Ragged, sparse or other specs: TensorFlow's own matching decides.


def _as_inputs(value, spec):
    """``value`` with every non-tensor converted to a tensor of the traced dtype, and every
    floating tensor cast to the traced floating dtype; symbolic tensors are left alone."""
    if value is None or isinstance(value, keras.KerasTensor):
        return value
    if _is_tensor(value):
        if (
            isinstance(spec, tf.TensorSpec)
            and value.dtype.is_floating
            and spec.dtype.is_floating
            and value.dtype != spec.dtype
        ):
            return tf.cast(value, spec.dtype)
        return value
    if isinstance(value, dict):
        specs = spec if isinstance(spec, dict) else {}
        return {key: _as_inputs(item, specs.get(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and not isinstance(spec, tf.TypeSpec):
        if isinstance(spec, (list, tuple)) and len(spec) == len(value):
            return type(value)(_as_inputs(v, s) for v, s in zip(value, spec, strict=True))
        if _holds_tensors(value):
            return type(value)(_as_inputs(item, None) for item in value)
    dtype = spec.dtype if isinstance(spec, tf.TensorSpec) else None
    try:
        tensor = tf.convert_to_tensor(value, dtype=dtype)
    except (TypeError, ValueError):  # Not of the traced dtype: the SavedModel will say so.
        tensor = tf.convert_to_tensor(value)
    return _as_inputs(tensor, spec)


def _specs_as_keras_tensors(shapes, spec):
    """Keras tensors with the given shapes, shaped into ``spec``'s structure."""
    if isinstance(spec, dict) and isinstance(shapes, dict):
        return {key: _specs_as_keras_tensors(shapes[key], spec.get(key)) for key in shapes}
    listed = isinstance(spec, (list, tuple)) and isinstance(shapes, (list, tuple))
    if listed and len(spec) == len(shapes) and not _is_shape(shapes):
        return [_specs_as_keras_tensors(s, p) for s, p in zip(shapes, spec, strict=True)]
    dtype = spec.dtype if isinstance(spec, tf.TensorSpec) else "float32"
    return keras.KerasTensor(tuple(shapes), dtype=dtype)


def _is_shape(value) -> bool:
    return all(item is None or isinstance(item, int) for item in value)


def _describe(outputs) -> str:
    if isinstance(outputs, dict):
        return f"a dict ({', '.join(sorted(outputs))})"
    if isinstance(outputs, (list, tuple)):
        return f"a {type(outputs).__name__} of {len(outputs)}"
    return "a single tensor"


def _safe_name(variable: tf.Variable) -> str:
    # Keras variable names may not contain "/" (Keras 3.15); drop the ":0" suffix too.
    return variable.name.split(":")[0].replace("/", "_")


def _check_output_arguments(signature, output_key, as_dict) -> None:
    """hub's rules for ``signature`` / ``output_key`` / ``signature_outputs_as_dict``."""
    if signature is not None and (output_key is None) == (not as_dict):
        raise ValueError(
            f"With signature={signature!r}, pass exactly one of output_key=... (to return one "
            "of its outputs) or signature_outputs_as_dict=True (to return them all as a dict). "
            f"Received output_key={output_key!r}, signature_outputs_as_dict={as_dict!r}."
        )
    if signature is None and as_dict:
        raise ValueError(
            "signature_outputs_as_dict=True is only valid with a signature=...; without one, "
            "__call__'s outputs are returned as they are (a dict stays a dict). Received "
            "signature=None, signature_outputs_as_dict=True."
        )


def _check_backend() -> None:
    """Refuse the backends that cannot call a TensorFlow function: TensorFlow runs it in
    place, JAX on the host (``exporter.use.jax_bridge``); PyTorch cannot."""
    backend = keras.backend.backend()
    if backend in ("tensorflow", "jax"):
        return
    raise Error(
        "exporter.KerasLayer needs the TensorFlow or JAX backend (KERAS_BACKEND=tensorflow "
        f"or jax); received {backend}. Load an export with tf.saved_model.load(path) outside "
        "the model instead."
    )


@keras.saving.register_keras_serializable(package="exporter")
class KerasLayer(keras.layers.Layer):
    """Wrap a reusable SavedModel as a Keras 3 layer that can be fine-tuned.

    The SavedModel's variables become the layer's weights, shared with the restored object:
    training updates them in place (on JAX the weights are copies, handed to the SavedModel
    at each call: ``exporter.use.jax_bridge``). Its ``trainable_variables`` are trainable
    weights only when the layer is trainable, and ``training=True`` reaches the SavedModel
    only then (batch norm on batch statistics, updating its moving averages; dropout on). While
    trainable, ``layer.losses`` (and so ``model.losses``) holds the SavedModel's
    ``regularization_losses``, evaluated whenever they are read; toggling ``trainable``
    shows at once.

    Inputs may be any dtype and structure the SavedModel traced: a tensor, a dict or list of
    tensors, or Python and NumPy values (converted to tensors of the traced dtype). Floating
    inputs are cast to the traced floating dtype (so ``mixed_float16`` models work); floating
    outputs are cast to the layer's compute dtype, other outputs keep their dtype. Outputs
    keep the SavedModel's structure.

    Create the layer (or load a model holding it) inside the ``tf.distribute`` strategy
    scope it trains in: the restored variables are made by that strategy.

    Args:
        handle: The SavedModel directory (local, or any filesystem TensorFlow reads).
        trainable: Whether fine-tuning updates the SavedModel's trainable variables. Not
            with ``signature`` (calling the layer then raises ``ValueError``, as in hub). A
            trainable layer whose SavedModel has no trainable variables logs an error once.
        arguments: Extra keyword arguments of ``__call__``, such as the hparams
            ``dropout_rate`` or ``batch_norm_momentum``; with ``signature``, extra named
            inputs of that signature.
        signature: Call this signature instead of ``__call__`` (inference only: no
            ``training``). Needs exactly one of ``output_key`` and
            ``signature_outputs_as_dict``. A dict input is passed as its named inputs.
        output_key: The output to return from a dict of outputs. Given for ``__call__``,
            calling the layer raises ``ValueError`` if ``__call__`` returns no dict.
        signature_outputs_as_dict: Return a signature's whole dict of outputs (only with
            ``signature``).
        allow_unsafe_ops: Load a SavedModel even if it holds ops that touch files,
            processes, the network or Python (found by ``exporter.checking.unsafe_ops``).
            From a Keras file (``from_config``) this is honoured only outside Keras' safe
            mode: ``keras.models.load_model(..., safe_mode=False)``.
        output_shape: The outputs' shapes without the batch dimension, in the outputs'
            structure (``(2,)``, ``dict(sigma=(2,), delta=(1,))``, ``[[1], [2, 2]]``), for
            SavedModels whose traced output shapes are partly or wholly unknown. Each output
            is checked against it. Saved in the config.
        tags: The MetaGraph tags to load (a TF2 SavedModel has one MetaGraph, ``serve``);
            any other set is refused with ``ValueError``. Not saved in the config.
        load_options: A ``tf.saved_model.LoadOptions`` passed to ``tf.saved_model.load``
            (after the unsafe-op scan). Not saved in the config.
        **kwargs: Passed to ``keras.layers.Layer`` (``name``, ``dtype``, ...).

    Raises:
        FileNotFoundError: If ``handle`` does not exist.
        Error: On a Keras backend other than TensorFlow (JAX, PyTorch).
        ValueError: If ``handle`` is not a SavedModel, or has no ``__call__`` (without
            ``signature``), or ``signature``, ``output_key``, ``tags`` or an argument is
            unknown, or the ``signature`` / ``output_key`` / ``signature_outputs_as_dict``
            combination is not one hub allows.
        TypeError: If ``load_options`` is not a ``tf.saved_model.LoadOptions`` or
            ``output_shape`` is not a nest of shapes.
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
        output_shape=None,
        tags=None,
        load_options: tf.saved_model.LoadOptions | None = None,
        **kwargs,
    ):
        _check_backend()
        _check_output_arguments(signature, output_key, signature_outputs_as_dict)
        if load_options is not None and not isinstance(load_options, tf.saved_model.LoadOptions):
            raise TypeError(
                "Expected load_options to be a tf.saved_model.LoadOptions or None. Received: "
                f"{type(load_options).__name__}."
            )
        super().__init__(trainable=trainable, **kwargs)
        # Inputs are converted here, to the SavedModel's traced dtypes (Keras would cast
        # floats to the compute dtype, and refuse Python values passed positionally).
        self._convert_input_args = keras.backend.backend() != "tensorflow"  # JAX: as usual.
        self.handle = str(handle)
        self.arguments = dict(arguments or {})
        self.signature = signature
        self.output_key = output_key
        self.signature_outputs_as_dict = bool(signature_outputs_as_dict)
        self.allow_unsafe_ops = bool(allow_unsafe_ops)
        self._output_shape = None if output_shape is None else _to_shapes(output_shape)
        self.tags = None if tags is None else sorted({tags} if isinstance(tags, str) else tags)
        self.load_options = load_options
        # The variables are made by the strategy in scope now (mirrored under Mirrored...).
        self._strategy = tf.distribute.get_strategy()
        self._defaults = {}
        self._parameters = {}
        self._takes_training = False
        self._logged_zero_trainable = False
        # Scalar tensors by hparam name while an export that holds this layer is traced.
        self.hparam_overrides = None
        self._loaded = self._load()
        self._metadata, _ = savedmodel.metadata(self.handle)
        self._function, self._traces = self._find_function()
        self._check_output_key()
        self._track_restored_variables()
        self._build_at_init()

    # -- construction --------------------------------------------------------------------

    def _load(self):
        # Only the argument grants trust (a .keras file's only under safe_mode=False, see
        # from_config): keras.config.enable_unsafe_deserialization() does not.
        allowed = self.allow_unsafe_ops
        opt_in = _FILE_OPT_IN if _FROM_FILE.get() else _OPT_IN
        try:
            return savedmodel.load(
                self.handle,
                allow_unsafe_ops=allowed,
                opt_in=opt_in,
                options=self.load_options,
                inspect=self._check_tags,
            )
        except savedmodel.UnreadableError as error:
            kind = FileNotFoundError if not Path(self.handle).exists() else ValueError
            raise kind(f"Expected a SavedModel directory as handle. {error}") from None

    def _check_tags(self, proto) -> None:
        if self.tags is None:
            return
        offered = [sorted(graph.meta_info_def.tags) for graph in proto.meta_graphs]
        if self.tags not in offered:
            raise ValueError(
                f"Unknown tags {self.tags} for the SavedModel at {self.handle}; its "
                f"MetaGraphs are tagged: {offered} (a TF2 SavedModel has one, ['serve']: "
                "leave tags=None). The TF1 Hub format's tags are not supported."
            )

    def _find_function(self):
        loaded = self._loaded
        signatures = sorted(getattr(loaded, "signatures", {}) or {})
        if self.signature is not None:
            return self._find_signature(signatures)
        call = loaded.__call__ if callable(loaded) else None
        traced = list(getattr(call, "concrete_functions", None) or [])
        if not traced:
            raise ValueError(
                f"Expected a SavedModel with a traced __call__ at {self.handle}. Received one "
                f"without; its signatures are: {', '.join(signatures) or 'none'} (pass "
                "signature=... to call one for inference)."
            )
        parameters = inspect.signature(call).parameters
        names = list(parameters)
        offered = [name for name in names[1:] if name != "training"]
        unknown = sorted(set(self.arguments) - set(offered))
        if unknown:
            raise ValueError(
                f"Unknown arguments {unknown} for the SavedModel at {self.handle}; its "
                f"__call__ offers: {', '.join(offered) or 'none'}."
            )
        self._takes_training = "training" in parameters
        self._parameters = {
            name: parameters[name].default
            for name in names[1:]
            if parameters[name].default is not inspect.Parameter.empty
        }
        self._defaults = {
            name: default
            for name, default in self._parameters.items()
            if name != "training"
            and isinstance(default, (int, float))
            and not isinstance(default, bool)
        }
        traces = []
        for function in traced:
            args, kwargs = function.structured_input_signature
            bound = {**dict(zip(names, args, strict=False)), **kwargs}
            first = bound.get(names[0]) if names else (args[0] if args else None)
            traces.append(_Trace(bound, first, function.structured_outputs))
        return call, traces

    def _find_signature(self, signatures):
        if self.signature not in signatures:
            raise ValueError(
                f"Unknown signature {self.signature!r} in {self.handle}; it has: "
                f"{', '.join(signatures) or 'none'}."
            )
        function = self._loaded.signatures[self.signature]
        inputs = dict(function.structured_input_signature[1])
        unknown = sorted(set(self.arguments) - set(inputs))
        if unknown:
            raise ValueError(
                f"Unknown arguments {unknown} for signature {self.signature!r} of "
                f"{self.handle}; with a signature, arguments are its named inputs: "
                f"{', '.join(sorted(inputs)) or 'none'}."
            )
        remaining = {name: spec for name, spec in inputs.items() if name not in self.arguments}
        first = next(iter(remaining.values())) if len(remaining) == 1 else remaining
        return function, [_Trace({}, first, function.structured_outputs)]

    def _check_output_key(self) -> None:
        # A signature's outputs are known now; __call__'s depend on the call (checked then).
        if self.signature is None or self.output_key is None:
            return
        outputs = self._traces[0].outputs
        if not isinstance(outputs, dict) or self.output_key not in outputs:
            keys = sorted(outputs) if isinstance(outputs, dict) else []
            raise ValueError(
                f"Unknown output_key {self.output_key!r}; the outputs are: {', '.join(keys)}."
            )

    def _track_restored_variables(self) -> None:
        # Keras 3 wraps a tf.Variable without copying it, so on TensorFlow the wrappers are the
        # SavedModel's own variables; tracked before build, as TFSMLayer does (Keras 3.15). On
        # JAX they are copies, and the restored variables a scratch space (jax_bridge). The
        # order (variables, then any trainable one they omit) fixes the order in .keras files.
        variables = list(getattr(self._loaded, "variables", []) or [])
        trainables = list(getattr(self._loaded, "trainable_variables", []) or [])
        trainable = {id(v) for v in trainables}
        on_jax = keras.backend.backend() == "jax"
        seen, restored, self._wrappers = set(), [], []
        for variable in variables + trainables:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            restored.append(variable)
            wrapper = keras.Variable(
                initializer=variable.numpy() if on_jax else variable,
                trainable=id(variable) in trainable,
                dtype=variable.dtype,
                shape=variable.shape,
                name=_safe_name(variable),
                autocast=not on_jax,  # On JAX the values go back into the tf.Variables.
            )
            self._track_variable(wrapper)
            self._wrappers.append(wrapper)
        self._bridge = None
        if on_jax:
            from exporter.use import jax_bridge  # jax is an optional extra.

            self._bridge = jax_bridge.Bridge(restored, [w.trainable for w in self._wrappers])
        losses = list(getattr(self._loaded, "regularization_losses", []) or [])
        if not all(callable(loss) for loss in losses):
            raise ValueError(
                f"Expected the SavedModel at {self.handle} to have regularization_losses "
                "that are callables taking no arguments, each returning a scalar. Received: "
                f"{[type(loss).__name__ for loss in losses]}."
            )
        self._regularization_losses = losses

    @property
    def hparams(self) -> dict:
        """The numeric hparams of ``__call__`` with their values here (``arguments`` first)."""
        return {name: self.arguments.get(name, value) for name, value in self._defaults.items()}

    @property
    def regularization_losses(self) -> list:
        """The SavedModel's zero-argument loss functions (in ``losses`` while trainable)."""
        return list(self._regularization_losses)

    @property
    def resolved_object(self):
        """The object ``tf.saved_model.load`` restored from ``handle`` (as in hub)."""
        return self._loaded

    @property
    def input_facts(self) -> dict | None:
        """The ``input`` facts of the SavedModel's exporter metadata, if it has ours."""
        facts = (self._metadata or {}).get("input")
        return facts if isinstance(facts, dict) else None

    # -- losses --------------------------------------------------------------------------

    def _get_own_losses(self):
        # Keras 3.15's Layer.losses and Model.losses read each layer's _get_own_losses(), so
        # the restored losses are evaluated whenever they are read, and only while trainable:
        # no call is needed first, a toggle of `trainable` shows at once, and inside fit's
        # traced step they are graph tensors of that step (as add_loss in call() gave).
        losses = super()._get_own_losses()
        if not self.trainable:
            return losses
        if self._bridge is not None:  # JAX: at the weights' values (traced ones in fit).
            values = [w.value for w in self._wrappers]
            losses.extend(self._bridge.losses(self._regularization_losses, values, True))
        else:
            losses.extend(tf.cast(loss(), tf.float32) for loss in self._regularization_losses)
        return losses

    # -- calling ---------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        # Keras 3 refuses a Python value passed positionally (hub takes `layer(10.)` or
        # `layer([[1.]])`): such values become tensors of the traced dtype first.
        if keras.backend.backend() != "tensorflow":  # JAX arrays, converted on the host.
            return super().__call__(*args, **kwargs)
        if args:
            args = (self._as_inputs(args[0]), *args[1:])
        elif "inputs" in kwargs:
            kwargs["inputs"] = self._as_inputs(kwargs["inputs"])
        return super().__call__(*args, **kwargs)

    def _as_inputs(self, inputs, train: bool | None = None):
        trace = self._match(inputs, train)
        return _as_inputs(inputs, trace.first if trace else None)

    def _match(self, inputs, train: bool | None = None, shapes_only: bool = False):
        """The trace that takes ``inputs`` (tensors, values or shapes) with our arguments.

        One traced for the inputs' own dtypes comes first: an export's float64 trace refuses
        float64 images with its own message, where a cast to float32 would hide them.
        """
        for cast_floats in (False, True):
            for trace in self._traces:
                if self._arguments_match(trace.bound, train) and _fits(
                    inputs, trace.first, shapes_only, cast_floats
                ):
                    return trace
        return None

    def _arguments_match(self, bound: dict, train: bool | None) -> bool:
        for name, traced in bound.items():
            if name not in self._parameters or tf.nest.flatten(traced) != [traced]:
                continue  # The input itself, or a nest: nothing to compare.
            if isinstance(traced, tf.TypeSpec):
                continue  # A tensor argument takes any value of its dtype.
            if name == "training":
                if train is None:
                    continue
                wanted = train
            else:
                wanted = self.arguments.get(name, self._parameters[name])
            if traced != wanted:
                return False
        return True

    def call(self, inputs, training=None):
        if keras.backend.backend() != "tensorflow":
            return self._call_on_host(inputs, training)
        self._check_strategy()
        self._check_trainability()
        train = bool(training) and self.trainable  # hub's semantics: frozen is inference.
        return self._run(self._as_inputs(inputs, train), train)

    def _call_on_host(self, inputs, training):
        """On JAX: the TensorFlow function run on the host with the weights' values
        (``jax_bridge``), so the outputs are the TensorFlow backend's, under ``jit`` too;
        differentiable, and a training call updates the non-trainable weights."""
        import jax

        self._check_trainability()
        train = bool(training) and self.trainable
        specs = self.compute_output_spec(inputs, training)
        unknown = [t.shape for t in tf.nest.flatten(specs) if None in t.shape]
        if unknown:
            raise Error(
                f"exporter.KerasLayer on jax needs every output dimension known; the "
                f"SavedModel at {self.handle} leaves some open ({unknown}): pass output_shape=."
            )
        shapes = tf.nest.map_structure(
            lambda t: jax.ShapeDtypeStruct(tuple(t.shape), t.dtype), specs
        )
        values = [w.value for w in self._wrappers]

        def run(tf_inputs):
            return self._run(self._as_inputs(tf_inputs, train), train)

        outputs, after = self._bridge.call(run, values, inputs, shapes, train, self.trainable)
        if train:  # Batch norm's moving statistics, as the TensorFlow backend updates them.
            kept = [w for w in self._wrappers if not w.trainable]
            for wrapper, value in zip(kept, after, strict=True):
                wrapper.assign(value)
        return outputs

    def _run(self, inputs, train: bool):
        """The SavedModel's function on TensorFlow ``inputs``: outputs selected, shaped, cast."""
        if self.signature is not None:
            outputs = self._run_signature(inputs)
        else:
            arguments = {**self.arguments, **(self.hparam_overrides or {})}
            arguments = {k: v for k, v in arguments.items() if k in self._defaults
                         or k in self.arguments}  # fmt: skip
            if self._takes_training:
                outputs = self._function(inputs, training=train, **arguments)
            else:
                outputs = self._function(inputs, **arguments)
        outputs = self._select_output(outputs)
        outputs = self._apply_output_shape(inputs, outputs)
        return tf.nest.map_structure(self._cast_output, outputs)

    def _run_signature(self, inputs):
        specs = self._function.structured_input_signature[1]
        kwargs = {name: _as_inputs(v, specs.get(name)) for name, v in self.arguments.items()}
        if isinstance(inputs, dict):
            return self._function(**{**kwargs, **inputs})
        remaining = [name for name in specs if name not in kwargs]
        if len(remaining) == 1:
            return self._function(**{**kwargs, remaining[0]: inputs})
        return self._function(inputs, **kwargs)

    def _cast_output(self, output):
        if output.dtype.is_floating and output.dtype != self.compute_dtype:
            return tf.cast(output, self.compute_dtype)
        return output

    def _select_output(self, outputs):
        if self.output_key is None:
            return outputs
        where = f"signature {self.signature!r}" if self.signature else "__call__"
        if not isinstance(outputs, dict):
            raise ValueError(
                f"output_key={self.output_key!r} picks one output of a dict, but the "
                f"SavedModel's {where} returns {_describe(outputs)}, not a dict. Pass "
                "output_key=None to get its outputs as they are."
            )
        if self.output_key not in outputs:
            raise ValueError(
                f"Unknown output_key {self.output_key!r}; the outputs of {where} are: "
                f"{', '.join(sorted(outputs))}."
            )
        return outputs[self.output_key]

    def _check_output_shape(self, outputs) -> None:
        try:
            tf.nest.assert_same_structure(outputs, self._output_shape, check_types=False)
        except (TypeError, ValueError):
            expected = tf.nest.map_structure(lambda _: "SHAPE", outputs)
            raise ValueError(
                f"Expected output_shape in the structure of the SavedModel's outputs, "
                f"{expected}. Received output_shape={_from_shapes(self._output_shape)}."
            ) from None

    def _apply_output_shape(self, inputs, outputs):
        if self._output_shape is None:
            return outputs
        self._check_output_shape(outputs)
        batch = tf.TensorShape([self._batch_size(inputs)])

        def set_shape(output, shape):
            full = batch.concatenate(shape)
            if not output.shape.is_compatible_with(full):
                raise ValueError(
                    f"Expected an output of shape {full.as_list()} (output_shape={shape} "
                    f"after the batch dimension). Received one of shape {output.shape}."
                )
            output.set_shape(full)

        tf.nest.map_structure(set_shape, outputs, self._output_shape)
        return outputs

    @staticmethod
    def _batch_size(inputs):
        leaves = [leaf for leaf in tf.nest.flatten(inputs) if hasattr(leaf, "shape")]
        shape = tuple(leaves[0].shape) if leaves else ()
        return shape[0] if shape else None

    def _check_trainability(self) -> None:
        # hub's checks, made when the layer is called (trainable may be set at any time).
        if not self.trainable:
            return
        if self.signature is not None:
            raise ValueError(
                f"trainable=True is unsupported when calling a SavedModel signature "
                f"(signature={self.signature!r}): a signature computes inference only. Set "
                "trainable=False, or leave signature=None to fine-tune through __call__."
            )
        if not self.trainable_weights and not self._logged_zero_trainable:
            self._logged_zero_trainable = True
            logger.error(
                "exporter.KerasLayer(%r) is trainable but has zero trainable weights: its "
                "SavedModel lists no trainable_variables, so fine-tuning changes nothing.",
                self.handle,
            )

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

    # -- shapes without calling --------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        """The output shapes (tuples, batch first) for inputs of ``input_shape``: a shape, or
        a dict or list of shapes in the structure the SavedModel takes."""
        trace = self._match(input_shape, shapes_only=True) or self._traces[0]
        inputs = _specs_as_keras_tensors(input_shape, trace.first)
        return tf.nest.map_structure(lambda t: t.shape, self.compute_output_spec(inputs))

    def compute_output_spec(self, inputs, training=None):
        self._check_trainability()
        train = bool(training) and self.trainable
        trace = self._match(inputs, train) or self._traces[0]
        outputs = self._select_output(trace.outputs)
        batch = self._batch_size(inputs)
        if self._output_shape is not None:
            self._check_output_shape(outputs)
            return tf.nest.map_structure(
                lambda spec, shape: keras.KerasTensor(
                    (batch, *shape.as_list()), dtype=self._output_dtype(spec)
                ),
                outputs,
                self._output_shape,
            )
        return tf.nest.map_structure(
            lambda spec: keras.KerasTensor(
                self._traced_shape(spec, batch), dtype=self._output_dtype(spec)
            ),
            outputs,
        )

    def _traced_shape(self, spec, batch):
        if spec.shape.rank is None:
            raise ValueError(
                f"The SavedModel at {self.handle} does not say its output's rank (traced as "
                f"{spec}), and Keras 3 needs one to build a model: pass output_shape=... "
                "(the shape after the batch dimension)."
            )
        dims = spec.shape.as_list()
        if dims and dims[0] is None:
            dims[0] = batch
        return tuple(dims)

    def _output_dtype(self, spec):
        return self.compute_dtype if spec.dtype.is_floating else spec.dtype.name

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
            "output_shape": None if self._output_shape is None
            else _from_shapes(self._output_shape),
        }  # fmt: skip

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
