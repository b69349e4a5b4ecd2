"""Latency and size of one export in every runtime it deploys to, in the same run.

Usage:
    python benchmarks/deploy.py [--backbones=mobilenet_v2,resnet50] [--batches=1,16]
        [--size=224] [--repeats=10]

Per backbone: exports a feature vector (random weights, batch norm calibrated so features
are of order 1 and the quantized conversions verify meaningfully) in float32 and bfloat16,
converts the float32 export with ``exporter.use.convert`` to LiteRT (float32, float16,
dynamic_int8, full-integer int8 with float32 and with uint8 I/O) and ONNX, and times each
at the given batch sizes. The anchor (1.0x) is the float32 SavedModel's ``__call__``; the
median of ``--repeats`` calls after one warm-up. int8 is calibrated on 100 images and every
form's agreement (mean and least cosine similarity to the SavedModel's ``__call__``) is
measured on 50 others: ``--images`` or, by default, those ``calibration_images.py`` makes
(crops of matplotlib's sample photograph and scenes of shapes). Needs
``pip install 'tfhub-exporter[convert]'``.
"""

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import calibration_images
import harness
import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import exporter
from exporter.making.build import with_compute_dtype
from exporter.use import convert, image_files, quantize

_BACKBONES = flags.DEFINE_list("backbones", ["mobilenet_v2", "resnet50"], "Backbones to measure.")
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "Batch sizes to time.")
_SIZE = flags.DEFINE_integer("size", 224, "Height and width of the timed images.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per measurement (median).")
_IMAGES = flags.DEFINE_string(
    "images", None, "Calibration images for int8 (DIR|GLOB); default: calibration_images.py's."
)


def _calibrated_weights(facts, size: int) -> list:
    """Random weights with batch norm set to one batch's statistics (features of order 1)."""
    keras.utils.set_random_seed(0)
    model = facts.build(include_top=False, weights=None, input_shape=(None, None, 3))
    family = getattr(keras.applications, facts.family)
    images = family.preprocess_input(np.random.default_rng(0).random((8, size, size, 3)) * 255)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(images.astype("float32"), training=True)
    return model.get_weights()


def _module(facts, weights: list, compute_dtype: str):
    def make(float32_twin=None):
        model = facts.build(include_top=False, weights=None, input_shape=(None, None, 3))
        model.set_weights(weights)
        return exporter.FeatureVectorModule(
            model, preprocessing=facts.preprocessing, min_size=facts.min_size,
            native_size=facts.native_size, name=facts.name, float32_twin=float32_twin,
        )  # fmt: skip

    return with_compute_dtype(make, compute_dtype)


def _median_ms(run, images: np.ndarray) -> float:
    run(images)  # Warm-up: tracing, allocation, delegate preparation.
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _runners(scratch: Path, facts, weights: list, calibration, validation) -> tuple[dict, dict]:
    """name -> (callable on float32 images, bytes on disk); and name -> why it was refused.

    A conversion that is refused (such as one past its parity bound in the target runtime:
    random weights can push float16 there) is not timed; the table gives the reason.
    """
    threads = os.cpu_count()
    runners, refused = {}, {}
    for dtype in ("float32", "bfloat16"):
        path = exporter.save(_module(facts, weights, dtype), scratch / dtype)
        loaded, nbytes = tf.saved_model.load(str(path)), harness.directory_bytes(path)
        label = "SavedModel __call__" + ("" if dtype == "float32" else f" ({dtype})")
        runners[label] = (lambda x, m=loaded: m(tf.constant(x)).numpy(), nbytes)
        if dtype == "float32":
            serve = loaded.signatures["serving_default"]
            runners["SavedModel serving_default"] = (
                lambda x, s=serve: s(images=tf.constant(x))["feature_vector"].numpy(),
                nbytes,
            )
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    modes = [(q, "float32") for q in convert.QUANTIZATIONS] + [("int8", "uint8")]
    for quantize_mode, io in modes:
        label = "LiteRT float32" if quantize_mode == "none" else f"LiteRT {quantize_mode}"
        label += "" if io == "float32" else f" ({io} I/O)"
        int8 = dict(calibration=calibration, validation=validation, io=io, min_cosine=-1.0)
        try:
            done = convert.convert(
                scratch / "float32", scratch / f"{quantize_mode}-{io}.tflite", to="litert",
                quantize=quantize_mode, **(int8 if quantize_mode == "int8" else {}),
            )  # fmt: skip
        except exporter.ExportError as error:  # Its message names the bound and figures.
            refused[label] = str(error)
            print(f"  refused: {error}  [{label}]", flush=True)
            continue
        if quantize_mode == "int8":  # Quantizes float pixels for integer input, dequantizes.
            run = quantize.Runner(done.path, "images", num_threads=threads)
        else:
            run = _litert(Interpreter(model_path=str(done.path), num_threads=threads))
        runners[label] = (run, done.size_bytes)
        lines = done.summary().splitlines()
        for line in lines[3:] if quantize_mode == "int8" else lines[-1:]:  # int8: its figures.
            print(f"  {line.strip()}  [{label}]", flush=True)
    done = convert.convert(scratch / "float32", scratch / "model.onnx", to="onnx")
    session = onnxruntime.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    runners["onnxruntime"] = (lambda x: session.run(None, {"images": x})[0], done.size_bytes)
    return runners, refused


def _litert(interpreter):
    runner = interpreter.get_signature_runner()
    return lambda images: runner(images=images)["feature_vector"]


def _cosines(runners: dict, images: np.ndarray) -> dict:
    """name -> (mean, least) cosine similarity to the float32 SavedModel's ``__call__``."""
    expected = np.asarray(runners["SavedModel __call__"][0](images), np.float64)
    found = {}
    for label, (run, _) in runners.items():
        actual = np.concatenate(
            [np.asarray(run(images[i : i + 10])) for i in range(0, len(images), 10)]
        )
        figures = quantize.figures(actual.astype(np.float64), expected, classifier=False)
        found[label] = (figures.mean_cosine, figures.min_cosine)
    return found


def main(argv):
    del argv
    batches = [int(b) for b in _BATCHES.value]
    size = _SIZE.value
    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, images {size}x{size}, median of "
        f"{_REPEATS.value} calls; anchor: the float32 SavedModel's __call__"
    )
    for name in _BACKBONES.value:
        facts = exporter.get_backbone(name)
        scratch = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
        try:
            print(f"\n{name}: exporting and converting ...", flush=True)
            if _IMAGES.value:
                calibration, validation = _IMAGES.value, None
                held_out = quantize.find(_IMAGES.value, "images")[-50:]
            else:
                calibration, validation = calibration_images.make_images(scratch / "images")
                held_out = quantize.find(validation, "validation")
            weights = _calibrated_weights(facts, 64)
            runners, refused = _runners(scratch, facts, weights, calibration, validation)
            decoded = [image_files.decode(image_files.read(p), size, 10**8) for p in held_out]
            cosines = _cosines(runners, np.stack(decoded))
            rng = np.random.default_rng(0)
            images = {b: rng.random((b, size, size, 3), dtype=np.float32) for b in batches}
            rows = {label: [_median_ms(run, images[b]) for b in batches]
                    for label, (run, _) in runners.items()}  # fmt: skip
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        anchor = rows["SavedModel __call__"]
        anchor_bytes = runners["SavedModel __call__"][1]
        header = " | ".join(f"batch {b} ms (x)" for b in batches)
        print(f"\n| {name} | MB (x) | {header} | cosine mean (least), held-out |")
        print("|---|---|" + "---|" * len(batches) + "---|")
        for label, times in rows.items():
            megabytes = runners[label][1] / 1e6
            cells = " | ".join(
                f"{t:.1f} ({t / a:.2f}x)" for t, a in zip(times, anchor, strict=True)
            )
            ratio = runners[label][1] / anchor_bytes
            mean, least = cosines[label]
            agreement = f"{mean:.4f} ({least:.4f})"
            print(f"| {label} | {megabytes:.1f} ({ratio:.2f}x) | {cells} | {agreement} |")
        for label, why in refused.items():
            print(f"| {label} | refused: {why} |" + " |" * (len(batches) + 1))


if __name__ == "__main__":
    app.run(main)
