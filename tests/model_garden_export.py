"""Export a tiny image classifier with Model Garden's own TF Hub exporter (a subprocess).

Usage: python tests/model_garden_export.py OUT_DIR  ->  OUT_DIR/{classifier,feature_vector}

Model Garden (tf-models-official) exports from a checkpoint, so a ResNet-10 at a quarter of
its width, 10 classes, 64x64 pixels and random weights is saved as one first. Runs in its
own process: importing ``official.vision`` registers every vision task and config.
"""

import os
import sys
import tempfile

import tensorflow as tf
from official.core import exp_factory
from official.vision.serving import export_tfhub_lib

SIZE = [64, 64]


def main(out: str) -> None:
    params = exp_factory.get_exp_config("resnet_imagenet")
    model = {"model_id": 10, "depth_multiplier": 0.25}
    params.override(
        {"task": {"model": {
            "num_classes": 10, "input_size": [*SIZE, 3],
            "backbone": {"type": "resnet", "resnet": model},
        }}},
        is_strict=True,
    )  # fmt: skip
    params.validate()
    params.lock()
    checkpoint = tf.train.Checkpoint(model=export_tfhub_lib.build_model(None, SIZE, params))
    saved = checkpoint.save(os.path.join(tempfile.mkdtemp(), "checkpoint"))
    for name, skip_logits in (("classifier", False), ("feature_vector", True)):
        export_tfhub_lib.export_model_to_tfhub(
            batch_size=None, input_image_size=SIZE, params=params, checkpoint_path=saved,
            export_path=os.path.join(out, name), num_channels=3, skip_logits_layer=skip_logits,
        )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
