"""MobileNet family, as keras.applications builds it."""

import keras

from exporter.registry import Backbone

BACKBONES = (
    Backbone(
        name="mobilenet_v2",
        build=keras.applications.MobileNetV2,
        family="mobilenet_v2",
        preprocessing="tf",
        native_size=224,
        min_size=32,  # keras.applications' documented minimum; the graph itself needs 31.
        num_features=1280,
    ),
)
