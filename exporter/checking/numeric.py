"""Calling a restored model at many shapes, and comparing outputs by their scale.

Shared by the checker, an export's verification and the tests: the numbers every side
compares with, kept apart from the rules that use them.
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

RTOL = 1e-4  # Batch composition and separate graphs may reassociate float sums.


_SHAPE_FREE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shape_free_call(obj, training: bool | None):
    """``obj(images, training=training)`` (no ``training`` if None) for images of any shape.

    Called eagerly, a restored function is instantiated again, graph optimization and all,
    for every new input shape: seconds per shape for a large backbone (``BUILD_NOTES.md``,
    "Checking").
    Inside one traced function whose images input is free in every dimension but the last,
    it is instantiated once, and the rules' batches and sizes all reuse it. A model whose
    traced input does not fit that (NCHW, a fixed batch) fails as a direct call would.
    """
    functions = _SHAPE_FREE.setdefault(obj, {})

    def call(images: tf.Tensor) -> tf.Tensor:
        key = (training, images.dtype, images.shape.rank, images.shape[-1])
        if key not in functions:
            spec_ = tf.TensorSpec([None] * (images.shape.rank - 1) + [images.shape[-1]],
                                  images.dtype)  # fmt: skip

            def inference(x):
                return obj(x) if training is None else obj(x, training=training)

            functions[key] = tf.function(inference, input_signature=[spec_], autograph=False)
        return functions[key](images)

    return call


def close(actual, expected, rtol: float = RTOL) -> bool:
    """Whether ``actual`` equals ``expected`` within ``rtol`` of the expected output's scale."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    return actual.shape == expected.shape and gap(actual, expected) <= rtol


def gap(actual, expected) -> float:
    """The largest difference, relative to the expected output's largest magnitude."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1e-6)
    return float(np.max(np.abs(actual - expected))) / scale if actual.size else 0.0
