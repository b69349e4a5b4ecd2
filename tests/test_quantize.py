"""Full-integer (int8) LiteRT conversion on a small CNN that this module trains itself.

The task: which colour (red, green, blue, yellow) a disc or square on a grey, noisy
background has. The CNN reaches about 95% on fresh images in a few seconds, so top-1
agreement between the int8 file and the SavedModel measures something. Everything is made
once per module: the training, one export, the PNG files, one conversion per I/O type.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli
from PIL import Image, ImageDraw

import exporter
from exporter import ExportError
from exporter.use import convert, quantize

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 230),
    "yellow": (235, 220, 30),
}
SIZE = 32


def _render(rng, colour: str) -> np.ndarray:
    grey = rng.integers(0, 256)
    noise = rng.normal(0, 25, (SIZE, SIZE, 3))
    image = Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8))
    radius = rng.integers(7, 13)
    x, y = rng.integers(radius, SIZE - radius, 2)
    box = [x - radius, y - radius, x + radius, y + radius]
    draw = ImageDraw.Draw(image)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=COLOURS[colour])
    return np.asarray(image)


def _images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(COLOURS), count)
    return np.stack([_render(rng, list(COLOURS)[i]) for i in labels]), labels


def _write_pngs(folder, pixels) -> None:
    folder.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The trained CNN's classifier export, and folders of PNGs: train-like, held-out, black."""
    root = tmp_path_factory.mktemp("int8")
    pixels, labels = _images(800, seed=0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    backbone = keras.Model(inputs, keras.layers.BatchNormalization()(x))
    head = keras.layers.Dense(len(COLOURS))
    model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(), head])
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(pixels / 255.0, labels, epochs=10, batch_size=32, verbose=0)
    held_pixels, held_labels = _images(60, seed=3)
    _, accuracy = model.evaluate(held_pixels / 255.0, held_labels, verbose=0)
    assert accuracy >= 0.85, "the CNN did not learn the task: agreement would mean little"
    module = exporter.ClassifierModule(
        backbone, preprocessing="identity", head=head, labels=list(COLOURS), native_size=SIZE,
        min_size=8,
    )  # fmt: skip
    export = exporter.save(module, root / "export")
    _write_pngs(root / "calibration", _images(120, seed=2)[0])
    _write_pngs(root / "held_out", held_pixels)
    _write_pngs(root / "black", np.zeros((10, SIZE, SIZE, 3), np.uint8))
    return root, export


@pytest.fixture(scope="module")
def loaded(task):
    return tf.saved_model.load(str(task[1]))


@pytest.fixture(scope="module")
def cli_int8(task):
    """``--quantize=int8`` from the CLI, verified on the held-out PNGs."""
    root, export = task
    out = root / "out" / "colours.tflite"
    done = run_cli(
        "convert", str(export), "--to=litert", f"--out={out}", "--quantize=int8",
        f"--calibration={root / 'calibration'}", f"--validation={root / 'held_out'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


@pytest.fixture(scope="module")
def uint8_io(task):
    """``io="uint8"``, ``require_full_integer``; validation: the default held-out share."""
    root, export = task
    out = root / "out" / "colours-uint8.tflite"
    result = convert.convert(
        export, out, to="litert", quantize="int8", calibration=root / "calibration",
        io="uint8", require_full_integer=True,
    )  # fmt: skip
    return result


def _held_out(task) -> np.ndarray:
    """The held-out PNGs as uint8 pixels, read by PIL, not by the library."""
    folder = task[0] / "held_out"
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.iterdir())])


def _agreement(logits: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == np.argmax(expected, -1)))


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_int8_from_the_cli_keeps_top1_agreement(task, loaded, cli_int8):
    out, printed = cli_int8
    facts = json.loads(out.with_name(out.name + ".json").read_text())
    figures = facts["verification"]["figures"]
    assert facts["quantize"] == "int8" and figures["images"] == 60
    assert figures["top1_agreement"] >= 0.97
    assert facts["int8"]["calibration"]["images"] == 100  # The default calibration_steps.
    assert f"top-1 agreement {figures['top1_agreement']:.4f}" in printed
    assert "verified in ai_edge_litert on 60 held-out images" in printed
    assert (out.parent / "colours.tflite.report.md").is_file()
    # Independently: the file on the plain interpreter (no Flex delegate) on the same PNGs.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out), experimental_delegates=[])
    names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not [name for name in names if name.startswith("Flex")], names
    assert {"CONV_2D", "FULLY_CONNECTED"} <= names
    runner = interpreter.get_signature_runner()
    images = _held_out(task).astype(np.float32) / 255.0
    expected = loaded(tf.constant(images), training=False).numpy()
    assert _agreement(runner(images=images)["logits"], expected) >= 0.97


def test_uint8_io_runs_on_uint8_pixels_and_agrees(task, loaded, uint8_io):
    from ai_edge_litert.interpreter import Interpreter

    facts = json.loads(uint8_io.sidecar.read_text())
    quantization = facts["input"]["quantization"]
    assert facts["input"]["dtype"] == "uint8" and facts["output"]["dtype"] == "uint8"
    # Calibration images that reach black and white: pixels go in as they are decoded.
    assert quantization == {"scale": pytest.approx(1 / 255), "zero_point": 0}
    assert "runner(images=pixels)" in facts["example"]
    runner = Interpreter(model_path=str(uint8_io.path)).get_signature_runner()
    pixels = _held_out(task)
    result = runner(images=pixels)["logits"]
    assert result.dtype == np.uint8
    output = facts["output"]["quantization"]
    logits = (result.astype(np.float32) - output["zero_point"]) * output["scale"]
    expected = loaded(tf.constant(pixels.astype(np.float32) / 255.0), training=False).numpy()
    assert _agreement(logits, expected) >= 0.97
    assert facts["verification"]["figures"]["top1_agreement"] >= 0.97


def test_require_full_integer_passes_and_the_op_report_lists_no_float_ops(uint8_io):
    facts = json.loads(uint8_io.sidecar.read_text())
    ops = facts["int8"]["ops"]
    assert ops["float"] == {} and ops["flex"] == {}
    assert ops["integer"]["CONV_2D"] == 2
    assert facts["int8"]["require_full_integer"] is True
    assert "ops that stayed float: none" in uint8_io.summary()
    report = uint8_io.path.with_name(uint8_io.path.name + ".report.md").read_text()
    assert "- ops that stayed float: none" in report


def test_the_default_validation_never_calibrates(task, uint8_io):
    calibration, validation = (uint8_io.int8[k] for k in ("calibration_files", "validation_files"))
    assert len(validation) == 24 and len(calibration) == 96  # 20% of 120 held out.
    assert not set(calibration) & set(validation)
    facts = json.loads(uint8_io.sidecar.read_text())
    assert facts["int8"]["validation"]["source"] == "20% of the calibration files, held out"


def test_black_calibration_is_refused_and_nothing_written(task):
    root, export = task
    folder = root / "refused"
    folder.mkdir()
    with pytest.raises(ExportError, match=r"top1 agreement 0\.\d+ < min_agreement=0\.9 .*"
                       r"Nothing was written\.$") as raised:  # fmt: skip
        convert.convert(
            export, folder / "black.tflite", to="litert", quantize="int8",
            calibration=root / "black", validation=root / "held_out",
        )  # fmt: skip
    assert "\n" not in str(raised.value)
    # Without real validation images its own held-out share is black too: refused as flat.
    with pytest.raises(ExportError, match=r"Received 8 images of one colour each .* Nothing"):
        convert.convert(export, folder / "black.tflite", to="litert", quantize="int8",
                        calibration=root / "black")  # fmt: skip
    assert list(folder.iterdir()) == []


def test_without_calibration_images_it_refuses_in_one_line(task):
    root, export = task
    with pytest.raises(ExportError, match=r'^quantize="int8" needs calibration images: pass '
                       r"calibration=DIR or GLOB"):  # fmt: skip
        convert.convert(export, root / "none.tflite", to="litert", quantize="int8")
    with pytest.raises(ExportError, match="Expected image files for calibration"):
        convert.convert(export, root / "none.tflite", to="litert", quantize="int8",
                        calibration=root / "nothing-*.png")  # fmt: skip
    with pytest.raises(ExportError, match=r'Expected quantize="int8" with calibration, io\.'):
        convert.convert(export, root / "none.tflite", to="litert", calibration=root, io="uint8")
    assert not (root / "none.tflite").exists()


class _Sine(tf.Module):
    """A feature vector with an op LiteRT has no int8 kernel for (SIN stays float)."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(3, 8)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def serve(self, images):
        features = tf.reduce_mean(tf.einsum("bhwc,cd->bhwd", images, self.kernel), [1, 2])
        return {"feature_vector": tf.sin(features)}


def test_require_full_integer_refuses_an_op_that_stayed_float(task, tmp_path):
    root, _ = task
    model = _Sine()
    tf.saved_model.save(model, str(tmp_path / "sine"), signatures={"serving_default": model.serve})
    folder = tmp_path / "out"
    arguments = dict(to="litert", quantize="int8", calibration=root / "calibration")
    with pytest.raises(ExportError, match=r"Received ops that stayed float: SIN x1.*"
                       r"Nothing was written\.$"):  # fmt: skip
        convert.convert(tmp_path / "sine", folder / "sine.tflite", require_full_integer=True,
                        **arguments)  # fmt: skip
    assert not folder.exists()
    result = convert.convert(tmp_path / "sine", folder / "sine.tflite", **arguments)
    assert result.int8["ops"]["float"] == {"SIN": 1}
    assert result.int8["ops"]["conversions"] == {"DEQUANTIZE": 1, "QUANTIZE": 1}
    assert result.int8["figures"]["top1_agreement"] is None  # A feature vector: cosine.
    assert result.int8["figures"]["mean_cosine"] >= quantize.DEFAULT_MIN_COSINE
