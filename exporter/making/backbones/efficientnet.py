"""EfficientNet and EfficientNetV2 (Tan and Le, 2019 and 2021), as keras.applications
builds them. Both rescale and normalize inside, so they take 0..255 pixels.
"""

import functools

import keras

from exporter.making.registry import Backbone

_b = functools.partial(Backbone, family="efficientnet", preprocessing="raw255", min_size=32)
_v2 = functools.partial(_b, family="efficientnet_v2", top_dropout=0.2)
_apps = keras.applications

BACKBONES = (
    _b(name="efficientnet_b0", build=_apps.EfficientNetB0, native_size=224, num_features=1280,
       top_dropout=0.2),
    _b(name="efficientnet_b1", build=_apps.EfficientNetB1, native_size=240, num_features=1280,
       top_dropout=0.2),
    _b(name="efficientnet_b2", build=_apps.EfficientNetB2, native_size=260, num_features=1408,
       top_dropout=0.3),
    _b(name="efficientnet_b3", build=_apps.EfficientNetB3, native_size=300, num_features=1536,
       top_dropout=0.3),
    _b(name="efficientnet_b4", build=_apps.EfficientNetB4, native_size=380, num_features=1792,
       top_dropout=0.4),
    _b(name="efficientnet_b5", build=_apps.EfficientNetB5, native_size=456, num_features=2048,
       top_dropout=0.4),
    _b(name="efficientnet_b6", build=_apps.EfficientNetB6, native_size=528, num_features=2304,
       top_dropout=0.5),
    _b(name="efficientnet_b7", build=_apps.EfficientNetB7, native_size=600, num_features=2560,
       top_dropout=0.5),
    _v2(name="efficientnet_v2_b0", build=_apps.EfficientNetV2B0, native_size=224,
        num_features=1280),
    _v2(name="efficientnet_v2_b1", build=_apps.EfficientNetV2B1, native_size=240,
        num_features=1280),
    _v2(name="efficientnet_v2_b2", build=_apps.EfficientNetV2B2, native_size=260,
        num_features=1408),
    _v2(name="efficientnet_v2_b3", build=_apps.EfficientNetV2B3, native_size=300,
        num_features=1536),
    _v2(name="efficientnet_v2_s", build=_apps.EfficientNetV2S, native_size=384,
        num_features=1280),
    _v2(name="efficientnet_v2_m", build=_apps.EfficientNetV2M, native_size=480,
        num_features=1280),
    _v2(name="efficientnet_v2_l", build=_apps.EfficientNetV2L, native_size=480,
        num_features=1280),
)  # fmt: skip
