"""ConvNeXt (Liu et al., 2022), as keras.applications builds it.

It normalizes inside (``include_preprocessing=True``), so it takes 0..255 pixels. Its
bottleneck is LayerNorm of the pooled last stage (the paper's and its own head's order):
Keras puts that LayerNorm after the optional pooling of ``include_top=False``, so pooling
the unpooled model's output afterwards would compute ``mean(LayerNorm(x))`` instead.
"""

import functools

import keras

from exporter.making.registry import Backbone

_convnext = functools.partial(
    Backbone,
    family="convnext",
    preprocessing="raw255",
    native_size=224,
    min_size=32,
    norm_after_pooling="LayerNorm",
)

BACKBONES = (
    _convnext(name="convnext_tiny", build=keras.applications.ConvNeXtTiny, num_features=768),
    _convnext(name="convnext_small", build=keras.applications.ConvNeXtSmall, num_features=768),
    _convnext(name="convnext_base", build=keras.applications.ConvNeXtBase, num_features=1024),
    _convnext(name="convnext_large", build=keras.applications.ConvNeXtLarge, num_features=1536),
    _convnext(name="convnext_xlarge", build=keras.applications.ConvNeXtXLarge, num_features=2048),
)
