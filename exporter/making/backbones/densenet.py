"""DenseNet (Huang et al., 2017), as keras.applications builds it."""

import functools

import keras

from exporter.making.registry import Backbone

_densenet = functools.partial(
    Backbone, family="densenet", preprocessing="torch", native_size=224, min_size=32
)

BACKBONES = (
    _densenet(name="densenet121", build=keras.applications.DenseNet121, num_features=1024),
    _densenet(name="densenet169", build=keras.applications.DenseNet169, num_features=1664),
    _densenet(name="densenet201", build=keras.applications.DenseNet201, num_features=1920),
)
