"""Sizes: bytes on disk of an export, and raw bytes of a model's weights."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

MB = 1e6


def directory_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (or of ``path`` itself if it is a file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_sizes(path: Path) -> dict:
    """Bytes of a SavedModel's ``variables/``, its ``saved_model.pb`` and the whole directory."""
    path = Path(path)
    return {
        "variables_bytes": directory_bytes(path / "variables"),
        "saved_model_pb_bytes": (path / "saved_model.pb").stat().st_size,
        "total_bytes": directory_bytes(path),
    }


def weight_bytes(weights: Iterable) -> int:
    """Raw bytes of a model's weights (Keras 3 or tf-keras): elements times item size."""
    import numpy as np

    total = 0
    for w in weights:
        dtype = getattr(w.dtype, "as_numpy_dtype", w.dtype)  # tf.DType or a dtype name.
        total += int(np.prod(w.shape)) * np.dtype(dtype).itemsize
    return total
