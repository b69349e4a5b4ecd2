"""Time of one training step through ``exporter.KerasLayer`` against native Keras 3.

Usage:
    python benchmarks/finetune_step.py [--size=224] [--batch=16] [--steps=10] [--rounds=3]
        [--hub]

The anchor is ``keras.applications.MobileNetV2`` (headless, average pooling) plus a Dense
head, trained natively in Keras 3. The candidate is the same backbone exported by us, loaded
with ``exporter.KerasLayer(trainable=True)``, plus the same head. ``--hub`` adds
tf-keras + ``hub.KerasLayer`` on the same export. All run in this process on the same data;
rounds alternate between them so that a busy machine slows each alike. Prints the median
seconds per step of each and its ratio to the anchor (the goal: <= 1.05x). Random weights;
nothing is downloaded.
"""

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import exporter  # noqa: E402

_SIZE = flags.DEFINE_integer("size", 224, "Image height and width.", lower_bound=32)
_BATCH = flags.DEFINE_integer("batch", 16, "Images per step.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per round.", lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per candidate.", lower_bound=1)
_HUB = flags.DEFINE_bool("hub", False, "Also time tf-keras + hub.KerasLayer.")
_CLASSES = 5


def _keras3_trainer(body, size: int):
    model = keras.Sequential([keras.Input((size, size, 3)), body, keras.layers.Dense(_CLASSES)])
    model.compile(
        keras.optimizers.SGD(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _time_steps(model, images, labels, steps: int) -> float:
    return statistics.fmean(harness.time_steps(model, images, labels, steps))


def main(argv):
    del argv
    size, batch = _SIZE.value, _BATCH.value
    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, 3), dtype=np.float32)  # [0, 1], as exports take
    labels = rng.integers(0, _CLASSES, batch)
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3), pooling="avg"
    )
    scratch = Path(tempfile.mkdtemp(prefix="finetune-step-"))
    print(f"Exporting MobileNetV2 to {scratch} ...", flush=True)
    module = exporter.FeatureVectorModule(backbone, preprocessing="tf")
    path = str(exporter.save(module, scratch / "mobilenet_v2"))
    # The native anchor takes [0, 1] too: the export rescales to [-1, 1] inside, so does this.
    native = keras.Sequential([keras.layers.Rescaling(2.0, offset=-1.0), backbone])
    trainers = {
        "keras3 native (anchor)": _keras3_trainer(native, size),
        "exporter.KerasLayer": _keras3_trainer(exporter.KerasLayer(path, trainable=True), size),
    }
    if _HUB.value:
        trainers["tf-keras + hub.KerasLayer"] = harness.hub_trainer(path, size, _CLASSES)
    for name, model in trainers.items():
        start = time.perf_counter()
        _time_steps(model, images, labels, 1)
        print(f"{name}: first step (tracing) {time.perf_counter() - start:.1f} s", flush=True)
    times = {name: [] for name in trainers}
    for round_index in range(_ROUNDS.value):
        for name, model in trainers.items():
            times[name].append(_time_steps(model, images, labels, _STEPS.value))
        print(f"round {round_index + 1}/{_ROUNDS.value} done", flush=True)
    anchor = statistics.median(times["keras3 native (anchor)"])
    print(f"\nMobileNetV2 {size}x{size}, batch {batch}, median of {_ROUNDS.value} rounds "
          f"x {_STEPS.value} steps")  # fmt: skip
    print(f"{'candidate':28} {'s/step':>8} {'ratio':>6}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28} {median:8.3f} {median / anchor:6.2f}x")


if __name__ == "__main__":
    app.run(main)
