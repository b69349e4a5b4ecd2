"""One process of the distributed tests of ``exporter.KerasLayer`` (tests/test_distributed.py).

A strategy has to be chosen before TensorFlow starts (logical CPUs, ``TF_CONFIG``), so each
case runs here, in a fresh process:

    python tests/distributed_worker.py mirrored EXPORT OUT
    python tests/distributed_worker.py multi_worker EXPORT OUT   (TF_CONFIG set per worker)

Each writes ``OUT/result.json`` (facts for the test to assert) and ``OUT/weights.npz``
(the trained trainable weights of the SavedModel).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SIZE, BATCH = 32, 8


def _data() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    images = rng.random((2 * BATCH, SIZE, SIZE, 3), dtype=np.float32)
    labels = np.arange(2 * BATCH) % 2
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)
    options = tf.data.Options()
    # Every worker reads the same two batches; the strategy splits each across replicas.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return data.with_options(options)


def _model(keras, exporter, handle: str):
    keras.utils.set_random_seed(0)
    layer = exporter.KerasLayer(handle, trainable=True)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layer, keras.layers.Dense(2)])
    model.compile(
        keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, layer


def _save_weights(layer, out: Path) -> None:
    arrays = {f"w{i}": v.numpy() for i, v in enumerate(layer._loaded.trainable_variables)}
    np.savez(out / "weights.npz", **arrays)


def mirrored(handle: str, out: Path) -> dict:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    import exporter

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    facts = {"replicas": strategy.num_replicas_in_sync}
    # Made outside the scope, used inside: the error names the cause.
    outside = exporter.KerasLayer(handle, trainable=True)
    with strategy.scope():
        try:
            strategy.run(outside, args=(tf.zeros([2, SIZE, SIZE, 3]),))
            facts["outside_error"] = None
        except RuntimeError as error:
            facts["outside_error"] = str(error)
        model, layer = _model(keras, exporter, handle)
    facts["mirrored"] = all(
        isinstance(v, tf.distribute.DistributedValues) for v in layer._loaded.variables
    )
    before = [v.numpy() for v in layer._loaded.trainable_variables]
    history = model.fit(_data(), epochs=3, verbose=0)
    after = layer._loaded.trainable_variables
    facts["moved"] = all(
        not np.array_equal(b, a.numpy()) for b, a in zip(before, after, strict=True)
    )
    facts["losses"] = history.history["loss"]
    _save_weights(layer, out)
    return facts


def multi_worker(handle: str, out: Path) -> dict:
    import keras

    import exporter

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    chief = json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
    with strategy.scope():
        model, layer = _model(keras, exporter, handle)
        model.optimizer.build(model.trainable_variables)
    # Keras 3.15's fit fails under this strategy before the first step (BUILD_NOTES.md):
    # a custom loop with strategy.run, as the TensorFlow multi-worker tutorial does.
    step = _train_step(strategy, model)
    data = strategy.experimental_distribute_dataset(_data())
    losses = []
    for _ in range(2):
        losses.append(float(sum(step(images, labels) for images, labels in data)))
    facts = {"replicas": strategy.num_replicas_in_sync, "losses": losses}
    _save_weights(layer, out)
    if chief:  # Only the chief writes the export.
        body = keras.Sequential([keras.Input((None, None, 3)), layer])
        module = exporter.FeatureVectorModule(body, preprocessing="identity")
        facts["export"] = str(exporter.save(module, out / "export"))
    return facts


def _train_step(strategy, model):
    import keras

    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(
                cross_entropy(labels, logits), global_batch_size=BATCH
            )
            # The SavedModel's regularization losses, added by the layer on this call.
            loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        variables = model.trainable_variables
        model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    @tf.function
    def step(images, labels):
        per_replica = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def main(case: str, handle: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = {"mirrored": mirrored, "multi_worker": multi_worker}[case](handle, out_dir)
    (out_dir / "result.json").write_text(json.dumps(facts), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
