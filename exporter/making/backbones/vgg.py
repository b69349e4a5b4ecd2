"""VGG16 and VGG19 (Simonyan and Zisserman, 2014), as keras.applications builds them.

The features work at any size from 32 up; their own classifier flattens a 7x7 map, so
it only works at 224x224.
"""

import keras

from exporter.making.registry import Backbone

BACKBONES = (
    Backbone(
        name="vgg16", build=keras.applications.VGG16, family="vgg16", preprocessing="caffe",
        native_size=224, min_size=32, num_features=512, classifier_fixed_size=True,
    ),
    Backbone(
        name="vgg19", build=keras.applications.VGG19, family="vgg19", preprocessing="caffe",
        native_size=224, min_size=32, num_features=512, classifier_fixed_size=True,
    ),
)  # fmt: skip
