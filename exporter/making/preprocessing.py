"""Turn float32 RGB in [0, 1] into what a backbone expects, inside the graph.

Each mode reproduces one of ``keras.applications``' ``preprocess_input`` conventions, applied
to ``images * 255``:

- ``caffe``: RGB -> BGR, then the ImageNet mean subtracted on 0..255 (ResNet, VGG).
- ``tf``: scaled to [-1, 1] (MobileNet, Inception, Xception, ResNetV2).
- ``torch``: ImageNet mean and standard deviation on [0, 1] (DenseNet).
- ``raw255``: 0..255 as is, for backbones that rescale inside (EfficientNet, ConvNeXt,
  MobileNetV3).
- ``identity``: [0, 1] as is, for models that take the contract's input directly.

An ``Affine(scale, offset)`` is the general form: ``images * 255 * scale + offset``, per
channel or for all three, as a keras-hub preset's image converter computes it (after its
resize, which stays the consumer's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from exporter import choices

# ImageNet statistics, as keras.applications.imagenet_utils uses them.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
_TORCH_STD_RGB = (0.229, 0.224, 0.225)


def _caffe(images: tf.Tensor) -> tf.Tensor:
    return images[..., ::-1] * 255.0 - tf.constant(_CAFFE_MEAN_BGR, images.dtype)


def _tf(images: tf.Tensor) -> tf.Tensor:
    return images * 2.0 - 1.0


def _torch(images: tf.Tensor) -> tf.Tensor:
    mean = tf.constant(_TORCH_MEAN_RGB, images.dtype)
    std = tf.constant(_TORCH_STD_RGB, images.dtype)
    return (images - mean) / std


def _raw255(images: tf.Tensor) -> tf.Tensor:
    return images * 255.0


def _identity(images: tf.Tensor) -> tf.Tensor:
    return images


_MODES: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "caffe": _caffe,
    "tf": _tf,
    "torch": _torch,
    "raw255": _raw255,
    "identity": _identity,
}

MODES = choices.PREPROCESSING_MODES

DESCRIPTIONS = {
    "caffe": "RGB to BGR, then ImageNet mean subtracted on 0..255",
    "tf": "scaled to [-1, 1]",
    "torch": "ImageNet mean and standard deviation on [0, 1]",
    "raw255": "scaled to 0..255 (the backbone normalizes inside)",
    "identity": "passed as is, in [0, 1]",
}


AFFINE = "affine"


@dataclasses.dataclass(frozen=True)
class Affine:
    """``images * 255 * scale + offset``: one number, or three (R, G, B), for each.

    Example:
        >>> Affine.parse("0.00784,-1").describe()
        'pixels on 0..255 times 0.00784, plus -1'
    """

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    def __post_init__(self):
        for name in ("scale", "offset"):
            values = getattr(self, name)
            if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
                raise ValueError(
                    f"Expected the affine {name} to be one finite number or three (R, G, B). "
                    f"Received: {list(values)}."
                )

    @classmethod
    def of(cls, scale: float | Sequence[float], offset: float | Sequence[float]) -> Affine:
        """From numbers or per-channel sequences (as a keras-hub image converter holds them)."""
        return cls(_numbers(scale), _numbers(offset))

    @classmethod
    def parse(cls, text: str) -> Affine:
        """From ``"SCALE,OFFSET"``, each a number or three joined by ``:`` (``"a:b:c"``)."""
        parts = str(text).split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            scale, offset = ([float(v) for v in part.split(":")] for part in parts)
            return cls(tuple(scale), tuple(offset))
        except ValueError:
            raise ValueError(
                f"Expected preprocessing to be one of {', '.join(MODES)}, or SCALE,OFFSET "
                "applied to pixels on 0..255 (each a number, or R:G:B). "
                f"Received: {text!r}."
            ) from None

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        scale = tf.constant(self.scale, images.dtype)
        offset = tf.constant(self.offset, images.dtype)
        return images * 255.0 * scale + offset

    def describe(self) -> str:
        return f"pixels on 0..255 times {_text(self.scale)}, plus {_text(self.offset)}"

    def facts(self) -> dict:
        """For ``metadata.json``: the numbers, each a list of one or three."""
        return {"scale": list(self.scale), "offset": list(self.offset)}


def _numbers(values) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        return (float(values),)
    return tuple(float(v) for v in values)


def _text(values: tuple[float, ...]) -> str:
    numbers = [f"{v:.6g}" for v in values]
    return numbers[0] if len(numbers) == 1 else "(" + ", ".join(numbers) + ")"


Mode = str | Affine


def check_mode(mode: Mode) -> Mode:
    """Return ``mode`` if it is known (a named mode, or an ``Affine``), or raise a
    ValueError listing the known modes."""
    if isinstance(mode, Affine):
        return mode
    if mode not in _MODES:
        raise ValueError(
            f"Unknown preprocessing mode {mode!r}; known: {', '.join(MODES)}, or an Affine."
        )
    return mode


def parse_mode(text: str) -> Mode:
    """A named mode, or ``"SCALE,OFFSET"`` as an ``Affine`` (the command line's form)."""
    return text if text in _MODES else Affine.parse(text)


def name(mode: Mode) -> str:
    """The mode's name in the metadata: its own, or ``"affine"``."""
    return AFFINE if isinstance(check_mode(mode), Affine) else mode


def describe(mode: Mode) -> str:
    """What ``mode`` does to the [0, 1] input, in the card's words."""
    return mode.describe() if isinstance(check_mode(mode), Affine) else DESCRIPTIONS[mode]


def preprocess(images: tf.Tensor, mode: Mode) -> tf.Tensor:
    """Map float32 RGB in [0, 1] to the input convention named by ``mode``.

    Example:
        >>> preprocess(tf.ones([1, 2, 2, 3]), "tf")[0, 0, 0].numpy().tolist()
        [1.0, 1.0, 1.0]
    """
    if isinstance(check_mode(mode), Affine):
        return mode(images)
    return _MODES[mode](images)
