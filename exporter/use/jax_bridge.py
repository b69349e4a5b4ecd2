"""``exporter.KerasLayer`` on the JAX backend: the SavedModel's TensorFlow function, run on
the host, as a differentiable JAX function of the layer's weights.

On JAX the layer's weights are Keras variables (JAX arrays) holding copies of the
SavedModel's ``tf.Variable``s, in the same order as on TensorFlow. A call passes their
current values to the host (``jax.pure_callback``), which assigns them into the restored
``tf.Variable``s (a scratch space, under a lock), runs the SavedModel's function, and returns
its outputs and the new values of the non-trainable variables (batch norm's moving
statistics after a training call). A ``jax.custom_vjp`` gives the gradients: when JAX
differentiates the call, the host runs it under a ``tf.GradientTape`` and keeps the tape
until the backward callback asks it for the gradients w.r.t. the inputs and the trainable
values, so they belong to the very call whose outputs JAX got (its batch statistics, its
dropout masks). The regularization losses are evaluated the same way (run again for their
gradients: they draw nothing at random). The numbers are TensorFlow's, eagerly and under
``jit``.

Imported only on the JAX backend (jax is an optional extra).
"""

from __future__ import annotations

import collections
import functools
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

KEPT_TAPES = 8  # Forward passes whose tape waits for its backward pass, at most.


class _Taped(NamedTuple):
    """One call on the host: its tape (None if not differentiated), its input leaves, the
    floating ones and the variables it watched, and its outputs."""

    tape: tf.GradientTape | None
    leaves: list
    watched: list
    wanted: list
    outputs: object


class Bridge:
    """Runs functions of the restored ``tf.Variable``s with values given by JAX.

    Args:
        restored: The SavedModel's variables, in the order of the layer's weights.
        trainable: For each of them, whether the SavedModel lists it as trainable (the
            gradients of the others are zeros).
    """

    def __init__(self, restored: Sequence[tf.Variable], trainable: Sequence[bool]):
        self.restored = list(restored)
        self.trainable = list(trainable)
        self._lock = threading.Lock()  # The tf.Variables are shared by every call.
        self._tapes: collections.OrderedDict[int, _Taped] = collections.OrderedDict()
        self._keys = itertools.count(1)
        self._assigned: list[np.ndarray | None] = [None] * len(self.restored)

    def _assign(self, values) -> None:
        # One assign op per variable costs more than the call itself on a small model: a
        # variable whose value is what was assigned last (frozen, inference) is skipped.
        for i, (variable, value) in enumerate(zip(self.restored, values, strict=True)):
            last = self._assigned[i]
            if last is not None and last.shape == value.shape and np.array_equal(last, value):
                continue
            variable.assign(tf.cast(value, variable.dtype))
            self._assigned[i] = np.array(value, copy=True)

    def _changed(self, indices) -> None:
        """The SavedModel itself assigned these variables (a training call)."""
        for i in indices:
            self._assigned[i] = None

    def _differentiated(self, variables: bool) -> list[int]:
        if not variables:
            return []
        return [i for i, v in enumerate(self.restored) if self.trainable[i] and _floating(v)]

    def _run(self, run: Callable, values, inputs, variables: bool | None, changed) -> _Taped:
        """On the host: ``run`` at ``values`` (under a tape unless ``variables`` is None),
        which assigns the variables at the indices ``changed`` itself."""
        self._assign(values)
        self._changed(changed)
        tf_inputs = _to_tf(inputs)
        leaves = tf.nest.flatten(tf_inputs)
        if variables is None:
            return _Taped(None, leaves, [], [], run(tf_inputs))
        watched = [x for x in leaves if x.dtype.is_floating]
        wanted = [self.restored[i] for i in self._differentiated(variables)]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched)
            tape.watch(wanted)
            outputs = run(tf_inputs)
        return _Taped(tape, leaves, watched, wanted, outputs)

    def _keep(self, taped: _Taped) -> int:
        key = next(self._keys)
        self._tapes[key] = taped
        while len(self._tapes) > KEPT_TAPES:  # A backward pass that never came.
            self._tapes.popitem(last=False)
        return key

    def call(self, run: Callable, values, inputs, output_shapes, train: bool, variables: bool):
        """``run(tf_inputs)``'s outputs (``output_shapes``, a nest of ``ShapeDtypeStruct``),
        and the non-trainable values after it, differentiable w.r.t. ``inputs`` and, if
        ``variables``, the trainable ``values`` (from the forward call's tape, kept by a key;
        if it is gone, the call is run again)."""
        values = list(values)
        kept = [i for i, trainable in enumerate(self.trainable) if not trainable]
        kept_shapes = [_struct(values[i]) for i in kept]
        changed = kept if train else []  # What a training call assigns itself.

        def forward(values, inputs, taped=False):
            with self._lock:
                done = self._run(run, values, inputs, variables if taped else None, changed)
                after = [self.restored[i].numpy() for i in kept]
                key = np.int32(self._keep(done) if taped else 0)
            outputs = jax.tree.map(_to_numpy, done.outputs, output_shapes)
            after = [_to_numpy(a, s) for a, s in zip(after, kept_shapes, strict=True)]
            return (outputs, after, key) if taped else (outputs, after)

        def backward(key, values, inputs, cotangents):
            with self._lock:
                done = self._tapes.pop(int(key), None)
                if done is None:
                    done = self._run(run, values, inputs, variables, changed)
            return _gradients(done, cotangents)

        @jax.custom_vjp
        def bridged(values, inputs):
            shapes = (output_shapes, kept_shapes)
            return jax.pure_callback(forward, shapes, values, inputs, vmap_method="sequential")

        def bridged_fwd(values, inputs):
            shapes = (output_shapes, kept_shapes, jax.ShapeDtypeStruct((), jnp.int32))
            outputs, after, key = jax.pure_callback(
                functools.partial(forward, taped=True), shapes, values, inputs,
                vmap_method="sequential",
            )  # fmt: skip
            return (outputs, after), (key, values, inputs)

        def bridged_bwd(residuals, cotangents):
            key, values, inputs = residuals
            cotangents = jax.tree.map(_or_none, cotangents[0], output_shapes)
            wanted = self._differentiated(variables)
            input_leaves = jax.tree.leaves(inputs)
            shapes = (
                [_struct(values[i]) for i in wanted],
                [_struct(x) if _floating(x) else None for x in input_leaves],
            )
            var_grads, input_grads = jax.pure_callback(
                backward, shapes, key, values, inputs, cotangents, vmap_method="sequential"
            )
            input_grads = [
                _zeros(x) if g is None else g
                for x, g in zip(input_leaves, input_grads, strict=True)
            ]
            input_grads = jax.tree.unflatten(jax.tree.structure(inputs), input_grads)
            return _value_grads(values, wanted, var_grads), input_grads

        bridged.defvjp(bridged_fwd, bridged_bwd)
        return bridged(values, inputs)

    def losses(self, losses: Sequence[Callable], values, variables: bool) -> list:
        """Each of the zero-argument ``losses`` of the restored variables, at ``values``, as a
        float32 scalar differentiable w.r.t. the trainable ``values`` (if ``variables``)."""
        if not losses:
            return []
        values = list(values)
        count = len(losses)

        def forward(values):
            with self._lock:
                self._assign(values)
                return np.asarray([float(loss()) for loss in losses], np.float32)

        def backward(values, cotangent):
            wanted = [self.restored[i] for i in self._differentiated(variables)]
            with self._lock:
                self._assign(values)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(wanted)
                    each = [tf.cast(loss(), tf.float32) for loss in losses]
                    total = tf.reduce_sum(tf.stack(each) * cotangent)
                return _dense(tape.gradient(total, wanted), wanted)

        @jax.custom_vjp
        def evaluated(values):
            shape = jax.ShapeDtypeStruct((count,), jnp.float32)
            return jax.pure_callback(forward, shape, values, vmap_method="sequential")

        def evaluated_bwd(values, cotangent):
            wanted = self._differentiated(variables)
            shapes = [_struct(values[i]) for i in wanted]
            grads = jax.pure_callback(backward, shapes, values, cotangent, vmap_method="sequential")
            return (_value_grads(values, wanted, grads),)

        evaluated.defvjp(lambda values: (evaluated(values), values), evaluated_bwd)
        total = evaluated(values)
        return [total[i] for i in range(count)]


def _gradients(done: _Taped, cotangents):
    """The gradients of ``done``'s outputs (weighted by ``cotangents``) w.r.t. its floating
    inputs (None for the others) and its wanted variables, as NumPy arrays."""
    pairs = [
        (y, tf.convert_to_tensor(c, y.dtype))
        for y, c in zip(tf.nest.flatten(done.outputs), tf.nest.flatten(cotangents), strict=True)
        if c is not None and y.dtype.is_floating
    ]
    targets, weights = [p[0] for p in pairs], [p[1] for p in pairs]
    sources = done.watched + done.wanted
    grads = _dense(done.tape.gradient(targets, sources, output_gradients=weights), sources)
    by_input = iter(grads[: len(done.watched)])
    input_grads = [next(by_input) if x.dtype.is_floating else None for x in done.leaves]
    return grads[len(done.watched) :], input_grads


def _value_grads(values, wanted: list[int], grads) -> list:
    """The cotangents of all ``values``: ``grads`` at the ``wanted`` ones, zeros elsewhere."""
    value_grads = [_zeros(v) for v in values]
    for i, grad in zip(wanted, grads, strict=True):
        value_grads[i] = grad
    return value_grads


def _floating(value) -> bool:
    dtype = value.dtype
    if isinstance(dtype, tf.DType):
        return dtype.is_floating
    return jnp.issubdtype(dtype, jnp.floating)


def _struct(value) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(value.shape), value.dtype)


def _zeros(value):
    """The zero cotangent of a primal ``value`` (``float0`` for integers, as JAX wants)."""
    if _floating(value):
        return jnp.zeros(value.shape, value.dtype)
    return np.zeros(value.shape, jax.dtypes.float0)


def _or_none(cotangent, shape):
    """A cotangent to send to the host: ``None`` where JAX gives none (integer outputs)."""
    if cotangent is None or not jnp.issubdtype(shape.dtype, jnp.floating):
        return None
    return cotangent


def _dense(grads, sources) -> list[np.ndarray]:
    """TensorFlow's gradients as NumPy arrays: zeros for ``None``, dense for ``IndexedSlices``."""
    return [
        np.zeros(source.shape, source.dtype.as_numpy_dtype)
        if grad is None
        else tf.convert_to_tensor(grad).numpy()
        for grad, source in zip(grads, sources, strict=True)
    ]


def _to_tf(nest):
    return tf.nest.map_structure(lambda x: x if x is None else tf.convert_to_tensor(x), nest)


def _to_numpy(value, shape) -> np.ndarray:
    return np.asarray(value).astype(shape.dtype, copy=False).reshape(shape.shape)
