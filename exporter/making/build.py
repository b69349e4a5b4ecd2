"""Backbone + weights + head -> an exportable module (registered backbones here; keras-hub
presets and ``.keras`` files through ``external``)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import keras

from exporter import choices
from exporter.errors import ArgumentError, ExportError, first_line
from exporter.making import external, precision, registry
from exporter.making.head import DEFAULT_DROPOUT, HeadDropout, new_head
from exporter.making.layers import add_weight_decay
from exporter.making.module import ClassifierModule, FeatureVectorModule, ImageModule
from exporter.making.preprocessing import Mode
from exporter.progress import stage

WEIGHT_SUFFIXES = (".weights.h5", ".keras")
WEIGHTS_HELP = choices.WEIGHTS_HELP


def resolve_weights(weights: str | os.PathLike | None) -> str | Path | None:
    """Return ``'imagenet'``, ``None`` or an existing weights file path.

    Raises:
        ExportError: If ``weights`` is none of the three forms, or the file is missing.
    """
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise ArgumentError(f"Expected weights to be {WEIGHTS_HELP}. Received: {str(weights)!r}.")
    if not path.is_file():
        raise ArgumentError(f"Weights file not found: {path}. Expected {WEIGHTS_HELP}.")
    return path


def _construct(backbone: registry.Backbone, weights, hint: str = "", **kwargs) -> keras.Model:
    keras_weights = "imagenet" if weights == "imagenet" else None
    try:
        with warnings.catch_warnings():
            # MobileNets built for any size load their 224 weights, as intended, and warn.
            warnings.filterwarnings("ignore", message="`input_shape` is undefined or non-square")
            model = backbone.build(weights=keras_weights, **kwargs)
    except Exception as error:
        if keras_weights is None:
            raise
        raise ExportError(
            f"Could not fetch the ImageNet weights of {backbone.name} "
            f'({first_line(error)}). Nothing was written. Use weights="none" for random '
            f"initialization, or weights=PATH for a .weights.h5 or .keras file saved from "
            f"{backbone.source}."
        ) from error
    if isinstance(weights, Path):
        with stage(f"load weights from {weights}"):
            load_weights_file(model, weights, backbone.name, hint)
    return model


def load_weights_file(model: keras.Model, path: Path, architecture: str, hint: str = "") -> None:
    """Load ``path`` into ``model``; a file of another architecture is an ExportError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(path)
    except Exception as error:
        raise ExportError(
            f"Weights file {path} does not fit {architecture}: {weights_mismatch(error)}{hint}"
        ) from error


# Keras 3.15's words for a weights file of another architecture (saving_lib, the variables).
_COUNTS = re.compile(
    r"Layer '([^']+)' expected (\d+) variables, but received (\d+) variables during loading\."
    r"(?: Expected: \[([^\]]*)\])?"
)
_SHAPES = re.compile(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))")
_TARGET = re.compile(r"Target variable: <Variable path=([^,>\s]+)")
_TOTAL = re.compile(r"A total of (\d+) objects could not be loaded")


def weights_mismatch(error: BaseException) -> str:
    """What did not fit, in one sentence: the layer or variable, what it expects and what the
    file has (Keras' own message is pages long and its first line stops at a colon)."""
    text = str(error)
    total = _TOTAL.search(text)
    more = f" ({total.group(1)} layers in all do not fit)" if total else ""
    counts = _COUNTS.search(text)
    if counts:
        name, expected, received, names = counts.groups()
        which = f" ({names.replace(chr(39), '')})" if names else ""
        return (
            f"its layer {name} expects {expected} weights{which}, the file has {received} for "
            f"it{more}."
        )
    shapes, target = _SHAPES.search(text), _TARGET.search(text)
    if shapes:
        where = f"{target.group(1)} expects" if target else "a weight expects"
        return f"{where} shape {shapes.group(1)}, the file has {shapes.group(2)}{more}."
    line = first_line(error).rstrip()
    if line.endswith(":"):  # A sentence that goes on in lines we do not print.
        line = line[: line.rfind(". ") + 1] if ". " in line else line.rstrip(":") + "."
    return line


def load_backbone(
    backbone: str | registry.Backbone, weights="imagenet", pooling: str | None = None
) -> keras.Model:
    """Build ``backbone`` without its classifier, at any input size, with ``weights``.

    Args:
        backbone: A registered name or fact sheet.
        weights: ``'imagenet'``, ``'none'``/``None``, or a ``.weights.h5``/``.keras`` path.
        pooling: ``None`` for the last feature map, or ``'avg'``/``'max'`` for pooled
            features. A family that normalizes after pooling (ConvNeXt) is always built
            pooled (``'avg'`` unless given): its bottleneck is the norm of the pooled map,
            and its unpooled output is normalized per position instead.

    Example:
        >>> model = load_backbone("mobilenet_v2", weights="none")  # For training in Keras.
    """
    backbone = registry.resolve(backbone)
    if pooling is not None:
        backbone.check_pooling(pooling)
    if backbone.norm_after_pooling:
        pooling = pooling or "avg"
    size = backbone.native_size if backbone.fixed_size else None
    weights = resolve_weights(weights)
    with stage(f"build {backbone.name}{_weights_note(weights)}"):
        model = _construct(
            backbone, weights, include_top=False, input_shape=(size, size, 3), pooling=pooling
        )
    return model


def _weights_note(weights) -> str:
    return " with ImageNet weights" if weights == "imagenet" else ""


def load_with_classifier(
    backbone: registry.Backbone, weights, dropout_rate: float | None = None
) -> tuple[keras.Model, keras.Model]:
    """Build ``backbone`` with its own classifier, split into a free-size body and a head.

    Keras only builds a backbone's classifier at a static input size. The body is rebuilt
    on a free-size input from the very same layers, so it shares every weight. The head is
    every layer after the last global pooling, with the final softmax removed and its
    dropout (if any) replaced by a ``HeadDropout`` right before the logits layer, so that
    ``dropout_rate`` can tune it. A head that flattens a feature map (VGG) only works at the
    native size: there the body is everything before the logits layer. ``dropout_rate``
    replaces the head's own rate (default: its own, or 0.2 where it has none).

    Returns:
        ``(body, head)``: a feature model and a model from its pooled output to logits.
    """
    weights = resolve_weights(weights)
    with stage(f"build {backbone.name} with its classifier{_weights_note(weights)}"):
        full = _construct(
            backbone,
            weights,
            hint=" The backbone's own classifier needs a file saved with include_top=True; "
            "for a new head, give num_classes.",
            include_top=True,
            classifier_activation=None,
        )
    logits = max(i for i, layer in enumerate(full.layers) if layer.weights)
    if backbone.classifier_fixed_size:
        cut, body = logits - 1, keras.Model(full.input, full.layers[logits].input)
    else:
        pools = [i for i, layer in enumerate(full.layers[:logits]) if _is_global_pool(layer)]
        if not pools:
            raise ExportError(f"{backbone.name} has no global pooling before its classifier.")
        cut, pool = pools[-1], full.layers[pools[-1]]
        size = backbone.native_size if backbone.fixed_size else None
        body = keras.models.clone_model(
            keras.Model(full.input, pool.input),
            input_tensors=keras.Input((size, size, 3)),
            clone_function=lambda layer: layer,
            recursive=True,  # Nested models (ConvNeXt's stem) have a fixed Input of their own.
        )
    top = full.layers[cut + 1 :]
    rates = [layer.rate for layer in top if isinstance(layer, keras.layers.Dropout)]
    if dropout_rate is None:
        dropout_rate = rates[-1] if rates else DEFAULT_DROPOUT
    dropout = HeadDropout(dropout_rate, name="head_dropout")
    top = [layer for layer in top if not isinstance(layer, keras.layers.Dropout)]
    place = top.index(full.layers[logits])
    top = [*top[:place], dropout, *top[place:]]
    if not backbone.classifier_fixed_size and getattr(pool, "keepdims", False):
        # Our pooled features are [batch, channels]; this head expects [batch, 1, 1, channels].
        top = [keras.layers.Reshape((1, 1, pool.input.shape[-1])), *top]
    return body, keras.Sequential(top, name="classifier")


def _is_global_pool(layer) -> bool:
    return isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D))


def imagenet_labels() -> list[str]:
    """Return the 1000 ImageNet-1k class names, in keras.applications' class index order.

    Shipped as package data (they cannot be downloaded at export time); the names are those
    torchvision 0.29.1 lists in ``torchvision/models/_meta.py`` (``_IMAGENET_CATEGORIES``).
    """
    text = resources.files("exporter").joinpath("data/imagenet_labels.txt").read_text("utf-8")
    return text.splitlines()


def build_feature_vector(
    backbone: str | os.PathLike | registry.Backbone,
    *,
    weights: str | os.PathLike | None = "imagenet",
    pooling: str | None = None,
    weight_decay: float = 0.0,
    compute_dtype: str = "float32",
    preprocessing: Mode | None = None,
    native_size: int | None = None,
    min_size: int | None = None,
) -> FeatureVectorModule:
    """Build the image feature vector module of a backbone.

    Args:
        backbone: A registered name (see ``exporter.list_backbones()``) or fact sheet; a
            keras-hub preset (a ``save_to_preset`` folder, or a handle keras-hub resolves);
            or a ``.keras`` file of a Keras 3 model.
        weights: ``'imagenet'``, ``'none'``/``None``, or a ``.weights.h5``/``.keras`` path.
            For a preset: its own (``'imagenet'`` or ``'preset'``), or ``'none'``.
        pooling: ``'avg'`` (the default) or ``'max'`` over the last feature map; for a
            preset also ``'token'`` or ``'gap'`` (default: its classifier's own).
        weight_decay: L2 penalty on every kernel, exposed as ``regularization_losses``.
        compute_dtype: ``float32``, ``bfloat16`` or ``float16``; see ``with_compute_dtype``.
        preprocessing: For a ``.keras`` file (required) or a preset (default: its image
            converter): a named mode, or an ``Affine``.
        native_size: For a ``.keras`` file with a free input size (required) or a preset.
        min_size: For a ``.keras`` file or a preset (default 32).

    Example:
        >>> module = build_feature_vector("mobilenet_v2", weights=None)
        >>> module.num_features
        1280
    """
    elsewhere = external.build(
        "feature_vector", backbone, weights=weights, pooling=pooling,
        weight_decay=weight_decay, compute_dtype=compute_dtype, preprocessing=preprocessing,
        native_size=native_size, min_size=min_size,
    )  # fmt: skip
    if elsewhere is not None:
        return elsewhere
    facts = registry.resolve(backbone)
    pooling = facts.check_pooling(pooling)

    def make(float32_twin=None):
        # Families that normalize after pooling pool inside Keras; the rest are pooled by
        # the module, which keeps the feature map for heads that need it.
        model = load_backbone(facts, weights, pooling if facts.norm_after_pooling else None)
        add_weight_decay([model], weight_decay)
        return FeatureVectorModule(
            model, float32_twin=float32_twin, **_facts_arguments(facts, weights, pooling)
        )

    return with_compute_dtype(make, compute_dtype)


def with_compute_dtype(make: Callable[..., ImageModule], compute_dtype: str) -> ImageModule:
    """Return ``make()``, its Keras layers built under ``compute_dtype``'s mixed policy.

    For a lower precision, ``make`` runs twice: once in float32, and once under the mixed
    policy as ``make(float32_twin=the float32 module)``, with the float32 weights copied
    over. The twin stays unsaved; the export measures its deviation from it.
    """
    if precision.check(compute_dtype) == "float32":
        return make()
    reference = make()
    with precision.policy(compute_dtype), stage(f"build in {compute_dtype}"):
        module = make(float32_twin=reference)
    pairs = list(zip(module.variables, reference.variables, strict=True))
    for variable, value in pairs:
        if variable.shape != value.shape:
            raise ExportError(f"The {compute_dtype} model's weights differ from float32's.")
        variable.assign(value)
    return module


def describe_weights(weights) -> str:
    """What ``resolve_weights``' result is, in the card's words."""
    if weights is None:
        return "random"
    return "imagenet" if weights == "imagenet" else f"file {Path(weights).name}"


def _facts_arguments(facts: registry.Backbone, weights, pooling: str = "avg") -> dict:
    return dict(
        weights=describe_weights(resolve_weights(weights)),
        pooling=pooling,  # ConvNeXt's body pools inside: say how, not "none".
        bottleneck=facts.bottleneck(pooling),
        preprocessing=facts.preprocessing,
        min_size=facts.min_size,
        fixed_size=facts.native_size if facts.fixed_size else None,
        native_size=facts.native_size,
        source=facts.source,
        name=facts.name,
    )


def build_classifier(
    backbone: str | os.PathLike | registry.Backbone,
    *,
    weights: str | os.PathLike | None = "imagenet",
    num_classes: int | None = None,
    labels: list[str] | None = None,
    weight_decay: float = 0.0,
    dropout_rate: float | None = None,
    compute_dtype: str = "float32",
    preprocessing: Mode | None = None,
    native_size: int | None = None,
    min_size: int | None = None,
) -> ClassifierModule:
    """Build the image classification module of a backbone.

    Args:
        backbone: A registered name or fact sheet, a keras-hub preset, or a ``.keras`` file
            (see ``build_feature_vector``).
        weights: ``'imagenet'``, ``'none'``/``None``, or a ``.weights.h5``/``.keras`` path.
        num_classes: ``None`` keeps the backbone's own classifier (ImageNet's 1000 classes)
            as logits; a number puts a new Dense head of that width on the pooled features.
        labels: One class name per class, shipped as the ``labels.txt`` asset; for the
            backbone's own classifier, ImageNet's class names by default.
        weight_decay: L2 penalty on every kernel of the backbone and the head.
        dropout_rate: The default of the ``dropout_rate`` hparam, the dropout right before
            the logits layer (active only with ``training=True``). ``None``: the
            backbone's own top dropout, or 0.2.
        compute_dtype: ``float32``, ``bfloat16`` or ``float16``; see ``with_compute_dtype``.
        preprocessing: As for ``build_feature_vector``; so are ``native_size``, ``min_size``.

    A task preset keeps its own classifier (logits) unless ``num_classes`` is given; a
    backbone preset or a ``.keras`` file needs ``num_classes``.

    Example:
        >>> module = build_classifier("mobilenet_v2", weights=None, num_classes=5)
        >>> module.num_classes
        5
    """
    elsewhere = external.build(
        "classifier", backbone, weights=weights, num_classes=num_classes, labels=labels,
        weight_decay=weight_decay, dropout_rate=dropout_rate, compute_dtype=compute_dtype,
        preprocessing=preprocessing, native_size=native_size, min_size=min_size,
    )  # fmt: skip
    if elsewhere is not None:
        return elsewhere
    facts = registry.resolve(backbone)
    if labels is None and num_classes is None:
        labels = imagenet_labels()  # Its own classifier: ImageNet's 1000 classes.
    return with_compute_dtype(
        lambda float32_twin=None: _classifier(
            facts, weights, num_classes, labels, weight_decay, dropout_rate, float32_twin
        ),
        compute_dtype,
    )


def _classifier(facts, weights, num_classes, labels, weight_decay, dropout_rate, float32_twin):
    common = dict(labels=labels, float32_twin=float32_twin, **_facts_arguments(facts, weights))
    if num_classes is None:
        body, head = load_with_classifier(facts, weights, dropout_rate)
        if facts.classifier_fixed_size:
            common.update(fixed_size=facts.native_size)
    else:
        body = load_backbone(facts, weights)
        if dropout_rate is None:
            dropout_rate = facts.top_dropout or DEFAULT_DROPOUT
        head = new_head(num_classes, dropout_rate)
        head.build((None, facts.num_features))  # Its kernel must exist for weight decay.
    add_weight_decay([body, head], weight_decay)
    return ClassifierModule(body, head=head, **common)
