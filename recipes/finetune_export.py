"""Fine-tune a reusable SavedModel in Keras 3 on a folder of images, then re-export it.

The Keras 3 version of TF Hub's "Retraining an image classifier" tutorial, on an export
(ours, from ``python -m exporter.feature_vector``, or anyone's reusable image SavedModel).
The data folder holds one subfolder per class (``DATA/cat/*.jpg``, ``DATA/dog/*.jpg``, ...).
The model is ``exporter.KerasLayer -> Dropout -> Dense`` (with an L2 kernel regularizer);
the result is a classifier export with the folder's class names as its labels.

Usage:
    python recipes/finetune_export.py --export=DIR --data_dir=DATA --out_dir=OUT \\
        [--fine_tune] [--epochs=2] [--batch_size=16] [--learning_rate=1e-3] \\
        [--strategy=default|mirrored|multi_worker] [--image_size=N] [--overwrite]

Writes ``OUT/checkpoints/epoch-N.keras`` after each epoch (a restarted run resumes from the
last one) and ``OUT/classifier``. With ``--strategy=multi_worker`` every worker runs this
with its own ``TF_CONFIG``; only the chief writes checkpoints and the export.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

# isort: split
import exporter  # First: TensorFlow then loads without its C++ start-up lines.

# isort: split
import keras
import tensorflow as tf
from absl import app, flags, logging

from exporter.making.save import check_destination

STRATEGIES = ("default", "mirrored", "multi_worker")
_EXPORT = flags.DEFINE_string("export", None, "The reusable SavedModel to fine-tune.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with one subfolder of images per class.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write checkpoints and the classifier.")
_FINE_TUNE = flags.DEFINE_bool(
    "fine_tune", False, "Train the export's weights too, not only the head."
)
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Passes over the data, in all.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Images per step (global).", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0)
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", STRATEGIES, "tf.distribute strategy to train under."
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    None,
    "Training height and width; default: the export's native size, else 224.",
    lower_bound=1,
)
_DROPOUT_RATE = flags.DEFINE_float("dropout_rate", 0.2, "Dropout before the new Dense layer.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing classifier export.")
_L2 = 1e-4  # The new Dense layer's kernel regularizer.


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy to train under; ``multi_worker`` reads ``TF_CONFIG``."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; known: {', '.join(STRATEGIES)}.")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("Expected TF_CONFIG in the environment for --strategy=multi_worker.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes files: the only one, or worker 0 (or the chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )  # fmt: skip


def native_size(export: str | os.PathLike) -> int:
    """The export's native size from its metadata, else 224."""
    try:
        facts = json.loads(Path(export, "assets.extra", "metadata.json").read_text())
        return int(facts["input"]["native_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 224


def load_images(data_dir, image_size: int, batch_size: int):
    """``(dataset, class_names)``: float32 RGB in [0, 1], what the export takes."""
    data = keras.utils.image_dataset_from_directory(
        data_dir, image_size=(image_size, image_size), batch_size=batch_size, seed=0
    )
    names = list(data.class_names)
    return data.map(lambda images, labels: (images / 255.0, labels)), names


def build_model(export, num_classes: int, image_size: int, fine_tune: bool, dropout_rate: float,
                learning_rate: float) -> keras.Model:  # fmt: skip
    """``KerasLayer -> Dropout -> Dense``, compiled. Call it inside the strategy's scope."""
    model = keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            exporter.KerasLayer(export, trainable=fine_tune),
            # HeadDropout is a Dropout whose rate the export's dropout_rate hparam overrides.
            exporter.HeadDropout(dropout_rate),
            keras.layers.Dense(num_classes, kernel_regularizer=keras.regularizers.L2(_L2)),
        ]
    )
    compile_model(model, learning_rate)
    return model


def compile_model(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def last_checkpoint(directory: Path) -> tuple[Path | None, int]:
    """The newest ``epoch-N.keras`` in ``directory`` and its N (0 if none)."""
    found = []
    for path in directory.glob("epoch-*.keras"):
        match = re.fullmatch(r"epoch-(\d+)\.keras", path.name)
        if match:
            found.append((int(match.group(1)), path))
    if not found:
        return None, 0
    epoch, path = max(found)
    return path, epoch


def train_custom_loop(strategy, model, data, *, epochs, initial_epoch, batch_size, save) -> None:
    """Train with ``strategy.run``: Keras 3.15's ``fit`` fails under MultiWorkerMirroredStrategy
    before its first step (BUILD_NOTES.md)."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(labels, logits), global_batch_size=batch_size)
            if model.losses:  # The export's regularization losses and the Dense layer's L2.
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        variables = model.trainable_variables
        model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    @tf.function
    def step(images, labels):
        losses = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    batches = strategy.experimental_distribute_dataset(data)
    for epoch in range(initial_epoch, epochs):
        total, count = 0.0, 0
        for images, labels in batches:
            total += float(step(images, labels))
            count += 1
        print(f"Epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f}", flush=True)
        save(epoch + 1)


def finetune_export(
    export: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fine_tune: bool = False,
    epochs: int = 2,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    strategy: str = "default",
    image_size: int | None = None,
    dropout_rate: float = 0.2,
    overwrite: bool = False,
) -> Path | None:
    """Fine-tune ``export`` on ``data_dir`` and write ``out_dir/classifier``.

    Returns:
        The classifier export's path, or None on a worker that is not the chief.
    """
    out_dir = Path(out_dir)
    distribution = make_strategy(strategy)
    chief = is_chief(distribution)
    if chief:
        check_destination(out_dir / "classifier", overwrite)
    image_size = image_size or native_size(export)
    data, class_names = load_images(data_dir, image_size, batch_size)
    if strategy == "multi_worker":
        options = tf.data.Options()
        # Every worker reads every file; each global batch is split across the replicas.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        data = data.with_options(options)
    checkpoints = out_dir / "checkpoints"
    checkpoint, initial_epoch = last_checkpoint(checkpoints)
    # The layer loads the SavedModel's variables, so it is made inside the scope.
    with distribution.scope():
        if checkpoint is not None:
            print(f"Resuming from {checkpoint} (epoch {initial_epoch}).", flush=True)
            # Named here: `import exporter` loads its classes only when first used.
            custom = {"HeadDropout": exporter.HeadDropout, "KerasLayer": exporter.KerasLayer}
            model = keras.models.load_model(checkpoint, custom_objects=custom)
        else:
            model = build_model(export, len(class_names), image_size, fine_tune, dropout_rate,
                                learning_rate)  # fmt: skip

    def save(epoch: int) -> None:
        if chief:
            checkpoints.mkdir(parents=True, exist_ok=True)
            model.save(checkpoints / f"epoch-{epoch}.keras")

    if initial_epoch < epochs:
        if strategy == "multi_worker":
            train_custom_loop(
                distribution, model, data, epochs=epochs, initial_epoch=initial_epoch,
                batch_size=batch_size, save=save,
            )  # fmt: skip
        else:
            callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: save(e + 1))
            model.fit(data, epochs=epochs, initial_epoch=initial_epoch, callbacks=[callback])
    if not chief:
        return None
    return reexport(model, class_names, out_dir / "classifier", overwrite=overwrite)


def reexport(model: keras.Model, class_names: list[str], out: Path, *, overwrite: bool) -> Path:
    """Save ``model`` (KerasLayer, Dropout, Dense) as a classifier with ``class_names``."""
    layer, dropout, dense = model.layers
    body = keras.Sequential([keras.Input((None, None, 3)), layer])
    head = keras.Sequential([dropout, dense])
    module = exporter.ClassifierModule(
        body, preprocessing="identity", head=head, labels=class_names
    )
    return exporter.save(module, out, overwrite=overwrite)


def main(argv):
    del argv
    # TensorFlow's own INFO lines off (absl's default is INFO); exporter's stage lines on.
    logging.set_verbosity(logging.WARNING)
    exporter.enable_stage_lines()
    try:
        path = finetune_export(
            _EXPORT.value, _DATA_DIR.value, _OUT_DIR.value, fine_tune=_FINE_TUNE.value,
            epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value,
            learning_rate=_LEARNING_RATE.value, strategy=_STRATEGY.value,
            image_size=_IMAGE_SIZE.value, dropout_rate=_DROPOUT_RATE.value,
            overwrite=_OVERWRITE.value,
        )  # fmt: skip
    except (exporter.Error, FileNotFoundError) as error:  # A missing export, a bad flag...
        sys.exit(f"error: {error}")
    if path is not None:
        print(f"Wrote the classifier to {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["export", "data_dir", "out_dir"])
    with exporter.quiet_tensorflow_logs():  # TensorFlow's C++ log lines, from its first op on.
        app.run(main)
