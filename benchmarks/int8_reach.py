"""Which backbones convert to full-integer LiteRT, and how close they stay: one run.

Usage:
    python benchmarks/int8_reach.py [--backbones=mobilenet_v2,efficientnet_b0,...]
        [--images=DIR|GLOB] [--size=224] [--calibration_steps=100] [--out=FILE.json]

Per backbone: a feature vector export with random weights whose batch norm is calibrated on
the calibration images (features of order 1; docs/contract.md, traps), converted with
``exporter.use.convert(..., quantize="int8")`` with float32 and with uint8 I/O, verified on
held-out images in ``ai_edge_litert``. Prints the figures (cosine to the SavedModel's
``__call__``, error relative to the output's scale), the ops that stayed float, and whether
``require_full_integer`` would pass. Figures are reported, never bounded (``min_cosine=-1``):
random weights are no model anyone deploys.

``keras_hub_resnet50`` is a keras-hub ResNet task preset in ResNet-50's shape (bottleneck
blocks 3-4-6-3), saved with ``save_to_preset`` and exported from that folder;
``keras_hub_vit_tiny`` a ViT task preset of ViT-Ti/16's width (192, 3 heads) with 2 of its
12 layers, enough to show which of its ops (softmax, layer norm, GELU) stay float.

Images: ``--images`` (your own photos), else 150 images made here: random crops, flips and
colour jitter of matplotlib's sample photograph, and scenes of random shapes on gradients.
The first 100 calibrate, the other 50 verify.
"""

import json
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags
from calibration_images import make_images

import exporter
from exporter.making import preprocessing
from exporter.use import convert, quantize

_BACKBONES = flags.DEFINE_list(
    "backbones",
    ["mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small", "mobilenet_v3_large",
     "keras_hub_resnet50"],
    "Registered backbones, keras_hub_resnet50 or keras_hub_vit_tiny.",
)  # fmt: skip
_IMAGES = flags.DEFINE_string("images", None, "Photos to calibrate and verify on (DIR|GLOB).")
_SIZE = flags.DEFINE_integer("size", 224, "Height and width the images are resized to.")
_STEPS = flags.DEFINE_integer("calibration_steps", 100, "Calibration images.")
_OUT = flags.DEFINE_string("out", None, "Write the figures to this JSON file too.")


def _batch(pattern, size: int, count: int = 16) -> np.ndarray:
    from exporter.use import image_files

    paths = quantize.find(pattern, "batch norm")[:count]
    return np.stack([image_files.decode(image_files.read(p), size, 10**8) for p in paths])


def calibrate_batch_norm(model, images) -> None:
    """Moving statistics of one ``training=True`` pass at momentum 0 (tests' conftest)."""
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer, layer.momentum) for layer in norms]
    rates = [(layer, layer.rate) for layer in drops]
    for layer in norms:
        layer.momentum = 0.0
    for layer in drops:
        layer.rate = 0.0
    model(tf.constant(images), training=True)
    for layer, momentum in saved:
        layer.momentum = momentum
    for layer, rate in rates:
        layer.rate = rate


def export_registered(name: str, out: Path, images: np.ndarray) -> Path:
    facts = exporter.get_backbone(name)
    keras.utils.set_random_seed(0)
    model = facts.build(include_top=False, weights=None, input_shape=(None, None, 3))
    calibrate_batch_norm(model, preprocessing.preprocess(tf.constant(images), facts.preprocessing))
    module = exporter.FeatureVectorModule(
        model, preprocessing=facts.preprocessing, min_size=facts.min_size,
        native_size=facts.native_size, name=facts.name,
    )  # fmt: skip
    return exporter.save(module, out)


def export_keras_hub_resnet50(out: Path, images: np.ndarray) -> Path:
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        image_shape=(None, None, 3),
    )  # fmt: skip
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    scale, offset = (1 / (255 * std)).tolist(), (-mean / std).tolist()
    calibrate_batch_norm(backbone, ((images - mean) / std).astype(np.float32))
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(_SIZE.value, _SIZE.value), scale=scale, offset=offset
    )
    task = keras_hub.models.ResNetImageClassifier(
        backbone=backbone,
        preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter),
        num_classes=10,
    )
    task.save_to_preset(str(out.parent / "resnet_preset"))
    return exporter.export_feature_vector(str(out.parent / "resnet_preset"), out)


def export_keras_hub_vit_tiny(out: Path, images: np.ndarray) -> Path:
    import keras_hub

    keras.utils.set_random_seed(0)
    size = _SIZE.value
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3), patch_size=16, num_layers=2, num_heads=3, hidden_dim=192,
        mlp_dim=768,
    )  # fmt: skip
    converter = keras_hub.layers.ViTImageConverter(
        image_size=(size, size), scale=2 / 255, offset=-1.0
    )
    task = keras_hub.models.ViTImageClassifier(
        backbone=backbone,
        preprocessor=keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter),
        num_classes=10,
        pooling="token",
    )
    task.save_to_preset(str(out.parent / "vit_preset"))
    return exporter.export_feature_vector(str(out.parent / "vit_preset"), out)


def measure(name: str, scratch: Path, calibration: str, validation: str) -> dict:
    images = _batch(calibration, _SIZE.value)
    start = time.perf_counter()
    if name == "keras_hub_resnet50":
        export = export_keras_hub_resnet50(scratch / name, images)
    elif name == "keras_hub_vit_tiny":
        export = export_keras_hub_vit_tiny(scratch / name, images)
    else:
        export = export_registered(name, scratch / name, images)
    row = {"backbone": name, "export_s": round(time.perf_counter() - start, 1)}
    for io in ("float32", "uint8"):
        start = time.perf_counter()
        try:
            done = convert.convert(
                export, scratch / f"{name}-{io}.tflite", to="litert", quantize="int8",
                calibration=calibration, validation=validation, io=io, min_cosine=-1.0,
                calibration_steps=_STEPS.value, size=_SIZE.value,
            )  # fmt: skip
        except exporter.ExportError as error:
            row[io] = {"refused": str(error)}
            print(f"  {name} io={io}: refused: {error}", flush=True)
            continue
        row[io] = {
            "seconds": round(time.perf_counter() - start, 1),
            "megabytes": round(done.size_bytes / 1e6, 2),
            "figures": done.int8["figures"],
            "float_ops": done.int8["ops"]["float"],
            "full_integer": not done.int8["ops"]["float"],
        }
        print(f"  {name} io={io}: " + "; ".join(done.summary().splitlines()[1:]), flush=True)
    return row


def main(argv):
    del argv
    scratch = Path(tempfile.mkdtemp(prefix="int8-reach-"))
    rows = []
    try:
        if _IMAGES.value:
            calibration, validation = _IMAGES.value, None
        else:
            calibration, validation = (str(p) for p in make_images(scratch / "images"))
        for name in _BACKBONES.value:
            print(f"{name} ...", flush=True)
            rows.append(measure(name, scratch, calibration, validation))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nTensorFlow {tf.__version__}, images {_SIZE.value}x{_SIZE.value}, random weights "
          "(batch norm calibrated), feature vectors; figures on the held-out images\n")  # fmt: skip
    print("| backbone | int8 MB | cosine mean (least) | max error / scale | ops left float | "
          "uint8 I/O cosine mean |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in rows:
        done, uint8 = row["float32"], row["uint8"]
        if "refused" in done:
            print(f"| {row['backbone']} | refused: {done['refused']} | | | | |")
            continue
        f = done["figures"]
        left = ", ".join(f"{k} x{v}" for k, v in done["float_ops"].items()) or "none"
        u = f"{uint8['figures']['mean_cosine']:.4f}" if "figures" in uint8 else "refused"
        print(f"| {row['backbone']} | {done['megabytes']:.1f} | {f['mean_cosine']:.4f} "
              f"({f['min_cosine']:.4f}) | {f['max_relative']:.3f} | {left} | {u} |")  # fmt: skip
    if _OUT.value:
        Path(_OUT.value).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
