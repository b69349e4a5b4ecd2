"""The hparams ``__call__`` offers: which exist, their defaults, and their run-time checks.

An hparam is a keyword argument of ``__call__`` that overrides a hyperparameter while
fine-tuning, traced as a float32 scalar tensor with a Python default (the contract's
"hparams" line). The model card documents each one with ``HPARAMS``.
"""

from __future__ import annotations

import inspect
import warnings

import tensorflow as tf

HPARAMS = {
    "dropout_rate": "the rate of the dropout before the logits layer, in [0, 1); active only "
    "with training=True",
    "batch_norm_momentum": "the momentum of every batch norm's moving mean and variance, in "
    "[0, 1]; they are updated only with training=True",
}


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


def checked_hparams(hparams: dict) -> dict:
    """Each hparam as a float32 scalar that fails at run time outside its interval."""
    return {
        name: _checked_value(value, name, upper_inclusive=name == "batch_norm_momentum")
        for name, value in hparams.items()
    }


def _checked_value(value, name: str, upper_inclusive: bool) -> tf.Tensor:
    """``value`` as a float32 scalar that fails at run time unless it is in [0, 1) or [0, 1]."""
    value = tf.convert_to_tensor(value, tf.float32)
    upper = value <= 1.0 if upper_inclusive else value < 1.0
    interval = "[0, 1]" if upper_inclusive else "[0, 1)"
    # The value goes into the message as text: an Assert whose data holds a float tensor is
    # guarded by a cond, whose Merge node grappler's loop optimizer reports at every load.
    received = tf.strings.format("{}", value)
    check = tf.debugging.Assert(
        tf.logical_and(value >= 0.0, upper), [f"Expected {name} in {interval}. Received:", received]
    )
    with tf.control_dependencies([check]):
        return tf.identity(value)


def call_signature(hparams: dict) -> inspect.Signature:
    """``(images, training=False, <hparam>=<default>, ...)``."""
    names = {"images": inspect.Parameter.empty, "training": False, **hparams}
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(k, kind, default=v) for k, v in names.items()])


def hparam_defaults(dropouts, norms, nested) -> dict:
    """Each hparam the model offers, with its default: one value shared by the whole model."""
    rates = [d.rate for d in dropouts]
    rates += [i.hparams["dropout_rate"] for i in nested if "dropout_rate" in i.hparams]
    momenta = [float(n.momentum) for n in norms]
    momenta += [
        i.hparams["batch_norm_momentum"] for i in nested if "batch_norm_momentum" in i.hparams
    ]
    defaults = {
        "dropout_rate": _shared(rates, "dropout_rate"),
        "batch_norm_momentum": _shared(momenta, "batch_norm_momentum"),
    }
    return {k: v for k, v in defaults.items() if v is not None}
