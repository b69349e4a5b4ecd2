"""keras-hub presets as backbones: a preset folder or handle -> body, head and facts.

A keras-hub ``ImageClassifier`` is a functional model: backbone, then pooling (and, in some
families, more layers such as ViT's ``pre_logits`` or VGG's ``fc1``/``fc2``), dropout, and
one Dense layer of logits. The feature vector is what feeds that Dense layer (before the
dropout): the family's own bottleneck. For a backbone preset, the family's default
classifier is built around it to find that bottleneck; its random logits layer is dropped.

The preset's image converter (resize, then ``x * scale + offset`` on 0..255) becomes an
``Affine`` preprocessing; resizing stays the consumer's, as the image API says.

keras-hub is an extra (``INSTALL``), imported only here, when a preset is exported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import inspect
import re
from pathlib import Path

import keras

from exporter import choices
from exporter.errors import ArgumentError, ExportError, first_line
from exporter.making.head import HeadDropout
from exporter.making.preprocessing import Affine
from exporter.progress import stage

INSTALL = "pip install 'tfhub-exporter[keras_hub]'"
TASK_FILE = "task.json"  # What keras-hub's save_to_preset writes for a task (not a backbone).

# keras-hub 0.32's image backbones that are neither a classifier family nor an encoder
# (ENCODERS), and why each is refused.
# tests/test_keras_hub.py fails on an image backbone that is neither here nor classifiable.
_SEGMENTER = "an image segmentation model, not an image classification backbone"
_DETECTOR = "an object detection model, not an image classification backbone"
_GENERATIVE = "an image-to-text generative model, not an image classification backbone"
REFUSED = {
    "BASNetBackbone": _SEGMENTER,
    "DeepLabV3Backbone": _SEGMENTER,
    "SAMBackbone": _SEGMENTER,
    "SAM3PromptableConceptBackbone": _SEGMENTER,
    "SegFormerBackbone": _SEGMENTER,
    "DFineBackbone": _DETECTOR,
    "RetinaNetBackbone": _DETECTOR,
    "DepthAnythingBackbone": "a depth estimation model, not an image classification backbone",
    "VideoPrismBackbone": "a video model, not an image backbone",
    "BLIP2Backbone": _GENERATIVE,
    "Gemma3Backbone": _GENERATIVE,
    "Gemma3nBackbone": _GENERATIVE,
    "Gemma4Backbone": _GENERATIVE,
    "PARSeqBackbone": "a text recognition (OCR) model, not an image classification backbone",
    "PaliGemmaBackbone": _GENERATIVE,
    "Qwen3_5Backbone": _GENERATIVE,
    "Qwen3_5MoeBackbone": _GENERATIVE,
    "T5Gemma2Backbone": _GENERATIVE,
}

# Vision encoders without a keras-hub classifier: their pooled image embedding is the
# feature vector (what keras-hub's own code computes; see _encoder_body).
ENCODERS = {
    "DINOV2Backbone": (
        "token", "the class token (position 0) of DINOv2's output, after its final LayerNorm; "
        "its register tokens (positions 1 to {registers}) and patch tokens are not used",
    ),
    "DINOV3Backbone": (
        "token", "the class token (position 0) of DINOv3's output, after its final LayerNorm; "
        "its register tokens (positions 1 to {registers}) and patch tokens are not used",
    ),
    "CLIPBackbone": (
        "token", "CLIP's image embedding: the class token of its vision encoder (after its "
        "final LayerNorm), through the visual projection (CLIPBackbone."
        "get_vision_embeddings); the projection is applied",
    ),
    "MetaCLIP2Backbone": (
        "token", "MetaCLIP 2's image embedding: the class token of its vision encoder, through "
        "its post LayerNorm and the visual projection (MetaCLIP2Backbone."
        "get_vision_embeddings); the projection is applied",
    ),
    "SigLIPBackbone": (
        "map", "SigLIP's image embedding: its vision encoder's attention-pooled (MAP head) "
        "output after the post LayerNorm; SigLIP has no visual projection, none is applied",
    ),
}  # fmt: skip

# What a classifier's pooling takes from the backbone's output, for the model card.
_POOLING_WORDS = {
    "avg": "the average-pooled last feature map",
    "max": "the max-pooled last feature map",
    "token": "the class token (position 0) of the backbone's output sequence",
    "gap": "the mean of the backbone's output over every position",
    "flatten": "the flattened last feature map",
}
# What a token model's other tokens get, said in the card (family -> words).
_OTHER_TOKENS = {
    "DeiT": "the distillation token (position 1) is not used",
}


def import_keras_hub():
    """``keras_hub``, or an ExportError that says how to install it."""
    try:
        import keras_hub
    except ImportError as error:
        raise ExportError(
            f"Exporting a keras-hub preset needs keras-hub ({error}): {INSTALL}"
        ) from None
    return keras_hub


def version() -> str:
    try:
        return importlib.metadata.version("keras-hub")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def looks_like_preset(handle: str) -> bool:
    """Whether ``handle`` names a preset without asking keras-hub: a folder, or ``scheme://``."""
    return "://" in handle or Path(handle).expanduser().is_dir()


def is_preset_name(handle: str) -> bool:
    """Whether keras-hub (when installed) knows ``handle`` as one of its preset names."""
    try:
        import keras_hub
    except ImportError:
        return False
    return handle in keras_hub.models.Backbone.presets


@dataclasses.dataclass
class Preset:
    """A keras-hub preset, split the way the export needs it.

    Attributes:
        handle: As given: a folder, or a handle keras-hub resolves.
        family: The architecture, e.g. ``"ViT"`` (its backbone class, less ``Backbone``).
        body: From images (as the backbone takes them) to the bottleneck, shared weights.
        predictions: The classifier's logits layer (random for a backbone preset; None
            for a vision encoder, which has no classifier family).
        dropout_rate: The classifier's dropout before its logits layer.
        own_classifier: Whether the preset holds a trained classifier (a task preset).
        preprocessing: Its image converter as an ``Affine``; None when it has none.
        image_size: The converter's (or the backbone's declared) height and width, or None.
        pooling: The classifier's pooling (``avg``, ``max``, ``token``, ``gap``, ``flatten``).
        bottleneck: What the feature vector is, in the card's words.
    """

    handle: str
    family: str
    body: keras.Model
    predictions: keras.layers.Layer | None
    dropout_rate: float
    own_classifier: bool
    preprocessing: Affine | None
    image_size: int | None
    pooling: str
    bottleneck: str

    @property
    def name(self) -> str:
        return Path(self.handle.rstrip("/")).name or self.handle

    @property
    def source(self) -> str:
        return f"keras-hub {version()} preset {self.handle} ({self.family})"

    def head(self, dropout_rate: float | None = None) -> keras.Sequential:
        """The classifier's own head: ``HeadDropout`` then its logits layer (shared)."""
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        return keras.Sequential(
            [HeadDropout(rate, name="head_dropout"), self.predictions], name="classifier"
        )


def load(handle: str, *, weights: bool = True, pooling: str | None = None) -> Preset:
    """Load the preset at ``handle`` and cut its classifier at the logits layer.

    Args:
        handle: A preset folder (``save_to_preset``'s), or a handle keras-hub resolves.
        weights: False builds it with random weights (``load_weights=False``).
        pooling: None keeps the preset's (or the family's default) classifier; a pooling
            builds the family's classifier with it around the preset's backbone.

    Raises:
        ExportError: If it cannot be read or fetched, or is not an image classifier family.
    """
    keras_hub = import_keras_hub()
    from keras_hub.src.utils import preset_utils  # Tells a task preset from a backbone one.

    try:
        loader = preset_utils.get_preset_loader(handle)
        backbone_class = loader.check_backbone_class()
        has_task = preset_utils.check_file_exists(handle, TASK_FILE)
    except Exception as error:  # Offline, missing, or not a preset: keras-hub's words.
        why = offline_reason(error) or first_line(error)
        raise ExportError(f"Could not read keras-hub preset {handle!r}: {why}") from None
    name = backbone_class.__name__
    if name in ENCODERS:
        _check_pooling(pooling, (ENCODERS[name][0],), handle, f"{name} pools as its own code does")
        return _load_encoder(keras_hub, handle, name, weights)
    task_class = _classifier_class(keras_hub, backbone_class)
    if task_class is None:
        why = REFUSED.get(name, "not an image backbone with a keras-hub ImageClassifier")
        raise ExportError(f"Cannot export keras-hub preset {handle!r} ({name}): {why}.")
    _check_pooling(
        pooling, classifier_poolings(task_class), handle, f"as its {task_class.__name__} pools"
    )
    options = {} if pooling is None else {"pooling": pooling}
    with _building(handle, task_class.__name__, pooling):
        if has_task and not options:
            task = task_class.from_preset(handle, load_weights=weights)
        else:
            # The converter is read on its own (_converter): a backbone may have none.
            task = task_class.from_preset(
                handle, num_classes=1, load_weights=weights, preprocessor=None, **options
            )
    family = name.removesuffix("Backbone")
    body, predictions, rate = _cut(task, handle)
    converter = _converter(keras_hub, handle, task)
    task_pooling = str(getattr(task, "pooling", None) or "avg")
    return Preset(
        handle=handle,
        family=family,
        body=body,
        predictions=predictions,
        dropout_rate=rate,
        own_classifier=has_task and not options,
        preprocessing=_affine(converter),
        image_size=_image_size(converter, body),
        pooling=task_pooling,
        bottleneck=_bottleneck(task, body, family, task_pooling),
    )


@contextlib.contextmanager
def _building(handle: str, what: str, pooling: str | None):
    """Progress while keras-hub builds ``what``; its failure as one ExportError line."""
    try:
        with stage(f"load keras-hub preset {handle} ({what})"):
            yield
    except Exception as error:
        hint = ""
        if "EfficientNet" in what and "could not be loaded" in str(error):
            hint = (
                " (keras-hub 0.32's EfficientNetBackbone does not save num_features: a preset "
                'of another width needs "num_features": N added to the config of its '
                "config.json, N the channels of its top_conv)"
            )
        raise ExportError(
            f"Could not build keras-hub preset {handle!r} as {what}"
            f"{f' with pooling={pooling!r}' if pooling else ''}: {first_line(error)}{hint}"
        ) from error


# What the network libraries say when a host cannot be reached (requests, urllib3, socket).
_OFFLINE_TYPES = ("ConnectionError", "NameResolutionError", "MaxRetryError", "gaierror")
_HOST = re.compile(r"host='([^']+)'")


def offline_reason(error: BaseException) -> str | None:
    """Why a preset could not be read, in one line, when ``error`` (or its cause) is a
    connection failure: "cannot download it: no network (HOST cannot be reached) ..."; None
    for any other error."""
    seen, cause = [], error
    while cause is not None and len(seen) < 10:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    if not any(type(cause).__name__ in _OFFLINE_TYPES for cause in seen):
        return None
    hosts = [match.group(1) for cause in seen for match in [_HOST.search(str(cause))] if match]
    where = f" ({hosts[0]} cannot be reached)" if hosts else ""
    return (
        f"cannot download it: no network{where}. Connect, or export a preset folder that "
        "keras-hub's save_to_preset wrote."
    )


def classifier_poolings(task_class) -> tuple[str, ...]:
    """The poolings a keras-hub ``ImageClassifier`` class takes: a token model's (ViT,
    DeiT: its default is ``"token"``) or a feature map's global ones; none when it has no
    ``pooling`` argument (SwinTransformer, MobileNetV5 pool as their own code does)."""
    try:
        parameters = inspect.signature(task_class.__init__).parameters
    except (TypeError, ValueError):
        return ()
    if "pooling" not in parameters:
        return ()
    default = parameters["pooling"].default
    return choices.TOKEN_POOLINGS if default in choices.TOKEN_POOLINGS else choices.MAP_POOLINGS


def _check_pooling(pooling: str | None, takes: tuple[str, ...], handle: str, why: str) -> None:
    """Refuse, before anything is built, a pooling this preset's family does not do."""
    if pooling is None or pooling in takes:
        return
    expected = f"one of {', '.join(takes)}" if takes else "no pooling (it takes none)"
    raise ArgumentError(
        f"Expected pooling to be {expected} for keras-hub preset {handle!r} ({why}), or left "
        f'unset. Received: pooling="{pooling}".'
    )


def _load_encoder(keras_hub, handle: str, name: str, weights: bool) -> Preset:
    """A vision encoder: its pooled image embedding, no classifier of its own."""
    own_pooling, words = ENCODERS[name]
    with _building(handle, name, None):
        backbone = keras_hub.models.Backbone.from_preset(handle, load_weights=weights)
    body = _encoder_body(backbone, name)
    converter = _converter(keras_hub, handle)
    family = name.removesuffix("Backbone")
    registers = getattr(backbone, "num_register_tokens", 0)
    return Preset(
        handle=handle,
        family=family,
        body=body,
        predictions=None,
        dropout_rate=0.0,
        own_classifier=False,
        preprocessing=_affine(converter),
        image_size=_image_size(converter, body),
        pooling=own_pooling,
        bottleneck=words.format(registers=registers) + f" ({family} preset)",
    )


def _encoder_body(backbone, name: str) -> keras.Model:
    """From images to the encoder's image embedding, on ``backbone``'s own layers."""
    tower = getattr(backbone, "vision_encoder", backbone)
    images = keras.Input(tuple(tower.image_shape), name="images")
    if name in ("CLIPBackbone", "MetaCLIP2Backbone"):
        embedding = backbone.get_vision_embeddings(images)
    elif name == "SigLIPBackbone":
        embedding = tower({"images": images})
    else:  # DINOv2 and DINOv3: the class token; DINOv3 names its input pixel_values.
        key = "pixel_values" if name == "DINOV3Backbone" else "images"
        embedding = tower({key: images})[:, 0]
    return keras.Model(images, embedding, name=f"{backbone.name}_image_embedding")


def _classifier_class(keras_hub, backbone_class):
    """The ``ImageClassifier`` subclass keras-hub pairs with ``backbone_class``, or None."""
    found = [
        cls
        for cls in _subclasses(keras_hub.models.ImageClassifier)
        if getattr(cls, "backbone_cls", None) is backbone_class
    ]
    return found[0] if found else None


def _subclasses(cls) -> list:
    every = []
    for sub in cls.__subclasses__():
        every += [sub, *_subclasses(sub)]
    return every


def _cut(task: keras.Model, handle: str) -> tuple[keras.Model, keras.layers.Layer, float]:
    """``(body, logits layer, dropout rate)``: the task up to what feeds its logits layer.

    Dropout right before the logits layer moves into the head (its rate becomes the
    classifier's ``dropout_rate``); dropout anywhere else stays where it is. A head that is
    a Sequential of its own (VGG's) is cut inside: its other layers join the body.
    """
    if len(task.outputs) != 1:
        raise ExportError(f"Expected keras-hub preset {handle!r} to have one output (logits).")
    final = task.outputs[0]._keras_history.operation
    if isinstance(final, keras.Sequential) and final.layers:
        *before, predictions = final.layers
        rates = []
        while before and isinstance(before[-1], keras.layers.Dropout):
            rates.append(float(before.pop().rate))
        outer = final._inbound_nodes[0].input_tensors[0]
        features = keras.Sequential(before, name=f"{final.name}_body")(outer) if before else outer
    else:
        predictions, rates = final, []
        features = predictions.input
        while isinstance(features._keras_history.operation, keras.layers.Dropout):
            dropout = features._keras_history.operation
            rates.append(float(dropout.rate))
            features = dropout.input
    _check_logits_layer(predictions, handle)
    body = keras.Model(task.inputs, features, name=f"{task.name}_body")
    return body, predictions, rates[0] if rates else 0.0


def _check_logits_layer(predictions, handle: str) -> None:
    if not isinstance(predictions, keras.layers.Dense):
        raise ExportError(
            f"Expected keras-hub preset {handle!r} to end in a Dense logits layer. "
            f"Received: {type(predictions).__name__} {predictions.name!r}."
        )
    activation = getattr(predictions.activation, "__name__", "linear")
    if activation != "linear":
        raise ExportError(
            f"Expected keras-hub preset {handle!r}'s classifier to output logits "
            f"(activation=None). Received activation {activation!r}."
        )


def _converter(keras_hub, handle: str, task=None):
    """The preset's image converter: a task's comes with its preprocessor, a backbone's may
    be saved beside it; None when there is none."""
    converter = getattr(getattr(task, "preprocessor", None), "image_converter", None)
    if converter is not None:
        return converter
    try:
        return keras_hub.layers.ImageConverter.from_preset(handle)
    except Exception:  # A backbone preset saved without one.
        return None


def _affine(converter) -> Affine | None:
    """An image converter as an ``Affine`` on 0..255; None when there is none."""
    if converter is None:
        return None
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    return Affine.of(_plain(scale), _plain(offset))


def _plain(values):
    """A converter's scale or offset (a number, list or array) as Python floats."""
    try:
        return float(values)
    except TypeError:
        return [float(v) for v in keras.ops.convert_to_numpy(values).reshape(-1)]


def _image_size(converter, body: keras.Model) -> int | None:
    """The converter's image size, else the height the body's input declares (square only)."""
    size = getattr(converter, "image_size", None)
    if size:
        return int(size[0])
    shape = tuple(body.inputs[0].shape)
    return int(shape[1]) if len(shape) == 4 and shape[1] is not None else None


def _bottleneck(task, body: keras.Model, family: str, pooling: str) -> str:
    """What the feature vector is: the pooling, then the weighted layers after it, if any."""
    layers = [
        inner
        for layer in body.layers
        if layer is not task.backbone
        for inner in (layer.layers if isinstance(layer, keras.Sequential) else [layer])
    ]
    after = [layer.name for layer in layers if layer.weights]
    words = _POOLING_WORDS.get(pooling, f"the {pooling}-pooled backbone output")
    if after:
        words += f", through {', '.join(after)}"
    if pooling == "token" and family in _OTHER_TOKENS:
        words += f"; {_OTHER_TOKENS[family]}"
    return f"{words} ({family}, as keras-hub's {type(task).__name__} feeds its logits)"
