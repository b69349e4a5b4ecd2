"""keras-hub presets and .keras files through both CLIs, against keras-hub's own outputs.

Every supported family: a small random config with a non-identity image converter, saved as
a preset folder, exported by the CLI as a feature vector and as a classifier, reloaded, and
compared with keras-hub's own classifier on the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, random_images, run_cli, tiered
from keras_hub_configs import (
    ENCODER_SIZE,
    ENCODERS,
    FAMILIES,
    encoder_embedding,
    make_encoder,
    make_task,
)

import exporter
from exporter.checking import conformance
from exporter.errors import ExportError
from exporter.making import preprocessing, presets

keras_hub = pytest.importorskip("keras_hub")

# Per channel, neither 1 nor 0: a converter the export must carry over with its numbers.
SCALE = (1 / 58.4, 1 / 57.1, 1 / 57.4)
OFFSET = (-2.1, -2.0, -1.8)
TOLERANCE = 1e-4  # Of the largest magnitude of keras-hub's own output.


def _subclasses(cls) -> list:
    every = []
    for sub in cls.__subclasses__():
        every += [sub, *_subclasses(sub)]
    return every


def test_every_keras_hub_image_backbone_is_supported_or_refused_with_a_reason():
    # Image backbones are the ones keras-hub pairs with an image converter.
    image = {c.backbone_cls for c in _subclasses(keras_hub.layers.ImageConverter)}
    image.discard(None)
    classifiable = {c.backbone_cls for c in _subclasses(keras_hub.models.ImageClassifier)}
    names = {cls.__name__ for cls in image}
    supported = {cls.__name__ for cls in image & classifiable} | set(presets.ENCODERS)
    unaccounted = names - supported - set(presets.REFUSED)
    assert not unaccounted, f"neither supported nor refused with a reason: {sorted(unaccounted)}"
    tested = {f"{family}Backbone" for family in [*FAMILIES, *ENCODERS]}
    assert supported == tested
    assert not supported & set(presets.REFUSED)
    assert all(presets.REFUSED[name].strip() for name in names - supported)


def _export_both(preset: Path, tmp_path: Path, *classifier_flags) -> tuple[Path, Path]:
    """Run both CLIs on ``preset`` at once (two processes: the machine has two cores)."""
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    outputs = {"feature_vector": tmp_path / "fv", "classification": tmp_path / "cls"}
    running = {
        module: subprocess.Popen(
            [
                sys.executable,
                "-m",
                f"exporter.{module}",
                f"--backbone={preset}",
                f"--out={out}",
                *(classifier_flags if module == "classification" else ()),
            ],
            cwd=REPO,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for module, out in outputs.items()
    }
    for module, process in running.items():
        text, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{module}:\n{text[-3000:]}"
    return outputs["feature_vector"], outputs["classification"]


def _reference(task):
    """keras-hub's own: its classifier's input to the logits layer, and its logits."""
    final = task.outputs[0]._keras_history.operation
    if not isinstance(final, keras.Sequential):
        assert isinstance(final, keras.layers.Dense)
        return keras.Model(task.inputs, final.input), task  # Dropout before: identity here.
    # VGG: its head is a Sequential ending in the logits layer.
    trunk = keras.Model(task.inputs, final._inbound_nodes[0].input_tensors[0])
    assert isinstance(final.layers[-1], keras.layers.Dense)

    def features(inputs):
        outputs = trunk(inputs)
        for layer in final.layers[:-1]:
            outputs = layer(outputs, training=False)
        return outputs

    return features, task


def _close(actual, expected, what: str) -> None:
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max())
    assert scale > 1e-3, f"{what}: keras-hub's output vanishes ({scale}); the test would be blind"
    gap = float(np.abs(np.asarray(actual) - expected).max())
    assert gap <= TOLERANCE * scale, f"{what}: max gap {gap} against scale {scale}"


@pytest.mark.parametrize("family", tiered(sorted(FAMILIES), "ResNet"))
def test_a_preset_folder_exports_through_both_clis(family, tmp_path):
    task = make_task(family, scale=SCALE, offset=OFFSET)
    preset = tmp_path / "preset"
    task.save_to_preset(str(preset))
    fv_path, cls_path = _export_both(preset, tmp_path)
    size, fixed = FAMILIES[family]["image_size"], FAMILIES[family]["fixed"]
    features, logits = _reference(task)
    fv, cls = tf.saved_model.load(str(fv_path)), tf.saved_model.load(str(cls_path))
    for at in (size,) if fixed else (size, 2 * size):
        images = random_images(2, at, seed=at)
        inputs = images * 255.0 * np.float32(SCALE) + np.float32(OFFSET)
        _close(fv(images), features(inputs), f"{family} feature vector at {at}")
        _close(cls(images), logits(inputs), f"{family} logits at {at}")
    if fixed:
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"exactly {size} pixels"):
            fv(random_images(1, size + 8))
    for path in (fv_path, cls_path):
        report = conformance.check(path, strict_metadata=True)
        assert report.ok, report.to_text()
    metadata = json.loads((fv_path / "assets.extra" / "metadata.json").read_text())
    assert metadata["input"]["fixed_size"] is fixed
    assert metadata["pooling"] == FAMILIES[family]["pooling"]
    assert metadata["preprocessing"]["mode"] == "affine"
    np.testing.assert_allclose(metadata["preprocessing"]["scale"], SCALE)
    np.testing.assert_allclose(metadata["preprocessing"]["offset"], OFFSET)
    card = (fv_path / "assets.extra" / "model_card.md").read_text()
    assert f"keras-hub {presets.version()} preset {preset} ({family})" in card
    assert "avg-pooled feature map" not in card  # Our words for keras.applications only.
    if family == "DeiT":
        assert "the distillation token (position 1) is not used" in card


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_a_backbone_preset_takes_a_new_head_and_says_what_is_missing(tmp_path):
    task = make_task("ResNet", scale=SCALE, offset=OFFSET)
    preset = tmp_path / "backbone"
    task.backbone.save_to_preset(str(preset))  # No converter, no classifier.
    out = tmp_path / "out"
    result = run_cli("classification", f"--backbone={preset}", f"--out={out}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: keras-hub preset {preset} is a ResNet backbone without a classifier of its "
        "own: pass --num_classes=N for a new head."
    )
    result = run_cli("classification", f"--backbone={preset}", f"--out={out}", "--num_classes=4")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: keras-hub preset {preset} has no image converter to say how its pixels are "
        "prepared: pass --preprocessing=... (a named mode, or SCALE,OFFSET on 0..255)."
    )
    assert not out.exists()
    result = run_cli(
        "classification", f"--backbone={preset}", f"--out={out}", "--num_classes=4",
        "--preprocessing=0.0171:0.0175:0.0174,-2.1:-2.0:-1.8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    model = tf.saved_model.load(str(out))
    assert model(random_images(2, 32)).shape == (2, 4)
    assert conformance.check(out, strict_metadata=True).ok


def test_an_unreachable_handle_fails_in_one_line_naming_it(tmp_path):
    handle = "kaggle://keras/vit/keras/vit_base_patch16_224_imagenet"
    out = tmp_path / "out"
    result = run_cli("feature_vector", f"--backbone={handle}", f"--out={out}", timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Could not read keras-hub preset '{handle}': "), last
    # What happened, in our words: not urllib3's "HTTPSConnectionPool(host=...)" (issue 35).
    assert "cannot download it: no network (api.kaggle.com cannot be reached)" in last, last
    assert "HTTPSConnectionPool" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("family", tiered(sorted(ENCODERS), "CLIP"))
def test_a_vision_encoder_exports_its_image_embedding(family, tmp_path):
    backbone, converter = make_encoder(family, scale=SCALE, offset=OFFSET)
    preset = tmp_path / "preset"
    backbone.save_to_preset(str(preset))
    converter.save_to_preset(str(preset))
    fv_path, cls_path = _export_both(preset, tmp_path, "--num_classes=4")
    images = random_images(2, ENCODER_SIZE, seed=3)
    inputs = images * 255.0 * np.float32(SCALE) + np.float32(OFFSET)
    fv = tf.saved_model.load(str(fv_path))
    _close(fv(images), encoder_embedding(family, backbone, inputs), f"{family} embedding")
    assert tf.saved_model.load(str(cls_path))(images).shape == (2, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"exactly {ENCODER_SIZE} pixels"):
        fv(random_images(1, ENCODER_SIZE + 7))
    for path in (fv_path, cls_path):
        report = conformance.check(path, strict_metadata=True)
        assert report.ok, report.to_text()
    card = (fv_path / "assets.extra" / "model_card.md").read_text()
    expected = {"CLIP": "the projection is applied", "MetaCLIP2": "the projection is applied",
                "SigLIP": "none is applied", "DINOV2": "register tokens (positions 1 to 2)",
                "DINOV3": "register tokens (positions 1 to 4)"}  # fmt: skip
    assert expected[family] in card


def test_a_vision_encoder_has_no_classifier_of_its_own(tmp_path):
    backbone, converter = make_encoder("DINOV2", scale=SCALE, offset=OFFSET)
    backbone.save_to_preset(str(tmp_path / "dino"))
    with pytest.raises(ExportError, match=r"is a DINOV2 backbone without a classifier of its own"):
        exporter.build_classifier(str(tmp_path / "dino"))


def test_a_refused_family_says_why(tmp_path):
    encoder = keras_hub.models.MiTBackbone(**FAMILIES["MiT"]["backbone"], image_shape=(32, 32, 3))
    backbone = keras_hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=8)
    backbone.save_to_preset(str(tmp_path / "segformer"))
    with pytest.raises(ExportError, match=r"\(SegFormerBackbone\): an image segmentation model"):
        presets.load(str(tmp_path / "segformer"))


def _functional_backbone() -> keras.Model:
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu")(x)
    return keras.Model(inputs, x, name="my_backbone")


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_a_keras_file_exports_through_the_cli_and_equals_the_model(tmp_path):
    model = _functional_backbone()
    norm = model.layers[2]
    norm.moving_mean.assign(np.full(8, 0.3, np.float32))
    norm.moving_variance.assign(np.full(8, 0.5, np.float32))
    path = tmp_path / "mine.keras"
    model.save(path)
    out = tmp_path / "out"
    result = run_cli("feature_vector", f"--backbone={path}", f"--out={out}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: A .keras file does not say how its pixels are prepared or what size it was "
        "trained at: pass --preprocessing=... and --native_size=... (preprocessing: a named "
        f"mode, or SCALE,OFFSET on 0..255). Received a .keras file: {path}."
    )
    result = run_cli(
        "feature_vector", f"--backbone={path}", f"--out={out}", "--preprocessing=tf",
        "--native_size=48",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = tf.saved_model.load(str(out))
    for size in (32, 48):
        images = random_images(3, size, seed=size)
        expected = keras.ops.mean(model(images * 2.0 - 1.0), axis=(1, 2))
        _close(loaded(images), expected, f".keras feature vector at {size}")
    assert conformance.check(out, strict_metadata=True).ok


@pytest.fixture(scope="module")
def vit_feature_vector(tmp_path_factory):
    """A small ViT task preset's feature vector, exported once for the consumers below."""
    root = tmp_path_factory.mktemp("vit")
    task = make_task("ViT", scale=SCALE, offset=OFFSET)
    task.save_to_preset(str(root / "preset"))
    return exporter.export_feature_vector(str(root / "preset"), root / "fv")


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_a_preset_classifier_export_frees_its_model_before_the_reload(tmp_path, released):
    """export_classifier of a keras-hub task preset: nothing keeps the model (the task, its
    backbone, its converter) alive once verification starts."""
    make_task("ViT", scale=SCALE, offset=OFFSET).save_to_preset(str(tmp_path / "preset"))
    out = exporter.export_classifier(str(tmp_path / "preset"), tmp_path / "cls")
    assert released["alive at verify"] is False
    assert conformance.check(out, strict_metadata=True).ok


def _norm_weights(variables) -> list:
    # ViT has no batch norm: its gammas are its LayerNorms' (ln_1, ln_2, the final norm).
    norms = [v for v in variables if "gamma" in v.name]
    assert norms, [v.name for v in variables]
    return norms


LABELS = np.array([0, 1, 0, 1, 1, 0, 1, 0])


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_a_vit_feature_vector_fine_tunes_in_keras_3(vit_feature_vector):
    keras.utils.set_random_seed(0)
    layer = exporter.KerasLayer(str(vit_feature_vector), trainable=True)
    model = keras.Sequential([keras.Input((32, 32, 3)), layer, keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(True))
    norms = _norm_weights(layer._loaded.trainable_variables)
    before = [n.numpy().copy() for n in norms]
    losses = model.fit(random_images(8, 32), LABELS, epochs=6, verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses
    assert any(not np.allclose(b, n.numpy()) for b, n in zip(before, norms, strict=True))


def test_a_vit_feature_vector_fine_tunes_in_hub_keras_layer(vit_feature_vector):
    import tensorflow_hub as hub
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    layer = hub.KerasLayer(str(vit_feature_vector), trainable=True)
    model = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), layer, tf_keras.layers.Dense(2)])
    model.compile(
        tf_keras.optimizers.Adam(1e-2),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    norms = _norm_weights(layer.trainable_weights)
    before = [n.numpy().copy() for n in norms]
    losses = model.fit(random_images(8, 32), LABELS, epochs=6, verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses
    assert any(not np.allclose(b, n.numpy()) for b, n in zip(before, norms, strict=True))


def test_a_vit_feature_vector_converts_to_litert_with_verified_parity(vit_feature_vector):
    from exporter.use.convert import convert

    out = vit_feature_vector.parent / "vit.tflite"
    conversion = convert(vit_feature_vector, out, to="litert")
    assert out.is_file() and out.stat().st_size > 0
    assert conversion.checks, "no parity check ran"
    for check in conversion.checks:  # Measured in the LiteRT interpreter, at the fixed size.
        assert (check.height, check.width) == (32, 32)
        assert check.max_relative <= conversion.bound.max_relative, conversion.summary()
        assert check.min_cosine >= conversion.bound.min_cosine, conversion.summary()


def test_the_readme_table_says_what_the_exports_do():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### keras-hub presets", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[0]: cells[1:]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| family")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert set(rows) == set(FAMILIES) | set(ENCODERS)
    for family, facts in FAMILIES.items():
        size = "fixed" if facts["fixed"] else "dynamic"
        assert rows[family] == ["feature vector, classifier", facts["pooling"], size], family
    for family in ENCODERS:  # Every encoder is fixed-size; its pooling is in presets.ENCODERS.
        output, pooling, size = rows[family]
        assert (output, size) == ("feature vector (new head: `--num_classes`)", "fixed")
        own = presets.ENCODERS[f"{family}Backbone"][0]
        projected = "projection is applied" in presets.ENCODERS[f"{family}Backbone"][1]
        assert pooling == own + (", projected" if projected else ""), family


def test_a_token_model_exports_gap_pooling_when_asked(tmp_path):
    task = make_task("ViT", scale=SCALE, offset=OFFSET)
    task.backbone.save_to_preset(str(tmp_path / "vit"))
    module = exporter.build_feature_vector(
        str(tmp_path / "vit"), pooling="gap", preprocessing=preprocessing.Affine.of(SCALE, OFFSET)
    )
    images = random_images(2, 32, seed=5)
    inputs = images * 255.0 * np.float32(SCALE) + np.float32(OFFSET)
    tokens = task.backbone(inputs)
    _close(module(images), keras.ops.mean(tokens, axis=1), "ViT gap")
    assert module.pooling == "gap" and "mean of the backbone's output" in module.bottleneck
    with pytest.raises(ExportError, match=r"one of avg, max, token, gap for a keras-hub preset"):
        exporter.build_feature_vector(str(tmp_path / "vit"), pooling="flat")
    # A pooling its family's classifier does not do is refused before anything is built.
    with pytest.raises(
        exporter.ArgumentError, match=r"one of token, gap for keras-hub preset"
    ) as raised:
        exporter.build_feature_vector(str(tmp_path / "vit"), pooling="max")
    assert '(as its ViTImageClassifier pools), or left unset. Received: pooling="max".' in str(
        raised.value
    )


def test_each_family_takes_the_poolings_of_its_classifier():
    """Its documented default among them. A classifier without a pooling argument swallows
    the keyword and pools its own way, so a --pooling for it is refused before the build."""
    own_way = []
    for family, facts in FAMILIES.items():
        task_class = getattr(keras_hub.models, f"{family}ImageClassifier")
        takes = presets.classifier_poolings(task_class)
        if not takes:
            own_way.append(family)
            continue
        assert facts["pooling"] in takes, (family, facts["pooling"], takes)
        tokens = facts["pooling"] in ("token", "gap")
        assert takes == (("token", "gap") if tokens else ("avg", "max")), (family, takes)
    assert own_way == ["MobileNet", "MobileNetV5", "SwinTransformer"], own_way


def test_a_keras_hub_preset_name_is_taken_as_a_handle_and_fails_offline_naming_it():
    name = "resnet_50_imagenet"
    assert name in keras_hub.models.Backbone.presets
    with pytest.raises(ExportError, match=rf"^Could not read keras-hub preset '{name}': "):
        exporter.build_feature_vector(name)


def test_efficientnet_unsaved_num_features_is_named_in_the_error(tmp_path):
    backbone_config = dict(FAMILIES["EfficientNet"]["backbone"], input_shape=(None, None, 3))
    backbone = keras_hub.models.EfficientNetBackbone(**backbone_config, num_features=24)
    backbone.save_to_preset(str(tmp_path / "effnet"))  # keras-hub 0.32 leaves num_features out.
    with pytest.raises(ExportError, match=r'needs "num_features": N added to the config'):
        exporter.build_feature_vector(str(tmp_path / "effnet"), preprocessing="raw255")
