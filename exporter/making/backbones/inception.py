"""InceptionV3, InceptionResNetV2 and Xception, as keras.applications builds them."""

import keras

from exporter.making.registry import Backbone

BACKBONES = (
    Backbone(
        name="inception_v3", build=keras.applications.InceptionV3, family="inception_v3",
        preprocessing="tf", native_size=299, min_size=75, num_features=2048,
    ),
    Backbone(
        name="inception_resnet_v2", build=keras.applications.InceptionResNetV2,
        family="inception_resnet_v2", preprocessing="tf", native_size=299, min_size=75,
        num_features=1536,
    ),
    Backbone(
        name="xception", build=keras.applications.Xception, family="xception",
        preprocessing="tf", native_size=299, min_size=71, num_features=2048,
    ),
)  # fmt: skip
