"""Backbones that are not registered: keras-hub presets and ``.keras`` files -> modules.

``kind`` tells what a ``backbone`` argument names; the builders here make the same
``FeatureVectorModule`` / ``ClassifierModule`` as ``build`` does for registered names.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from exporter import choices
from exporter.errors import ArgumentError, ExportError, first_line
from exporter.making import presets, registry
from exporter.making.head import DEFAULT_DROPOUT, new_head
from exporter.making.layers import add_weight_decay, static_input_size
from exporter.making.module import ClassifierModule, FeatureVectorModule
from exporter.making.preprocessing import Mode, check_mode
from exporter.progress import stage

REGISTERED, PRESET, KERAS_FILE = "registered", "preset", "keras_file"
KERAS_SUFFIX = ".keras"
DEFAULT_MIN_SIZE = 32
PRESET_POOLINGS = choices.POOLINGS
IN_MEMORY = "An in-memory Keras model"
OWN_WEIGHTS = "the in-memory model's own"


def kind(backbone) -> str:
    """``REGISTERED``, ``PRESET`` or ``KERAS_FILE``: what ``backbone`` names.

    Raises:
        ExportError: If it is none of them (the message lists the registered names).
    """
    if isinstance(backbone, registry.Backbone) or backbone in registry.names():
        return REGISTERED
    text = os.fspath(backbone)
    if text.endswith(KERAS_SUFFIX):
        return KERAS_FILE
    if presets.looks_like_preset(text) or presets.is_preset_name(text):
        return PRESET
    registry.get(text)  # Raises, naming every registered backbone and the other forms.
    return REGISTERED


def build(task: str, backbone, *, compute_dtype: str = "float32", **arguments):
    """The ``task`` module (``"feature_vector"`` or ``"classifier"``) of a preset or
    ``.keras`` file, built with ``arguments``; None for a registered backbone."""
    source = kind(backbone)
    check_options(
        source, preprocessing=arguments.get("preprocessing"),
        native_size=arguments.get("native_size"), min_size=arguments.get("min_size"),
        compute_dtype=compute_dtype,
    )  # fmt: skip
    if source == REGISTERED:
        return None
    builders = {
        (PRESET, "feature_vector"): preset_feature_vector,
        (PRESET, "classifier"): preset_classifier,
        (KERAS_FILE, "feature_vector"): file_feature_vector,
        (KERAS_FILE, "classifier"): file_classifier,
    }
    return builders[source, task](os.fspath(backbone), **arguments)


def check_options(kind_: str, *, preprocessing, native_size, min_size, compute_dtype) -> None:
    """Refuse options that do not apply to this kind of backbone, before anything is built."""
    if kind_ == REGISTERED:
        given = [
            name
            for name, value in (
                ("preprocessing", preprocessing),
                ("native_size", native_size),
                ("min_size", min_size),
            )
            if value is not None
        ]
        if given:
            raise ArgumentError(
                f"A registered backbone knows its own {' and '.join(given)}: give "
                f"{' and '.join(f'{name}=...' for name in given)} only for a keras-hub preset "
                "or a .keras file."
            )
        return
    if compute_dtype != "float32":
        raise ArgumentError(
            f"Expected compute_dtype='float32' for a keras-hub preset or a .keras file (lower "
            f"precisions are built for registered backbones only). Received: {compute_dtype!r}."
        )
    for name, value in (("native_size", native_size), ("min_size", min_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ArgumentError(f"Expected {name} to be a positive int. Received: {value!r}.")
    if preprocessing is not None:
        try:
            check_mode(preprocessing)
        except ValueError as error:
            raise ArgumentError(str(error)) from None


def _preset_weights(handle: str, weights) -> bool:
    """Whether to load the preset's own weights: yes by default, no for ``"none"``."""
    if weights is None or str(weights).lower() == "none":
        return False
    if str(weights).lower() in ("imagenet", "preset"):
        return True
    raise ArgumentError(
        f'A keras-hub preset carries its own weights: expected weights="preset" (the default '
        f'"imagenet" means the same) or weights="none" for random ones. Received: {weights!r} '
        f"for {handle}."
    )


def _load_preset(handle, weights, pooling: str | None) -> tuple[presets.Preset, str]:
    if pooling is not None and pooling not in PRESET_POOLINGS:
        raise ArgumentError(
            f"Expected pooling to be one of {', '.join(PRESET_POOLINGS)} for a keras-hub "
            f'preset (as its family\'s classifier takes them). Received: pooling="{pooling}".'
        )
    load = _preset_weights(str(handle), weights)
    preset = presets.load(str(handle), weights=load, pooling=pooling)
    return preset, "preset" if load else "random"


def _preset_mode(preset: presets.Preset, preprocessing: Mode | None) -> Mode:
    mode = preprocessing if preprocessing is not None else preset.preprocessing
    if mode is None:
        raise ExportError(
            f"keras-hub preset {preset.handle} has no image converter to say how its pixels "
            "are prepared: pass preprocessing=... (a named mode, or SCALE,OFFSET on 0..255)."
        )
    return mode


def _preset_facts(preset, weights_word, preprocessing, native_size, min_size) -> dict:
    return dict(
        preprocessing=_preset_mode(preset, preprocessing),
        pooling=preset.pooling,
        native_size=native_size or preset.image_size,
        min_size=min_size or DEFAULT_MIN_SIZE,
        source=preset.source,
        name=preset.name,
        bottleneck=preset.bottleneck,
        weights=weights_word,
    )


def preset_feature_vector(
    handle, *, weights="preset", pooling=None, weight_decay=0.0, preprocessing=None,
    native_size=None, min_size=None,
) -> FeatureVectorModule:  # fmt: skip
    """The feature vector of a keras-hub preset: what its classifier feeds its logits."""
    preset, weights_word = _load_preset(handle, weights, pooling)
    add_weight_decay([preset.body], weight_decay)
    return FeatureVectorModule(
        preset.body, **_preset_facts(preset, weights_word, preprocessing, native_size, min_size)
    )


def preset_classifier(
    handle, *, weights="preset", num_classes=None, labels=None, weight_decay=0.0,
    dropout_rate=None, preprocessing=None, native_size=None, min_size=None,
) -> ClassifierModule:  # fmt: skip
    """A keras-hub preset's own classifier (a task preset), or a new head of ``num_classes``."""
    preset, weights_word = _load_preset(handle, weights, None)
    if num_classes is None:
        if not preset.own_classifier:
            raise ExportError(
                f"keras-hub preset {handle} is a {preset.family} backbone without a classifier "
                "of its own: pass num_classes=N for a new head."
            )
        head = preset.head(dropout_rate)
        width = int(preset.predictions.units)
    else:
        rate = (
            dropout_rate if dropout_rate is not None else (preset.dropout_rate or DEFAULT_DROPOUT)
        )
        head, width = new_head(num_classes, rate), num_classes
    _check_labels(labels, width, handle)
    body = preset.body
    head.build(body.outputs[0].shape)
    add_weight_decay([body, head], weight_decay)
    return ClassifierModule(
        body,
        head=head,
        labels=labels,
        **_preset_facts(preset, weights_word, preprocessing, native_size, min_size),
    )


def _check_labels(labels, num_classes: int, source) -> None:
    if labels is not None and len(labels) != num_classes:
        raise ExportError(
            f"Expected one label per class ({num_classes} for {source}). "
            f"Received {len(labels)} labels."
        )


def load_keras_file(path) -> keras.Model:
    """The Keras 3 model saved at ``path`` (``model.save("x.keras")``), in safe mode."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExportError(f"Keras model file not found: {path}. Expected a .keras file.")
    try:
        with stage(f"load {path}"):
            model = keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ExportError(
            f"Could not load {path} as a Keras 3 model: {first_line(error)}"
        ) from error
    if not isinstance(model, keras.Model):
        raise ExportError(
            f"Expected {path} to hold a Keras model. Received: {type(model).__name__}."
        )
    return model


def _output_shape(model) -> tuple | None:
    """The one output's shape a model declares, None if it declares none (subclassed)."""
    try:
        outputs = list(model.outputs or [])
    except (AttributeError, ValueError):
        return None
    return tuple(outputs[0].shape) if len(outputs) == 1 else None


def _model_pooling(model, path, pooling: str | None) -> str | None:
    """``pooling`` if the model (``path``: a .keras file, an in-memory model) takes it
    (None: the module's default).

    A feature map ``[batch, h, w, c]`` is pooled globally (``avg`` or ``max``); features
    ``[batch, n]`` are used as they are, and then no pooling applies.
    """
    shape = _output_shape(model)
    if shape is not None and len(shape) == 2:
        if pooling is not None:
            raise ArgumentError(
                f"Expected no pooling for {path}: its output {_shape_text(shape)} is already a "
                f'feature vector, used as it is. Received: pooling="{pooling}".'
            )
        return None
    takes = choices.MAP_POOLINGS
    if pooling is not None and pooling not in takes:
        what = f"its output {_shape_text(shape)}" if shape is not None else "its output"
        raise ArgumentError(
            f"Expected pooling to be one of {', '.join(takes)} for {path} (a global pooling of "
            f'{what}). Received: pooling="{pooling}".'
        )
    return pooling


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(shape)) + "]"


def model_facts(model, what: str, received: str, preprocessing, native_size, min_size, pooling):
    """The module's facts for a Keras model that does not say how its pixels are prepared
    (``what``: a .keras file, an in-memory model); what is missing is an error."""
    size = static_input_size(model)
    pooling = _model_pooling(model, received, pooling)
    missing = [
        name
        for name, value in (("preprocessing", preprocessing), ("native_size", native_size or size))
        if value is None
    ]
    if missing:
        raise ExportError(
            f"{what} does not say how its pixels are prepared or what size it was trained at: "
            f"pass {' and '.join(f'{name}=...' for name in missing)} (preprocessing: a named "
            f"mode, or SCALE,OFFSET on 0..255). Received {received}."
        )
    return dict(
        preprocessing=preprocessing,
        pooling=pooling,
        native_size=native_size or size,
        min_size=min_size or (size or DEFAULT_MIN_SIZE),
    )


def _file_facts(model, path, preprocessing, native_size, min_size, pooling) -> dict:
    facts = model_facts(
        model, "A .keras file", f"a .keras file: {path}", preprocessing, native_size, min_size,
        pooling,
    )  # fmt: skip
    return dict(
        facts,
        source=f"Keras file {Path(path).name} ({type(model).__name__})",
        name=Path(path).name.removesuffix(KERAS_SUFFIX),
        weights=f"file {Path(path).name}",
    )


def model_module(
    task: str, model, described: str, *, weights=None, num_classes=None, labels=None,
    weight_decay=0.0, dropout_rate=None, pooling=None, preprocessing=None, native_size=None,
    min_size=None, compute_dtype="float32",
):  # fmt: skip
    """The ``task`` module of an in-memory Keras model, wrapped as it is (TensorFlow only)."""
    del weights, compute_dtype  # Its own weights, float32: checked by the caller.
    facts = model_facts(model, IN_MEMORY, described, preprocessing, native_size, min_size, pooling)
    # Named after the model (its backbone_name by default): a tf.Module name must be an
    # identifier, and Keras names such as "mobilenetv2_1.00_None" are not.
    facts.update(source=described, weights=OWN_WEIGHTS)
    if task == "feature_vector":
        add_weight_decay([model], weight_decay)
        return FeatureVectorModule(model, **facts)
    _check_labels(labels, num_classes, described)
    head = new_head(num_classes, DEFAULT_DROPOUT if dropout_rate is None else dropout_rate)
    add_weight_decay([model, head], weight_decay)
    return ClassifierModule(model, head=head, labels=labels, **facts)


def _file_weights(path, weights) -> None:
    if weights is not None and str(weights).lower() not in ("imagenet", "file"):
        raise ArgumentError(
            f"A .keras file carries its own weights: leave weights= at its default. "
            f"Received: {weights!r} for {path}."
        )


def file_feature_vector(
    path, *, weights="file", pooling=None, weight_decay=0.0, preprocessing=None,
    native_size=None, min_size=None,
) -> FeatureVectorModule:  # fmt: skip
    """The feature vector of a Keras 3 model saved as ``.keras``: its output, pooled if a map."""
    _file_weights(path, weights)
    model = load_keras_file(path)
    facts = _file_facts(model, path, preprocessing, native_size, min_size, pooling)
    add_weight_decay([model], weight_decay)
    return FeatureVectorModule(model, **facts)


def file_classifier(
    path, *, weights="file", num_classes=None, labels=None, weight_decay=0.0, dropout_rate=None,
    preprocessing=None, native_size=None, min_size=None,
) -> ClassifierModule:  # fmt: skip
    """A new head of ``num_classes`` on a ``.keras`` model's (pooled) output."""
    _file_weights(path, weights)
    if num_classes is None:
        raise ExportError(
            f"A .keras file is taken as a backbone: pass num_classes=N for a new head on its "
            f"output. Received a .keras file: {path}."
        )
    model = load_keras_file(path)
    facts = _file_facts(model, path, preprocessing, native_size, min_size, None)
    _check_labels(labels, num_classes, path)
    head = new_head(num_classes, DEFAULT_DROPOUT if dropout_rate is None else dropout_rate)
    add_weight_decay([model, head], weight_decay)
    return ClassifierModule(model, head=head, labels=labels, **facts)
