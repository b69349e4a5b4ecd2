"""An Apache Beam ``ModelHandler`` for reusable image SavedModels (ours or anyone's).

Beam's stock ``TFModelHandlerTensor`` loads through ``tf.keras.models.load_model``, which
Keras 3 refuses for a plain SavedModel, and imports tensorflow_hub at module level. This
handler loads with ``tf.saved_model.load`` and calls ``__call__(images, training=False)``, as
SPEC.md says a consumer does. Everything else (batching, sharing one model per worker process,
retries, scaling out) is Beam's ``RunInference``.

Example:
    >>> from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    >>> handler = KeyedModelHandler(SavedModelHandler("exports/mobilenet_v2", max_batch_size=32))
    >>> keyed_images | RunInference(handler)  # (path, image) -> (path, PredictionResult)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from exporter.checking import conformance, unsafe_ops

try:
    import apache_beam as beam
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("Batch embedding needs Apache Beam: pip install 'exporter[beam]'") from error

METRICS_NAMESPACE = "exporter.embed"


class UnsafeModelError(ValueError):
    """The SavedModel has ops that touch files, processes, the network or Python."""


def read_saved_model(path: str):
    """Parse ``saved_model.pb`` at ``path`` (local or any filesystem TensorFlow reads).

    Raises:
        conformance.UnreadableError: If ``path`` is not a readable SavedModel.
    """
    if "://" not in path:
        return conformance.read_saved_model(Path(path))
    from tensorflow.core.protobuf import saved_model_pb2

    pb = f"{path.rstrip('/')}/saved_model.pb"
    if not tf.io.gfile.exists(pb):
        raise conformance.UnreadableError(f"Not a SavedModel: no saved_model.pb in {path}.")
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(pb, "rb") as file:
        proto.ParseFromString(file.read())
    return proto


def check_safe(path: str) -> None:
    """Refuse a SavedModel with unsafe ops, before anything of it is loaded or run.

    Raises:
        UnsafeModelError: If the scan finds any; the message lists them.
        conformance.UnreadableError: If ``path`` is not a readable SavedModel.
    """
    found = unsafe_ops.scan(read_saved_model(path))
    if found:
        listed = ", ".join(f"{op} in {where}" for op, where in found)
        raise UnsafeModelError(
            f"Refusing to load {path}: it has unsafe ops ({listed}). A pipeline must not run "
            "graphs that write files on its workers; pass allow_unsafe_ops=True "
            "(--allow_unsafe_ops) to run it anyway."
        )


class SavedModelHandler(ModelHandler[np.ndarray, np.ndarray, Any]):
    """Run a reusable image SavedModel on batches of decoded images.

    Each example is one float32 ``[height, width, 3]`` image in ``[0, 1]`` (SPEC.md's input);
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
        """Scan the graph for unsafe ops, then load with ``tf.saved_model.load``."""
        if not self.allow_unsafe_ops:
            check_safe(self.model_path)
        return tf.saved_model.load(self.model_path)

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
