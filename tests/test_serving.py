"""Serving signatures (uint8 pixels, encoded image bytes) through TF Serving's own loaders."""

import base64
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli

import exporter
from exporter.checking import conformance

SERVING_SIZE = 64
OUTPUT = "feature_vector"


_served: dict = {}


def served_export(calibrated_weights, workdir) -> Path:
    """Export (once per session, through the CLI) a calibrated MobileNetV2 feature vector
    with all three serving inputs; test_convert converts the same export."""
    if "path" not in _served:
        out = workdir / "exports" / "served-mobilenet_v2"
        done = run_cli(
            "feature_vector", "--backbone=mobilenet_v2", f"--out={out}",
            f"--weights={calibrated_weights('mobilenet_v2')}",
            "--serving_inputs=float32,uint8,image_bytes", f"--serving_size={SERVING_SIZE}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        _served["path"] = out
    return _served["path"]


@pytest.fixture(scope="module")
def served(calibrated_weights, workdir):
    return served_export(calibrated_weights, workdir)


@pytest.fixture(scope="module")
def loaded(served):
    return tf.saved_model.load(str(served))


def _pixels(batch, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _photo(size, seed=0):
    """A smooth image, as photos are (JPEG turns random noise into something else)."""
    coarse = np.random.default_rng(seed).random((1, 6, 6, 3), dtype=np.float32)
    smooth = tf.image.resize(coarse, [size, size], method="bicubic")[0]
    return np.clip(np.round(smooth.numpy() * 255), 0, 255).astype(np.uint8)


def _reference(loaded, pixels):
    """__call__ on the same pixels, asserted not to be vanishingly small."""
    expected = loaded(tf.constant(pixels, tf.float32) / 255.0, training=False).numpy()
    assert np.max(np.abs(expected)) > 1e-2, "features vanish: the parity check would be vacuous"
    return expected


def _inputs(pixels):
    """Each signature's input for the same pixels (PNG is lossless)."""
    return {
        "serving_default": ("images", pixels.astype(np.float32) / 255.0),
        "serving_uint8": ("images", pixels),
        "serving_bytes": ("image_bytes", np.array([tf.io.encode_png(p).numpy() for p in pixels])),
    }


def _assert_close(actual, expected):
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * scale)


def test_tf1_session_loader_runs_every_signature_by_tensor_names(served, loaded):
    pixels = _pixels(2, SERVING_SIZE)
    expected = _reference(loaded, pixels)
    inputs = _inputs(pixels)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(served))
        signatures = meta_graph.signature_def
        served_names = sorted(name for name in signatures if not name.startswith("__"))
        assert served_names == ["serving_bytes", "serving_default", "serving_uint8"]
        for name, (argument, value) in inputs.items():
            assert list(signatures[name].inputs) == [argument]
            assert list(signatures[name].outputs) == [OUTPUT]
            output = session.run(
                signatures[name].outputs[OUTPUT].name,
                {signatures[name].inputs[argument].name: value},
            )
            _assert_close(output, expected)


def _saved_model_cli(*arguments, cwd):
    environ = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", " ".join(arguments)], cwd=cwd, env=environ, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_saved_model_cli_runs_every_signature_as_the_card_shows(served, loaded, tmp_path):
    pixels = _pixels(1, SERVING_SIZE, seed=1)
    expected = _reference(loaded, pixels)
    facts = json.loads((served / "assets.extra" / "metadata.json").read_text())
    for name, (argument, value) in _inputs(pixels).items():
        folder = tmp_path / name
        folder.mkdir()
        if name == "serving_bytes":
            # The card's own line, run as written: it reads cat.jpg, here a PNG's bytes.
            (folder / "cat.jpg").write_bytes(value[0])
            command = facts["serving"][name]["saved_model_cli"]
        else:
            np.save(folder / "input.npy", value)
            command = (
                f"saved_model_cli run --dir PATH --tag_set serve --signature_def {name} "
                f"--inputs {argument}=input.npy"
            )
        command = command.replace("--dir PATH", f"--dir {shlex.quote(str(served))}")
        _saved_model_cli(command, f"--outdir {shlex.quote(str(folder / 'out'))}", cwd=folder)
        _assert_close(np.load(folder / "out" / f"{OUTPUT}.npy"), expected)


def _encode(image, kind):
    if kind == "jpeg":
        return tf.io.encode_jpeg(image, quality=95).numpy()
    return tf.io.encode_png(image).numpy()


def test_jpeg_grayscale_png_and_rgba_png_in_one_batch(loaded):
    pixels = np.stack([_photo(SERVING_SIZE, seed) for seed in range(3)])
    gray = pixels[1, ..., :1]
    rgba = np.concatenate([pixels[2], pixels[2, ..., :1]], axis=-1)
    large = _pixels(1, 2 * SERVING_SIZE, seed=3)[0]  # Resized down to the serving size.
    batch = [_encode(pixels[0], "jpeg"), _encode(gray, "png"), _encode(rgba, "png"),
             _encode(large, "png")]  # fmt: skip
    output = loaded.signatures["serving_bytes"](image_bytes=tf.constant(batch))[OUTPUT].numpy()
    jpeg_pixels = tf.io.decode_jpeg(batch[0]).numpy()
    resized = tf.image.resize(tf.constant(large, tf.float32) / 255.0, [SERVING_SIZE] * 2)
    expected = np.concatenate(
        [
            _reference(loaded, jpeg_pixels[None]),
            _reference(loaded, np.repeat(gray, 3, axis=-1)[None]),
            _reference(loaded, pixels[2][None]),  # The alpha channel is dropped.
            loaded(resized[None], training=False).numpy(),
        ]
    )
    for index in range(4):
        _assert_close(output[index], expected[index])


def test_undecodable_element_fails_naming_its_index(loaded):
    good = _encode(_pixels(1, 32)[0], "png")
    batch = tf.constant([good, good, b"<html>not an image</html>", good])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at index\] \[2\]"):
        loaded.signatures["serving_bytes"](image_bytes=batch)


def test_rest_body_from_the_card_with_a_base64_jpeg(served, loaded):
    facts = json.loads((served / "assets.extra" / "metadata.json").read_text())
    body = facts["serving"]["serving_bytes"]["rest_body"]
    assert body["instances"][0]["image_bytes"] == {"b64": "<base64 of the JPEG file>"}
    assert '"b64"' in (served / "assets.extra" / "model_card.md").read_text()
    jpeg = _encode(_photo(SERVING_SIZE, seed=5), "jpeg")
    body["instances"][0]["image_bytes"]["b64"] = base64.b64encode(jpeg).decode("ascii")
    # What TF Serving's REST API does with the body: {"b64": ...} becomes a DT_STRING element.
    request = json.loads(json.dumps(body))
    signature = loaded.signatures[request["signature_name"]]
    column = [base64.b64decode(row["image_bytes"]["b64"]) for row in request["instances"]]
    output = signature(image_bytes=tf.constant(column))[OUTPUT].numpy()
    _assert_close(output, _reference(loaded, tf.io.decode_jpeg(jpeg).numpy()[None]))


# -- the checker on hand-built SavedModels -------------------------------------------------


class _Handmade(tf.Module):
    variables = None
    trainable_variables = None

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(3, 8)).astype("float32"))
        self.variables = self.trainable_variables = [self.kernel]
        self.regularization_losses = []

    @tf.function(autograph=False)
    def __call__(self, images, training=False):
        return tf.reduce_mean(tf.einsum("bhwc,cd->bhwd", images, self.kernel), [1, 2])


def _handmade(path, broken):
    model = _Handmade()
    for training in (False, True):
        model.__call__.get_concrete_function(conformance_spec(), training=training)

    @tf.function(input_signature=[conformance_spec()])
    def serve(images):
        return {OUTPUT: model(images)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_bytes(image_bytes):
        decode = lambda b: tf.io.decode_png(b, channels=3)  # noqa: E731
        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.uint8)
        output = model(tf.cast(images, tf.float32) / 255.0)
        name = "features" if broken == "renamed" else OUTPUT
        return {name: output * 2.0 if broken == "differs" else output}

    signatures = {"serving_default": serve, "serving_bytes": serve_bytes}
    tf.saved_model.save(model, str(path), signatures=signatures)
    return path


def conformance_spec():
    return tf.TensorSpec([None, None, None, 3], tf.float32)


@pytest.mark.parametrize("broken", ["nothing", "differs", "renamed"])
def test_checker_flags_a_serving_bytes_that_differs_from_serving_default(tmp_path, broken):
    report = conformance.check(_handmade(tmp_path / "model", broken))
    expected = [] if broken == "nothing" else ["serving_bytes"]
    assert report.failed() == expected, report.to_text()
    verdict = {r.rule: r.message for r in report.results}["serving_bytes"]
    if broken == "differs":
        assert "differs from __call__ on the same pixels" in verdict
    if broken == "renamed":
        assert "['features']; serving_default has ['feature_vector']" in verdict


def test_cli_export_documents_its_signatures(served):
    facts = json.loads((served / "assets.extra" / "metadata.json").read_text())
    assert facts["signatures"] == ["serving_bytes", "serving_default", "serving_uint8"]
    assert facts["serving"]["serving_bytes"]["size"] == SERVING_SIZE
    assert {about["output"] for about in facts["serving"].values()} == {OUTPUT}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(serving_inputs="float32,png"), "Unknown serving input 'png'; known: float32, uint8"),
        (dict(serving_inputs="image_bytes", serving_size=16),
         "Expected serving_size to be an int of at least 32"),
        (dict(serving_inputs="uint8", serving_size=64), "add image_bytes to serving_inputs"),
    ],
)  # fmt: skip
def test_bad_serving_arguments_write_nothing(tmp_path, arguments, message):
    backbone = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3)])
    module = exporter.FeatureVectorModule(backbone, preprocessing="identity")
    with pytest.raises(exporter.ExportError, match=message):
        exporter.save(module, tmp_path / "model", **arguments)
    assert list(tmp_path.iterdir()) == []
