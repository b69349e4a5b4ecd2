"""An Apache Beam ``ModelHandler`` for reusable image SavedModels (ours or anyone's).

Beam's stock ``TFModelHandlerTensor`` loads through ``tf.keras.models.load_model``, which
Keras 3 refuses for a plain SavedModel, and imports tensorflow_hub at module level. This
handler scans the graph for unsafe ops, loads with ``tf.saved_model.load`` (both through
``exporter.checking.savedmodel``) and calls ``__call__(images, training=False)``, as the
contract (``docs/contract.md``) says a consumer does. Everything else (batching, sharing
one model per worker process, retries, scaling out) is Beam's ``RunInference``.

Example:
    >>> from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    >>> handler = KeyedModelHandler(SavedModelHandler("exports/mobilenet_v2", max_batch_size=32))
    >>> keyed_images | RunInference(handler)  # (path, image) -> (path, PredictionResult)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from exporter.checking import savedmodel
from exporter.errors import UnsafeOpsError


class _BeamNoise(logging.Filter):
    """Drops two warnings Beam logs on the root logger that say nothing about a local run.

    "apitools not found ... bigquery" comes when Beam loads (we use no BigQuery), and
    "Resource module is not available ..., memory usage cannot be fetched" from each
    RunInference (a metric we do not report).
    """

    TEXTS = (
        "apitools not found, and bigquery client libraries",
        "Resource module is not available for current platform",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.TEXTS)


if not any(isinstance(f, _BeamNoise) for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_BeamNoise())

try:
    import apache_beam as beam
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Batch embedding needs Apache Beam: pip install 'tfhub-exporter[beam]'"
    ) from error

METRICS_NAMESPACE = "exporter.embed"


UnsafeModelError = UnsafeOpsError  # The name this module raised before.
OPT_IN = "If you trust it, pass allow_unsafe_ops=True to run it on the workers anyway."


class SavedModelHandler(ModelHandler[np.ndarray, np.ndarray, Any]):
    """Run a reusable image SavedModel on batches of decoded images.

    Each example is one float32 ``[height, width, 3]`` image in ``[0, 1]`` (the contract's input);
    all images of a batch have the same size. Each inference is the model's output row for
    that image (a feature vector or logits). Wrap in ``KeyedModelHandler`` to carry keys.

    Args:
        model_path: The SavedModel directory (local, ``gs://``, or any filesystem TF reads).
        min_batch_size: Smallest batch Beam's ``BatchElements`` forms (except at bundle ends).
        max_batch_size: Largest batch it forms.
        max_batch_duration_secs: Longest a streaming pipeline waits to fill a batch.
        allow_unsafe_ops: Load the model even if its graph has unsafe ops.
        **kwargs: Passed to Beam's ``ModelHandler`` (``large_model``, ``model_copies``, ...).
    """

    def __init__(
        self,
        model_path: str,
        *,
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        max_batch_duration_secs: int | None = None,
        allow_unsafe_ops: bool = False,
        **kwargs,
    ):
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            **kwargs,
        )
        self.model_path = str(model_path)
        self.allow_unsafe_ops = allow_unsafe_ops

    def load_model(self):
        """Scan the graph for unsafe ops, then load it (``exporter.checking.savedmodel``)."""
        return savedmodel.load(
            self.model_path, allow_unsafe_ops=self.allow_unsafe_ops, opt_in=OPT_IN
        )

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Call ``model(images, training=False, **inference_args)`` on the stacked batch."""
        images = tf.constant(np.stack(batch).astype(np.float32, copy=False))
        outputs = model(images, training=False, **(inference_args or {}))
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "batches").inc()
        rows = np.asarray(outputs, dtype=np.float32)
        return [
            PredictionResult(example, row, self.model_path)
            for example, row in zip(batch, rows, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)
