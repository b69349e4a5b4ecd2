"""Compute dtypes: build under Keras' mixed policy and measure the deviation from float32.

Weights stay float32 (so fine-tuning updates them at full precision); input and output stay
float32, as the contract demands. The deviation from a float32 twin with the same weights is
measured on the verify images, stated in the card, and must stay inside a documented bound.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import numpy as np

from exporter import choices
from exporter.errors import ExportError

COMPUTE_DTYPES = choices.COMPUTE_DTYPES
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# The least cosine similarity, per output row, to the float32 twin. Real weights do far
# better (ResNet50 with ImageNet weights in bfloat16: cosine 0.99999, 0.5% of the scale);
# random weights with calibrated batch norm amplify rounding through depth (MobileNetV2 in
# bfloat16: cosine 0.94 to 0.97 by calibration batch), and the bound must hold for both: it
# catches a broken export (wrong preprocessing, a lost cast), not rounding.
MIN_COSINE = {"bfloat16": 0.9, "float16": 0.99}
HELP = choices.COMPUTE_DTYPE_HELP


def check(compute_dtype: str) -> str:
    """Return ``compute_dtype`` if it is known; raise ExportError otherwise."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ExportError(
            f"Unknown compute_dtype {compute_dtype!r}; known: {', '.join(COMPUTE_DTYPES)}."
        )
    return compute_dtype


@contextlib.contextmanager
def policy(compute_dtype: str):
    """Build every Keras layer created inside under the mixed policy of ``compute_dtype``."""
    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_POLICIES[check(compute_dtype)])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(saved)


def compute_dtype_of(model) -> str:
    """The dtype ``model`` (a Keras 3 or tf-keras model) computes in; float32 if unknown."""
    policy_ = getattr(model, "dtype_policy", None)
    name = getattr(policy_, "compute_dtype", None)
    return name if name in COMPUTE_DTYPES else "float32"


@dataclasses.dataclass(frozen=True)
class Deviation:
    """How far an output computed in a lower precision is from float32."""

    compute_dtype: str
    max_relative: float  # The largest absolute difference over the float32 output's scale.
    min_cosine: float  # The least cosine similarity of an output row to its float32 row.

    def within_bound(self) -> bool:
        return self.min_cosine >= MIN_COSINE.get(self.compute_dtype, 1.0 - 1e-6)

    def describe(self) -> str:
        return (
            f"{self.compute_dtype} vs float32 on the verify images: max difference "
            f"{self.max_relative:.2%} of the output scale, least cosine similarity "
            f"{self.min_cosine:.5f} (bound: cosine >= {MIN_COSINE[self.compute_dtype]})"
        )


def deviation(compute_dtype: str, output, reference) -> Deviation:
    """Compare ``output`` with the float32 ``reference``, both [batch, width]."""
    output, reference = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    norms = np.linalg.norm(output, axis=-1) * np.linalg.norm(reference, axis=-1)
    cosine = np.sum(output * reference, axis=-1) / np.maximum(norms, 1e-30)
    return Deviation(
        compute_dtype,
        max_relative=float(np.max(np.abs(output - reference)) / scale),
        min_cosine=float(np.min(cosine)),
    )
