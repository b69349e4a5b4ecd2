"""Turn float32 RGB in [0, 1] into what a backbone expects, inside the graph.

Each mode reproduces one of ``keras.applications``' ``preprocess_input`` conventions, applied
to ``images * 255``:

- ``caffe``: RGB -> BGR, then the ImageNet mean subtracted on 0..255 (ResNet, VGG).
- ``tf``: scaled to [-1, 1] (MobileNet, Inception, Xception, ResNetV2).
- ``torch``: ImageNet mean and standard deviation on [0, 1] (DenseNet).
- ``raw255``: 0..255 as is, for backbones that rescale inside (EfficientNet, ConvNeXt,
  MobileNetV3).
- ``identity``: [0, 1] as is, for models that take the contract's input directly.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

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

MODES = tuple(sorted(_MODES))

DESCRIPTIONS = {
    "caffe": "RGB to BGR, then ImageNet mean subtracted on 0..255",
    "tf": "scaled to [-1, 1]",
    "torch": "ImageNet mean and standard deviation on [0, 1]",
    "raw255": "scaled to 0..255 (the backbone normalizes inside)",
    "identity": "passed as is, in [0, 1]",
}


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is known, or raise a ValueError listing the known modes."""
    if mode not in _MODES:
        raise ValueError(f"Unknown preprocessing mode {mode!r}; known: {', '.join(MODES)}.")
    return mode


def preprocess(images: tf.Tensor, mode: str) -> tf.Tensor:
    """Map float32 RGB in [0, 1] to the input convention named by ``mode``.

    Example:
        >>> preprocess(tf.ones([1, 2, 2, 3]), "tf")[0, 0, 0].numpy().tolist()
        [1.0, 1.0, 1.0]
    """
    return _MODES[check_mode(mode)](images)
