"""Probe the facts of keras.applications backbones on the real models (random weights).

Usage:
    python benchmarks/probe_backbones.py [--only=ResNet50,NASNetMobile]

For each constructor, built without its classifier on a free-size input, prints:
- ``num_features``: the channel width of the last feature map;
- ``min_graph``: the smallest height and width that pass graph-mode shape inference
  (binary search; eager execution can silently compute on too-small maps, so it is not used);
- ``free_size``: whether the free-size graph runs at the native size and at an odd size.
The registry's ``min_size`` is the larger of ``min_graph`` and keras.applications' own
documented minimum; a backbone whose free-size graph fails is registered as fixed-size.
"""

import time

import keras
import tensorflow as tf
from absl import app, flags

_ONLY = flags.DEFINE_list("only", None, "Constructor names to probe (default: all).")

# keras.applications constructor -> its native size.
NATIVE = {
    "ConvNeXtTiny": 224, "ConvNeXtSmall": 224, "ConvNeXtBase": 224, "ConvNeXtLarge": 224,
    "ConvNeXtXLarge": 224, "DenseNet121": 224, "DenseNet169": 224, "DenseNet201": 224,
    "EfficientNetB0": 224, "EfficientNetB1": 240, "EfficientNetB2": 260, "EfficientNetB3": 300,
    "EfficientNetB4": 380, "EfficientNetB5": 456, "EfficientNetB6": 528, "EfficientNetB7": 600,
    "EfficientNetV2B0": 224, "EfficientNetV2B1": 240, "EfficientNetV2B2": 260,
    "EfficientNetV2B3": 300, "EfficientNetV2S": 384, "EfficientNetV2M": 480,
    "EfficientNetV2L": 480, "InceptionV3": 299, "InceptionResNetV2": 299, "MobileNet": 224,
    "MobileNetV2": 224, "MobileNetV3Small": 224, "MobileNetV3Large": 224, "NASNetMobile": 224,
    "NASNetLarge": 331, "ResNet50": 224, "ResNet101": 224, "ResNet152": 224, "ResNet50V2": 224,
    "ResNet101V2": 224, "ResNet152V2": 224, "VGG16": 224, "VGG19": 224, "Xception": 299,
}  # fmt: skip


def _traces(model, size: int) -> bool:
    function = tf.function(lambda x: model(x, training=False))
    try:
        function.get_concrete_function(tf.TensorSpec([1, size, size, 3]))
    except (ValueError, tf.errors.InvalidArgumentError):
        return False
    return True


def _min_graph(model, native: int) -> int:
    low, high = 1, native  # high is known to work.
    while low < high:
        middle = (low + high) // 2
        if _traces(model, middle):
            high = middle
        else:
            low = middle + 1
    return low


def _free_size(model, native: int) -> bool:
    # Traced once with free height and width, as exports are, then run at two sizes.
    function = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec([1, None, None, 3])]
    )
    try:
        for size in (native, native + 17):
            function(tf.zeros([1, size, size, 3]))
    except (ValueError, tf.errors.InvalidArgumentError):
        return False
    return True


def main(argv):
    del argv
    print("constructor         num_features  min_graph  free_size  seconds")
    for name, native in NATIVE.items():
        if _ONLY.value and name not in _ONLY.value:
            continue
        start = time.perf_counter()
        build = getattr(keras.applications, name)
        model = build(include_top=False, weights=None, input_shape=(None, None, 3))
        try:
            spec = model.compute_output_spec(keras.KerasTensor((1, native, native, 3)))
        except ValueError:
            # Built for no size in particular, some cells never learn how to line up (NASNet
            # compares static shapes when it is built): only a fixed size works.
            model = build(include_top=False, weights=None, input_shape=(native, native, 3))
            spec = model.compute_output_spec(keras.KerasTensor((1, native, native, 3)))
            width, minimum, free = spec.shape[-1], native, False
        else:
            width, minimum, free = spec.shape[-1], _min_graph(model, native), None
            free = _free_size(model, native)
        seconds = time.perf_counter() - start
        print(f"{name:20} {width:12} {minimum:10} {free!s:>10} {seconds:8.1f}", flush=True)
        keras.backend.clear_session()


if __name__ == "__main__":
    app.run(main)
