"""Conversion to LiteRT and ONNX: verified parity in the real runtimes, atomic writes."""

import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import random_images, run_cli
from test_serving import served_export

from exporter import ExportError
from exporter.use import convert

SIZES = (64, 32)  # MobileNetV2's probe sizes: min(native, 2 * min_size) and min_size.


@pytest.fixture(scope="module")
def source(calibrated_weights, workdir):
    """The calibrated MobileNetV2 of test_serving (features of order 1), reused if cached."""
    return served_export(calibrated_weights, workdir)


@pytest.fixture(scope="module")
def loaded(source):
    return tf.saved_model.load(str(source))


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    """Convert once per mode (7-10 s each) and keep what the library reported."""
    folder = tmp_path_factory.mktemp("converted")
    cache = {}

    def make(to, quantize="none", size=None):
        key = (to, quantize, size)
        if key not in cache:
            suffix = "tflite" if to == "litert" else "onnx"
            out = folder / f"{to}-{quantize}-{size}.{suffix}"
            if to == "onnx":  # Through the CLI, which prints what the library reports.
                done = run_cli("convert", str(source), "--to=onnx", f"--out={out}")
                assert done.returncode == 0, done.stderr[-3000:]
                cache[key] = _Converted(to, out, done.stdout)
            else:
                result = convert.convert(source, out, to=to, quantize=quantize, size=size)
                assert result.path == out
                cache[key] = _Converted(to, out, result.summary())
        return cache[key]

    return make


class _Converted:
    def __init__(self, to, path, printed):
        self.to, self.path, self.printed = to, path, printed
        self.sidecar = path.with_name(path.name + ".json")
        self.facts = json.loads(self.sidecar.read_text())
        self.checks = [
            (c["height"], c["width"], c["batch"]) for c in self.facts["verification"]["checks"]
        ]
        self.size_bytes = path.stat().st_size


def _runner(conversion):
    """Run the converted file in its own runtime, independently of the library."""
    if conversion.to == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(conversion.path)).get_signature_runner(
            "serving_default"
        )
        return lambda images: runner(images=images)["feature_vector"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(conversion.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return lambda images: session.run(["feature_vector"], {"images": images})[0]


def _parity(run, loaded, batch, size):
    images = random_images(batch, size, seed=batch * 100 + size)
    expected = loaded(tf.constant(images), training=False).numpy()
    scale = np.max(np.abs(expected))
    assert scale > 1e-2, "features vanish: the parity check would be vacuous"
    actual = run(images)
    assert actual.shape == expected.shape
    cosine = np.sum(actual * expected, -1) / np.linalg.norm(actual, axis=-1)
    cosine /= np.linalg.norm(expected, axis=-1)
    return np.max(np.abs(actual - expected)) / scale, np.min(cosine)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.parametrize(
    "to, quantize", [("litert", "none"), ("litert", "float16"), ("litert", "dynamic_int8"),
                     ("onnx", "none")]
)  # fmt: skip
def test_parity_at_two_sizes_and_two_batch_sizes(converted, loaded, to, quantize):
    conversion = converted(to, quantize)
    bound = convert.BOUNDS[quantize]
    run = _runner(conversion)
    for size in SIZES:
        for batch in (1, 3):
            error, cosine = _parity(run, loaded, batch, size)
            assert error <= bound.max_relative and cosine >= bound.min_cosine, (size, batch)
    assert conversion.checks == [(s, s, b) for s in SIZES for b in (1, 3)]
    assert "64x64 batch 3: max difference" in conversion.printed
    facts = conversion.facts
    assert facts["quantize"] == quantize
    assert facts["runtime"] == ("ai_edge_litert" if to == "litert" else "onnxruntime")
    assert facts["input"]["admissible"] == "height and width of at least 32"
    assert facts["input"]["checked_by_the_model"] is False
    assert len(facts["verification"]["checks"]) == 4


def test_float32_litert_is_within_1e4(converted, loaded):
    run = _runner(converted("litert"))
    for size in SIZES:
        error, _ = _parity(run, loaded, 3, size)
        assert error <= 1e-4


@pytest.mark.slow  # 10 s or more in the quick tier, with its setup (docs/development.md).
def test_quantized_files_are_smaller(converted):
    float32 = converted("litert").size_bytes
    assert converted("litert", "float16").size_bytes < 0.6 * float32
    assert converted("litert", "dynamic_int8").size_bytes < 0.35 * float32


def test_fixed_size_litert(converted, loaded):
    conversion = converted("litert", size=48)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(conversion.path))
    (details,) = interpreter.get_input_details()
    assert list(details["shape"][1:]) == [48, 48, 3]
    assert conversion.checks == [(48, 48, 1), (48, 48, 3)]
    error, _ = _parity(_runner(conversion), loaded, 3, 48)
    assert error <= 1e-4
    facts = conversion.facts
    assert facts["input"]["shape"] == [None, 48, 48, 3]
    assert facts["input"]["admissible"] == "height 48 and width 48"


@pytest.mark.parametrize("to", ["litert", "onnx"])
def test_converted_models_drop_the_input_checks(converted, loaded, to):
    """Pins the runtimes' behaviour: a change here means the sidecar's warning is stale."""
    too_small = random_images(1, 31)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 32"):
        loaded(tf.constant(too_small), training=False)
    output = _runner(converted(to))(too_small)  # Accepted without a word.
    assert output.shape == (1, 1280)


def test_sidecar_carries_what_the_model_no_longer_checks(converted, source):
    facts = converted("litert").facts
    metadata = json.loads((source / "assets.extra" / "metadata.json").read_text())
    assert facts["preprocessing"] == metadata["preprocessing"]
    assert facts["output"] == {"name": "feature_vector", "dtype": "float32"}
    assert facts["source"]["fingerprint"]["tensorflow"]["saved_model_checksum"] > 0
    assert len(facts["source"]["fingerprint"]["saved_model_pb_sha256"]) == 64
    assert "now the caller's" in facts["input_checks"]


def test_cli_prints_parity_and_the_warning(converted):
    conversion = converted("onnx")
    assert "32x32 batch 1: max difference" in conversion.printed
    assert "warning: The converted model does not check its input" in conversion.printed
    names = [p.name for p in conversion.path.parent.iterdir()]
    assert {"onnx-none-None.onnx", "onnx-none-None.onnx.json"} <= set(names)
    assert [name for name in names if name.startswith(".")] == []  # No temporary left.


class _Disagreeing(tf.Module):
    """serving_default is twice __call__: any faithful conversion fails verification."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(3, 8)).astype("float32"))

    @tf.function(autograph=False)
    def __call__(self, images, training=False):
        return tf.reduce_mean(tf.einsum("bhwc,cd->bhwd", images, self.kernel), [1, 2])


@pytest.mark.parametrize("to", ["litert", "onnx"])
def test_failed_verification_leaves_nothing(tmp_path, to):
    model = _Disagreeing()
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for training in (False, True):
        model.__call__.get_concrete_function(spec, training=training)
    serve = tf.function(
        lambda images: {"feature_vector": 2.0 * model(images)}, input_signature=[spec]
    )
    tf.saved_model.save(model, str(tmp_path / "model"), signatures={"serving_default": serve})
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ExportError, match="failed verification.*Nothing was written"):
        convert.convert(tmp_path / "model", folder / "model.bin", to=to)
    assert list(folder.iterdir()) == []


@pytest.mark.slow  # Half a minute or more on 2 cores (docs/development.md).
def test_efficientnet_b0_converts_to_onnx(export, tmp_path):
    """Its serving_default captures constant tensors (Keras 3 Normalization's mean and
    variance); tf2onnx's from_function made them inputs that no caller feeds."""
    source = export("feature_vector", "efficientnet_b0", "calibrated")  # Shared: test_export.
    result = convert.convert(source, tmp_path / "efficientnet_b0.onnx", to="onnx")
    assert [(c.height, c.width, c.batch) for c in result.checks] == [
        (s, s, b) for s in SIZES for b in (1, 3)
    ]
    conversion = _Converted("onnx", result.path, result.summary())
    error, cosine = _parity(_runner(conversion), tf.saved_model.load(str(source)), 3, 32)
    assert error <= convert.BOUNDS["none"].max_relative and cosine >= 0.99999


class _Shifted(tf.Module):
    """Captures a constant tensor, not a variable, as Keras 3's Normalization does."""

    def __init__(self, op=tf.identity):
        super().__init__()
        self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(3, 8)).astype("float32"))
        self.mean = tf.constant([[[[0.4, 0.5, 0.6]]]])
        self.op = op

    @tf.function(autograph=False)
    def __call__(self, images, training=False):
        shifted = self.op(images - self.mean)
        return tf.reduce_mean(tf.einsum("bhwc,cd->bhwd", shifted, self.kernel), [1, 2])


def _save(model, path):
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for training in (False, True):
        model.__call__.get_concrete_function(spec, training=training)
    serve = tf.function(lambda images: {"feature_vector": model(images)}, input_signature=[spec])
    tf.saved_model.save(model, str(path), signatures={"serving_default": serve})
    return path


def test_captured_constants_are_no_onnx_inputs(tmp_path):
    source = _save(_Shifted(), tmp_path / "model")
    result = convert.convert(source, tmp_path / "model.onnx", to="onnx")
    conversion = _Converted("onnx", result.path, result.summary())
    assert conversion.checks == [(s, s, b) for s in (224, 192) for b in (1, 3)]
    error, _ = _parity(_runner(conversion), tf.saved_model.load(str(source)), 1, 32)
    assert error <= convert.BOUNDS["none"].max_relative


def test_a_model_the_runtime_cannot_run_is_an_export_error(tmp_path):
    """tf2onnx leaves an op it cannot convert (Digamma) in the graph; onnxruntime refuses it."""
    source = _save(_Shifted(lambda x: tf.math.digamma(x + 2.0)), tmp_path / "model")
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ExportError, match=r"^onnxruntime could not load the converted model: "
                       r".*No Op registered for Digamma.*\. Nothing was written\.$"):  # fmt: skip
        convert.convert(source, folder / "model.onnx", to="onnx")
    assert list(folder.iterdir()) == []


def test_the_cli_names_its_flag_where_the_library_names_its_argument(source, converted):
    out = converted("onnx").path  # Already written there by the CLI.
    done = run_cli("convert", str(source), "--to=onnx", f"--out={out}")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {out} exists; pass --overwrite to replace it."
    ), done.stderr


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"keep me")
    with pytest.raises(ExportError, match="exists; pass overwrite=True to replace it"):
        convert.convert(tmp_path / "export", tmp_path / "model.tflite", to="litert")
    assert (tmp_path / "model.tflite").read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(to="coreml"), "Unknown runtime 'coreml'; known: litert, onnx"),
        (dict(to="onnx", quantize="float16"), "Expected quantize=none for ONNX"),
        (dict(to="litert", size="0,4"), "Expected size as H or H,W"),
    ],
)
def test_bad_arguments(tmp_path, arguments, message):
    with pytest.raises(ExportError, match=message):
        convert.convert(tmp_path, tmp_path / "model.bin", **arguments)


@pytest.mark.parametrize("missing", ["ai_edge_litert", "onnxruntime"])
def test_missing_extra_says_what_to_install(tmp_path, monkeypatch, missing):
    for name in list(sys.modules):
        if name == missing or name.startswith(missing + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # Makes the import fail as if absent.
    to = "litert" if missing == "ai_edge_litert" else "onnx"
    with pytest.raises(ExportError, match=r"needs \w+: pip install 'tfhub-exporter\[convert\]'$"):
        # The file beside the folder: one inside a SavedModel's folder is refused first.
        convert.convert(tmp_path / "export", tmp_path / "model.bin", to=to)
