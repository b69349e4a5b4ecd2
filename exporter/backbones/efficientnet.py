"""EfficientNet (Tan and Le, 2019), as keras.applications builds it.

The model rescales and normalizes inside, so it takes 0..255 pixels.
"""

import keras

from exporter.registry import Backbone

BACKBONES = (
    Backbone(
        name="efficientnet_b0",
        build=keras.applications.EfficientNetB0,
        family="efficientnet",
        preprocessing="raw255",
        native_size=224,
        min_size=32,
        num_features=1280,
        top_dropout=0.2,
    ),
)
