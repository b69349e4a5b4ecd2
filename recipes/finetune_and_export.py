"""Fine-tune a registered backbone on a folder of images, then export it two ways.

Copy this into your training code. The data folder holds one subfolder per class
(``DATA/cat/*.jpg``, ``DATA/dog/*.jpg``, ...). Training feeds the backbone the way
keras.applications documents (0..255 pixels through the family's ``preprocess_input``);
the exports take float32 RGB in [0, 1] and do the same preprocessing inside.

Usage:
    python recipes/finetune_and_export.py --data_dir=DATA --out_dir=EXPORTS \\
        [--backbone=mobilenet_v2] [--weights=imagenet|none|PATH] [--image_size=224] \\
        [--epochs=1] [--batch_size=16] [--learning_rate=1e-4] [--overwrite]

Writes ``EXPORTS/feature_vector`` and ``EXPORTS/classifier`` (with the class names as
``assets/labels.txt``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# isort: split
import exporter  # First: TensorFlow then loads without its C++ start-up lines.

# isort: split
import keras
from absl import app, flags, logging

from exporter.console import as_flags  # A library message's weights="none" as --weights=none.

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with one subfolder of images per class.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the two SavedModels.")
_BACKBONE = flags.DEFINE_string("backbone", "mobilenet_v2", "Registered backbone name.")
_WEIGHTS = flags.DEFINE_string("weights", "imagenet", "Starting weights: imagenet, none or PATH.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Training height and width.", lower_bound=1)
_EPOCHS = flags.DEFINE_integer("epochs", 1, "Passes over the data.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Images per step.", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.", lower_bound=0)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing exports.")


def finetune(
    data_dir: str | Path,
    *,
    backbone: str,
    weights: str,
    image_size: int,
    epochs: int,
    batch_size: int,
    learning_rate: float = 1e-4,
):
    """Fine-tune ``backbone`` plus a new classifier on ``data_dir``.

    Returns:
        ``(model, body, head, class_names)``: the whole Keras model (0..255 pixels in), its
        backbone, its head (pooled features to logits) and the class names.
    """
    facts = exporter.get_backbone(backbone)
    data = keras.utils.image_dataset_from_directory(
        data_dir, image_size=(image_size, image_size), batch_size=batch_size, seed=0
    )
    class_names = list(data.class_names)
    body = exporter.load_backbone(facts, weights)
    # HeadDropout rather than keras.layers.Dropout: the export then takes `dropout_rate`.
    head = keras.Sequential(
        [exporter.HeadDropout(0.2), keras.layers.Dense(len(class_names))], name="classifier"
    )
    pixels = keras.Input((image_size, image_size, 3))
    preprocess_input = getattr(keras.applications, facts.family).preprocess_input
    features = keras.layers.GlobalAveragePooling2D()(body(preprocess_input(pixels)))
    model = keras.Model(pixels, head(features))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # The dataset shuffles itself (fit's own shuffle applies to arrays only).
    model.fit(data, epochs=epochs, verbose=2, shuffle=False)
    return model, body, head, class_names


def export(body, head, class_names, out_dir: str | Path, *, backbone: str, overwrite=False):
    """Export the fine-tuned backbone as a feature vector and as a classifier."""
    facts = exporter.get_backbone(backbone)
    common = dict(preprocessing=facts.preprocessing, min_size=facts.min_size)
    feature_vector = exporter.FeatureVectorModule(body, **common)
    classifier = exporter.ClassifierModule(body, head=head, labels=class_names, **common)
    out_dir = Path(out_dir)
    return (
        exporter.save(feature_vector, out_dir / "feature_vector", overwrite=overwrite),
        exporter.save(classifier, out_dir / "classifier", overwrite=overwrite),
    )


def main(argv):
    del argv
    if not _DATA_DIR.value or not _OUT_DIR.value:
        raise app.UsageError("--data_dir and --out_dir are required.")
    # TensorFlow's own INFO lines off (absl's default is INFO); exporter's stage lines on.
    logging.set_verbosity(logging.WARNING)
    exporter.enable_stage_lines()
    try:
        paths = _finetune_and_export()
    except exporter.Error as error:  # Weights out of reach, a bad flag, an existing output...
        sys.exit(f"error: {as_flags(str(error), ('weights', 'overwrite'))}")
    for path in paths:
        print(f"exported {path}")


def _finetune_and_export():
    _, body, head, class_names = finetune(
        _DATA_DIR.value,
        backbone=_BACKBONE.value,
        weights=_WEIGHTS.value,
        image_size=_IMAGE_SIZE.value,
        epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value,
        learning_rate=_LEARNING_RATE.value,
    )
    return export(
        body, head, class_names, _OUT_DIR.value, backbone=_BACKBONE.value,
        overwrite=_OVERWRITE.value,
    )  # fmt: skip


if __name__ == "__main__":
    with exporter.quiet_tensorflow_logs():  # TensorFlow's C++ log lines, from its first op on.
        app.run(main)
