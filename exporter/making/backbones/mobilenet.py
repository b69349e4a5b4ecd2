"""MobileNet V1, V2 and V3, as keras.applications builds them.

V3 rescales inside (``include_preprocessing=True``), so it takes 0..255 pixels.
"""

import functools

import keras

from exporter.making.registry import Backbone

_mobilenet = functools.partial(Backbone, preprocessing="tf", native_size=224, min_size=32)
_v3 = functools.partial(_mobilenet, family="mobilenet_v3", preprocessing="raw255", top_dropout=0.2)

BACKBONES = (
    _mobilenet(
        name="mobilenet", build=keras.applications.MobileNet, family="mobilenet",
        num_features=1024, top_dropout=1e-3,
    ),
    _mobilenet(
        name="mobilenet_v2", build=keras.applications.MobileNetV2, family="mobilenet_v2",
        num_features=1280,
    ),
    _v3(name="mobilenet_v3_small", build=keras.applications.MobileNetV3Small, num_features=576),
    _v3(name="mobilenet_v3_large", build=keras.applications.MobileNetV3Large, num_features=960),
)  # fmt: skip
