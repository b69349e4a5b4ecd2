"""NASNet (Zoph et al., 2018), as keras.applications builds it.

Fixed-size: its cells compare static shapes while the model is built, so a model built for
a free input size cannot line up its reduction cells (probed; benchmarks/probe_backbones.py).
"""

import keras

from exporter.making.registry import Backbone

BACKBONES = (
    Backbone(
        name="nasnet_mobile", build=keras.applications.NASNetMobile, family="nasnet",
        preprocessing="tf", native_size=224, min_size=224, num_features=1056, fixed_size=True,
    ),
    Backbone(
        name="nasnet_large", build=keras.applications.NASNetLarge, family="nasnet",
        preprocessing="tf", native_size=331, min_size=331, num_features=4032, fixed_size=True,
    ),
)  # fmt: skip
