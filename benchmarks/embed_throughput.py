"""Images/s of ``exporter.embed`` against the export's own throughput, in the same run.

Usage:
    python benchmarks/embed_throughput.py [--images=512] [--batch_size=32] [--backbone=mobilenet_v2]

Writes ``--images`` synthetic 224x224 JPEGs and a feature vector export of ``--backbone``
(random weights: speed does not depend on them; nothing is downloaded), then measures:

- the anchor: ``obj(images, training=False)`` on pre-decoded float32 tensors, ``--batch_size``
  at a time, after a warm-up call: the physical limit of this machine for this model
  (measured before and after the pipeline, averaged);
- ``exporter.use.embed.run`` on the JPEG files, one local process (FnApiRunner), the same
  batch size, end to end (pipeline start, model load, reading, decoding, writing parquet);
- the same run's steady rate: its images over its wall time less the model load that
  Beam's ``RunInference`` reports.

Prints each in images/s and its ratio to the anchor (goal: >= 0.8 on one process).
"""

import io
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image

import exporter
from exporter.use import embed

logging.getLogger("apache_beam").setLevel(logging.WARNING)

_IMAGES = flags.DEFINE_integer("images", 512, "Number of synthetic JPEGs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per model call, for both.")
_BACKBONE = flags.DEFINE_string("backbone", "mobilenet_v2", "Registered backbone to export.")
SIZE = 224


def _write_jpegs(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for index in range(count):
        # Shifted copies of one smooth-ish image: realistic JPEG sizes, cheap to make.
        pixels = np.roll(base, index, axis=1)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        (folder / f"image_{index:04d}.jpg").write_bytes(buffer.getvalue())


def _anchor(path: Path, count: int, batch_size: int) -> float:
    obj = tf.saved_model.load(str(path))
    images = np.random.default_rng(1).random((count, SIZE, SIZE, 3), dtype=np.float32)
    batches = [tf.constant(images[i : i + batch_size]) for i in range(0, count, batch_size)]
    obj(batches[0], training=False)  # Warm-up: the first call builds the graph's kernels.
    if len(batches) > 1 and batches[-1].shape[0] != batch_size:
        obj(batches[-1], training=False)
    start = time.perf_counter()
    for batch in batches:
        obj(batch, training=False).numpy()
    return count / (time.perf_counter() - start)


def main(argv):
    del argv
    count, batch_size = _IMAGES.value, _BATCH_SIZE.value
    scratch = Path(tempfile.mkdtemp(prefix="embed-throughput-"))
    try:
        (scratch / "images").mkdir()
        _write_jpegs(scratch / "images", count)
        model = exporter.export_feature_vector(_BACKBONE.value, scratch / "export", weights="none")
        # The anchor is measured before and after the pipeline and averaged: on a shared
        # machine the load changes during the run.
        before = _anchor(model, count, batch_size)
        summary = embed.run(
            str(model), str(scratch / "images"), str(scratch / "out" / "vectors"),
            batch_size=batch_size, image_size=SIZE,
        )  # fmt: skip
        assert summary.images_embedded == count, summary.line()
        after = _anchor(model, count, batch_size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load = summary.model_load_seconds
    steady = count / (summary.seconds - load)
    print(f"{_BACKBONE.value}, {count} JPEGs {SIZE}x{SIZE}, batch {batch_size}, one process")
    anchor = (before + after) / 2
    print(
        f"anchor: export on pre-decoded tensors  {anchor:8.1f} images/s  1.00  "
        f"(before {before:.1f}, after {after:.1f})"
    )
    print(
        f"exporter.embed, end to end           {summary.images_per_second:8.1f} images/s  "
        f"{summary.images_per_second / anchor:.2f}  ({summary.seconds:.1f} s)"
    )
    print(
        f"exporter.embed, less the model load  {steady:8.1f} images/s  {steady / anchor:.2f}  "
        f"(load {load:.1f} s)"
    )


if __name__ == "__main__":
    app.run(main)
