"""The measurements run in child processes (``TASKS``), and the models they share.

``compare.py --worker=TASK --spec=FILE`` lands in ``run_worker``: one measurement, in a fresh
process. Imports stay inside each task, so that each imports only what it needs (the tf-keras
export never imports Keras 3 or exporter) and importing this module imports no TensorFlow.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from sizes import weight_bytes

SKIPPED_EXIT = 3  # A worker's exit status for "this comparison does not exist" (not a failure).


class Skipped(Exception):
    """The anchor does not exist here (such as a tf_keras.applications model)."""


def _tf_keras_application(tf_keras, constructor: str):
    """``tf_keras.applications.CONSTRUCTOR``; raises ``Skipped`` where it has none."""
    build = getattr(tf_keras.applications, constructor, None)
    if build is None:
        raise Skipped(f"tf_keras.applications has no {constructor}")
    return build


def _headless(build, input_shape):
    """The application ``build`` makes, headless and average-pooled, random weights."""
    return build(include_top=False, weights=None, pooling="avg", input_shape=tuple(input_shape))


def _model_size(model) -> dict:
    """A model's parameter count and raw weight bytes."""
    return {"params": int(model.count_params()), "weight_bytes": weight_bytes(model.weights)}


def _images(batch: int, size: int, seed: int = 0):
    """``batch`` random float32 images of ``size`` x ``size`` x 3 in [0, 1), seeded."""
    import numpy as np

    return np.random.default_rng(seed).random((batch, size, size, 3), dtype=np.float32)


def _task_prepare(spec: dict) -> dict:
    """Untimed: the Keras 3 model ours exports (its size), and its weights file if asked."""
    import keras

    import exporter

    keras.utils.set_random_seed(0)
    model = exporter.load_backbone(spec["backbone"], weights="none", pooling="avg")
    if spec.get("weights_file"):
        model.save_weights(spec["weights_file"])
    return _model_size(model)


def _task_export_keras3(spec: dict) -> dict:
    """Keras 3's own export of the keras.applications model (pooled, as ours is)."""
    import keras

    model = _headless(getattr(keras.applications, spec["constructor"]), spec["input_shape"])
    model.export(spec["out"], format="tf_saved_model", verbose=False)
    return _model_size(model)


def _task_export_tf_keras(spec: dict) -> dict:
    """tf-keras' SavedModel of the tf_keras.applications model (pooled, as ours is)."""
    import tf_keras

    build = _tf_keras_application(tf_keras, spec["constructor"])
    model = _headless(build, spec["input_shape"])
    model.save(spec["out"], save_format="tf")
    return _model_size(model)


def _task_load(spec: dict) -> dict:
    """``tf.saved_model.load`` time, then the first call's (batch 1), in this fresh process."""
    start = time.perf_counter()
    import numpy as np
    import tensorflow as tf

    import_s = time.perf_counter() - start
    images = tf.constant(_images(1, spec["size"]))
    start = time.perf_counter()
    obj = tf.saved_model.load(spec["path"])
    load_s = time.perf_counter() - start
    function = obj.serve if spec["call"] == "serve" else obj
    start = time.perf_counter()
    np.asarray(function(images))
    first_call_s = time.perf_counter() - start
    return {"import_s": import_s, "load_s": load_s, "first_call_s": first_call_s}


def _task_latency(spec: dict) -> dict:
    """Median latency of ``spec['calls']`` calls after warm-up, one batch size, one variant."""
    import numpy as np
    import tensorflow as tf

    images = tf.constant(_images(spec["batch"], spec["size"]))
    if spec["variant"] == "keras_function":
        import exporter
        from exporter.making.preprocessing import preprocess

        model = exporter.load_backbone(
            spec["backbone"], weights=spec["weights_file"], pooling="avg"
        )
        mode = exporter.get_backbone(spec["backbone"]).preprocessing
        function = tf.function(lambda x: model(preprocess(x, mode), training=False))
    else:
        obj = tf.saved_model.load(spec["path"])
        if spec["variant"] == "ours_serving_default":
            signature = obj.signatures["serving_default"]
            function = lambda x: signature(images=x)["feature_vector"]  # noqa: E731
        else:
            function = obj
    start = time.perf_counter()
    output = np.asarray(function(images))
    first_s = time.perf_counter() - start
    for _ in range(spec["warmup"] - 1):
        np.asarray(function(images))
    times = []
    for _ in range(spec["calls"]):
        start = time.perf_counter()
        np.asarray(function(images))
        times.append(time.perf_counter() - start)
    return {
        "first_s": first_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "output_row0": output[0, :64].astype(float).tolist(),
    }


def _compiled_tf_keras(tf_keras, body, size: int, classes: int):
    """tf-keras: ``body`` then a Dense head of ``classes`` logits, compiled (SGD)."""
    model = tf_keras.Sequential(
        [tf_keras.Input((size, size, 3)), body, tf_keras.layers.Dense(classes)]
    )
    model.compile(
        tf_keras.optimizers.SGD(1e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def hub_trainer(path: str, size: int, classes: int):
    """tf-keras: ``hub.KerasLayer(path, trainable=True)`` then a Dense head, compiled (SGD)."""
    import tensorflow_hub as hub
    import tf_keras

    return _compiled_tf_keras(tf_keras, hub.KerasLayer(path, trainable=True), size, classes)


def tf_keras_trainer(constructor: str, preprocessing: str, size: int, classes: int):
    """tf-keras: the tf_keras.applications backbone (pooled) with our preprocessing mode
    in front, then a Dense head, compiled as ``hub_trainer``'s."""
    import tf_keras

    from exporter.making.preprocessing import preprocess

    backbone = _headless(_tf_keras_application(tf_keras, constructor), (size, size, 3))
    # Ours preprocesses inside its graph; the native model does the same work.
    body = tf_keras.Sequential(
        [tf_keras.layers.Lambda(lambda x: preprocess(x, preprocessing)), backbone]
    )
    return _compiled_tf_keras(tf_keras, body, size, classes)


def time_steps(model, images, labels, steps: int) -> list[float]:
    """Seconds of each of ``steps`` ``train_on_batch`` calls (each returns a NumPy loss, so
    the step has finished when it returns)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - start)
    return times


def _task_finetune(spec: dict) -> dict:
    """Seconds per ``train_on_batch`` step: hub.KerasLayer on ours, or tf-keras natively."""
    import numpy as np
    import tensorflow as tf

    size, batch, classes = spec["size"], spec["batch"], 5
    if spec["variant"] == "hub_layer":
        model = hub_trainer(spec["path"], size, classes)
    else:
        model = tf_keras_trainer(spec["constructor"], spec["preprocessing"], size, classes)
    images = tf.constant(_images(batch, size))
    labels = tf.constant(np.random.default_rng(1).integers(0, classes, batch))
    [first_step_s] = time_steps(model, images, labels, 1)  # Tracing.
    times = time_steps(model, images, labels, spec["steps"])
    return {"first_step_s": first_step_s, "times_s": times, "median_s": statistics.median(times)}


# keras-hub backbones compare.py measures: name -> the ImageClassifier it builds (random
# weights). ViT-B/16 at 224 as keras-hub's vit_base_patch16_224 presets configure it
# (keras_hub/src/models/vit/vit_presets.py: 12 layers, 12 heads, 768 wide, MLP 3072).
KERAS_HUB = {
    "keras_hub_vit_b16": {
        "family": "ViT",
        "backbone": {"image_shape": [224, 224, 3], "patch_size": 16, "num_layers": 12,
                     "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072},
        "image_size": 224,
        "num_classes": 1000,
        "scale": 1 / 127.5,
        "offset": -1.0,
    },
}  # fmt: skip


def _keras_hub_task(config: dict):
    """``config``'s ImageClassifier with its preprocessor, random weights, seeded."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    family, size = config["family"], config["image_size"]
    backbone_config = dict(config["backbone"], image_shape=tuple(config["backbone"]["image_shape"]))
    backbone = getattr(keras_hub.models, f"{family}Backbone")(**backbone_config)
    converter = getattr(keras_hub.layers, f"{family}ImageConverter")(
        image_size=(size, size), scale=config["scale"], offset=config["offset"]
    )
    preprocessor = getattr(keras_hub.models, f"{family}ImageClassifierPreprocessor")(
        image_converter=converter
    )
    return getattr(keras_hub.models, f"{family}ImageClassifier")(
        backbone=backbone, preprocessor=preprocessor, num_classes=config["num_classes"]
    )


def _task_prepare_keras_hub(spec: dict) -> dict:
    """Untimed: the keras-hub classifier saved as a preset folder both exports start from."""
    task = _keras_hub_task(spec["config"])
    task.save_to_preset(spec["preset"])
    return _model_size(task)


def _task_export_keras3_keras_hub(spec: dict) -> dict:
    """Keras 3's own export of the same classifier, loaded from the same preset folder."""
    import keras_hub

    task = keras_hub.models.ImageClassifier.from_preset(spec["preset"])
    task.export(spec["out"], format="tf_saved_model", verbose=False)
    return _model_size(task)


def _jax_model(spec: dict):
    """The model a JAX user holds: a keras.applications backbone at free sizes, pooled, or
    a keras-hub ImageClassifier (``spec['config']``); random weights, seeded."""
    import keras

    keras.utils.set_random_seed(0)
    if "config" in spec:
        return _keras_hub_task(spec["config"])
    build = getattr(keras.applications, spec["constructor"])
    return build(include_top=False, weights=None, pooling="avg", input_shape=(None, None, 3),
                 **spec.get("options", {}))  # fmt: skip


def _stage_times() -> list:
    """Our stage lines as (stage, seconds), collected from the ``exporter`` logger."""
    import logging

    import exporter

    found = []

    class Collect(logging.Handler):
        def emit(self, record):
            name, sep, rest = record.getMessage().rpartition(" done in ")
            if sep and rest.endswith(" s"):
                found.append((name, float(rest[:-2])))

    exporter.enable_stage_lines()  # Into the child's log, as the export CLI shows them.
    logging.getLogger("exporter").addHandler(Collect())
    return found


def _task_export_jax(spec: dict) -> dict:
    """One KERAS_BACKEND=jax process: import, build the model, export it (ours or Keras')."""
    start = time.perf_counter()
    import keras

    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(f"Expected KERAS_BACKEND=jax; this process runs {backend}.")
    ours = spec["exporter"] == "ours"
    if ours:
        import exporter

        stages = _stage_times()
    imported = time.perf_counter()
    model = _jax_model(spec)
    built = time.perf_counter()
    if ours:
        options = {} if "config" in spec else {
            k: spec[k] for k in ("preprocessing", "native_size", "min_size")}  # fmt: skip
        exporter.export_feature_vector(model, spec["out"], **options)
    else:
        options = {}
        if "config" not in spec:
            # Keras 3.15's jax2tf export of a model at free sizes fails tracing its gradients
            # (polymorphic height and width); it exports at one size, the batch left free.
            size = spec["native_size"]
            options["input_signature"] = [
                keras.InputSpec(shape=(None, size, size, 3), dtype="float32")
            ]
        model.export(spec["out"], format="tf_saved_model", verbose=False, **options)
    exported = time.perf_counter()
    return {
        **_model_size(model),
        "import_s": imported - start,
        "build_s": built - imported,
        "export_call_s": exported - built,
        "stages": stages if ours else [],
    }


TASKS = {
    "prepare": _task_prepare,
    "prepare_keras_hub": _task_prepare_keras_hub,
    "export_keras3_keras_hub": _task_export_keras3_keras_hub,
    "export_keras3": _task_export_keras3,
    "export_tf_keras": _task_export_tf_keras,
    "export_jax": _task_export_jax,
    "load": _task_load,
    "latency": _task_latency,
    "finetune": _task_finetune,
}


def run_worker(task: str, spec_path: str) -> None:
    """Run one task with the JSON spec at ``spec_path``; write its result to spec['result'].

    Exits with an error for an unknown task, and with ``SKIPPED_EXIT`` when the task raises
    ``Skipped``.
    """
    if task not in TASKS:
        sys.exit(f"error: unknown worker task {task!r}; known: {', '.join(TASKS)}.")
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = TASKS[task](spec)
    except Skipped as why:
        print(f"skipped: {why}", file=sys.stderr)
        sys.exit(SKIPPED_EXIT)
    Path(spec["result"]).write_text(json.dumps(result))
