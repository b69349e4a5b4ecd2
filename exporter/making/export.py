"""One call from a backbone name to a verified SavedModel on disk."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from exporter.checking import files
from exporter.console import native_logs_filtered
from exporter.errors import ArgumentError, ExportError
from exporter.making import external, in_memory, precision, registry, serving
from exporter.making.build import build_classifier, build_feature_vector
from exporter.making.preprocessing import Mode
from exporter.making.save import check_destination, save_owned

# A labels file is kilobytes (ImageNet-21k's: under 1 MB); larger is not one.
MAX_LABELS_BYTES = 64 << 20


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read one class name per line (trailing blank lines ignored).

    Only a regular file (or a link to one) of at most ``MAX_LABELS_BYTES`` is read: a FIFO
    would block, and ``/dev/zero`` never ends.

    Raises:
        ExportError: If the file is missing, unreadable, not a regular file, or too large.
    """
    try:
        data = files.read_regular(Path(path).expanduser(), MAX_LABELS_BYTES, "a labels file")
        text = data.decode("utf-8")
    except files.UnsafeFileError as error:
        raise ExportError(f"Cannot read labels file {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise ExportError(
            f"Expected labels file {path} to be UTF-8 text, one class name per line. Received "
            f"byte {error.object[error.start]:#04x} at offset {error.start}, which is not UTF-8."
        ) from None
    except OSError as error:
        raise ExportError(f"Cannot read labels file {path}: {error.strerror or error}.") from None
    return text.rstrip("\n").split("\n") if text.strip() else []


@native_logs_filtered  # See exporter.console.
def export_feature_vector(
    backbone: str | os.PathLike | keras.Model,
    out: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = "imagenet",
    pooling: str | None = None,
    weight_decay: float = 0.0,
    overwrite: bool = False,
    serving_inputs: str | list[str] | None = None,
    serving_size: int | None = None,
    compute_dtype: str = "float32",
    preprocessing: Mode | None = None,
    native_size: int | None = None,
    min_size: int | None = None,
) -> Path:
    """Export a backbone as an image feature vector SavedModel.

    ``backbone`` is a registered name, a keras-hub preset (folder or handle), a ``.keras``
    file, or an in-memory ``keras.Model`` on any backend (a keras-hub ``ImageClassifier`` or
    ``Backbone`` too; ``exporter.making.in_memory``). ``serving_inputs`` and
    ``serving_size`` are ``exporter.save``'s; the other arguments are
    ``build_feature_vector``'s (for an in-memory model, what a ``.keras`` file's are).

    Example:
        >>> export_feature_vector("mobilenet_v2", "/tmp/fv", weights="none")
        PosixPath('/tmp/fv')
    """
    out = check_destination(out, overwrite)
    if in_memory.kind(backbone):
        _check_serving(None, serving_inputs, serving_size, compute_dtype)
        return in_memory.export(
            "feature_vector", backbone, out,
            dict(weights=weights, pooling=pooling, weight_decay=weight_decay,
                 compute_dtype=compute_dtype, preprocessing=preprocessing,
                 native_size=native_size, min_size=min_size),
            dict(overwrite=overwrite, serving_inputs=serving_inputs, serving_size=serving_size),
        )  # fmt: skip
    backbone = _resolved(backbone)  # Resolved once; a fact sheet is passed on.
    if isinstance(backbone, registry.Backbone):
        backbone.check_pooling(pooling)
    _check_serving(backbone, serving_inputs, serving_size, compute_dtype)
    # Only the list holds the module: the export frees it before the reload.
    owned = [build_feature_vector(
        backbone, weights=weights, pooling=pooling, weight_decay=weight_decay,
        compute_dtype=compute_dtype, preprocessing=preprocessing, native_size=native_size,
        min_size=min_size,
    )]  # fmt: skip
    return save_owned(
        owned, out, overwrite=overwrite, serving_inputs=serving_inputs, serving_size=serving_size
    )


def _resolved(backbone):
    """A registered name's fact sheet; a preset or ``.keras`` file as given."""
    if external.kind(backbone) == external.REGISTERED:
        return registry.resolve(backbone)
    return os.fspath(backbone)


def _check_serving(backbone, serving_inputs, serving_size, compute_dtype: str) -> None:
    """Refuse bad serving inputs, size or compute dtype before anything slow is built."""
    kinds = serving.parse_inputs(serving_inputs)
    serving.check_size_applies(kinds, serving_size)
    if serving_size is not None and isinstance(backbone, registry.Backbone):
        fixed = backbone.native_size if backbone.fixed_size else None
        serving.check_size_range(serving_size, backbone.min_size, fixed, backbone.name)
    precision.check(compute_dtype)


@native_logs_filtered  # See exporter.console.
def export_classifier(
    backbone: str | os.PathLike | keras.Model,
    out: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = "imagenet",
    num_classes: int | None = None,
    labels: str | os.PathLike | list[str] | None = None,
    weight_decay: float = 0.0,
    dropout_rate: float | None = None,
    overwrite: bool = False,
    serving_inputs: str | list[str] | None = None,
    serving_size: int | None = None,
    compute_dtype: str = "float32",
    preprocessing: Mode | None = None,
    native_size: int | None = None,
    min_size: int | None = None,
) -> Path:
    """Export a backbone as an image classification SavedModel (logits).

    ``backbone`` is a registered name, a keras-hub preset, a ``.keras`` file or an in-memory
    model (``build_classifier`` and ``export_feature_vector`` say what each gives);
    ``preprocessing``, ``native_size`` and ``min_size`` are ``build_classifier``'s.

    Args:
        labels: A list of class names, or the path of a file with one per line.
        dropout_rate: The default of the ``dropout_rate`` hparam; ``None``: the backbone's
            own top dropout, or 0.2.
        serving_inputs: See ``exporter.save``.
        serving_size: See ``exporter.save``.
        compute_dtype: See ``build_classifier``.

    Example:
        >>> export_classifier("mobilenet_v2", "/tmp/cls", weights="none", num_classes=5)
        PosixPath('/tmp/cls')
    """
    out = check_destination(out, overwrite)
    if not in_memory.kind(backbone):
        backbone = _resolved(backbone)
    labels = _checked_head(backbone, num_classes, labels, dropout_rate)
    _check_serving(backbone, serving_inputs, serving_size, compute_dtype)
    arguments = dict(
        weights=weights, num_classes=num_classes, labels=labels, weight_decay=weight_decay,
        dropout_rate=dropout_rate, compute_dtype=compute_dtype, preprocessing=preprocessing,
        native_size=native_size, min_size=min_size,
    )  # fmt: skip
    saving = dict(overwrite=overwrite, serving_inputs=serving_inputs, serving_size=serving_size)
    if in_memory.kind(backbone):
        return in_memory.export("classifier", backbone, out, arguments, saving)
    # Only the list holds the module: the export frees it before the reload.
    owned = [build_classifier(backbone, **arguments)]
    return save_owned(owned, out, **saving)


def _checked_head(backbone, num_classes, labels, dropout_rate) -> list[str] | None:
    """The labels (read from their file); refuse a bad ``num_classes`` or ``dropout_rate``."""
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ArgumentError(
            f"Expected num_classes to be a positive int. Received: {num_classes!r}."
        )
    if labels is not None and not isinstance(labels, list):
        labels = read_labels(labels)
    if isinstance(backbone, registry.Backbone):
        expected = num_classes or backbone.num_classes
        if labels is not None and len(labels) != expected:
            raise ArgumentError(
                f"Expected one label per class ({expected} for {backbone.name}). "
                f"Received {len(labels)} labels."
            )
    if dropout_rate is not None and not 0.0 <= dropout_rate < 1.0:
        raise ArgumentError(f"Expected dropout_rate in [0, 1). Received: {dropout_rate!r}.")
    return labels
