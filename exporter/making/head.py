"""A new classifier head, and the dropout layer whose rate the ``dropout_rate`` hparam sets."""

from __future__ import annotations

import keras
import tensorflow as tf

# The dropout before the logits when a backbone has none of its own.
DEFAULT_DROPOUT = 0.2
ACTIVATIONS = ("softmax", "sigmoid")


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
        # The override is a float32 scalar; under a mixed policy the inputs are 16-bit.
        rate = self.rate if self.override is None else tf.cast(self.override, inputs.dtype)
        return tf.nn.dropout(inputs, rate=rate)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


def new_head(num_classes: int, dropout_rate: float = DEFAULT_DROPOUT) -> keras.Sequential:
    """A new classifier: ``HeadDropout(dropout_rate) -> Dense(num_classes)``, giving logits."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            "Expected num_classes to be a positive int when no head is given. "
            f"Received: num_classes={num_classes!r}."
        )
    return keras.Sequential(
        [HeadDropout(dropout_rate, name="head_dropout"), keras.layers.Dense(num_classes)],
        name="classifier",
    )


def check_activation(activation: str) -> None:
    """Raise ValueError unless ``activation`` (documented, never applied) is a known one."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)} (softmax "
            "for mutually exclusive classes, sigmoid for independent ones)."
        )


def checked_labels(labels: list[str], num_classes: int) -> list[str]:
    """``labels`` as strings, one per class, each a non-empty single line; else ValueError."""
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise ValueError(
            f"Expected one label per class ({num_classes}). Received {len(labels)} labels."
        )
    bad = [label for label in labels if not label.strip() or "\n" in label]
    if bad:
        raise ValueError(f"Labels must be non-empty single lines. Received: {bad[:3]!r}.")
    return labels
