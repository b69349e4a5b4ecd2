"""ResNet (He et al., 2015), as keras.applications builds it."""

import keras

from exporter.registry import Backbone

BACKBONES = (
    Backbone(
        name="resnet50",
        build=keras.applications.ResNet50,
        family="resnet",
        preprocessing="caffe",
        native_size=224,
        min_size=32,  # keras.applications' documented minimum.
        num_features=2048,
    ),
)
