"""ResNet and ResNetV2 (He et al., 2015 and 2016), as keras.applications builds them."""

import functools

import keras

from exporter.making.registry import Backbone

_resnet = functools.partial(
    Backbone, family="resnet", preprocessing="caffe", native_size=224, min_size=32,
    num_features=2048,
)  # fmt: skip
_resnet_v2 = functools.partial(_resnet, family="resnet_v2", preprocessing="tf")

BACKBONES = (
    _resnet(name="resnet50", build=keras.applications.ResNet50),
    _resnet(name="resnet101", build=keras.applications.ResNet101),
    _resnet(name="resnet152", build=keras.applications.ResNet152),
    _resnet_v2(name="resnet50_v2", build=keras.applications.ResNet50V2),
    _resnet_v2(name="resnet101_v2", build=keras.applications.ResNet101V2),
    _resnet_v2(name="resnet152_v2", build=keras.applications.ResNet152V2),
)
