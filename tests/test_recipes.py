"""The recipes run end to end on a tiny image folder made here."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, foreign_lines, run_as_new_user
from test_cli import NO_NETWORK

CLASSES = ("cat", "dog")


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for index, name in enumerate(CLASSES):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 128, (48, 48, 3), dtype=np.uint8) + 100 * index
            png = tf.io.encode_png(tf.constant(pixels.astype(np.uint8)))
            tf.io.write_file(str(tmp_path / "data" / name / f"{i}.png"), png)
    return tmp_path / "data"


@pytest.mark.slow  # Half a minute or more on 2 cores (docs/development.md).
def test_finetune_and_export_recipe(image_folder, tmp_path):
    out = tmp_path / "exports"
    command = [
        sys.executable, "recipes/finetune_and_export.py", f"--data_dir={image_folder}",
        f"--out_dir={out}", "--backbone=mobilenet_v2", "--weights=none", "--image_size=48",
        "--epochs=2", "--batch_size=4",
    ]  # fmt: skip
    done = run_as_new_user(command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Epoch 2/2" in done.stdout + done.stderr
    # Our stage lines, Keras' epochs, the paths: none of TensorFlow's own lines (issue 25).
    assert not foreign_lines(done.stdout + done.stderr), done.stdout + done.stderr
    assert done.stdout.splitlines()[-2:] == [
        f"exported {out / 'feature_vector'}",
        f"exported {out / 'classifier'}",
    ]
    classifier = tf.saved_model.load(str(out / "classifier"))
    feature_vector = tf.saved_model.load(str(out / "feature_vector"))
    images = tf.random.uniform([3, 48, 48, 3])
    assert classifier(images).shape == (3, len(CLASSES))
    assert feature_vector(images).shape == (3, 1280)
    labels = Path(classifier.labels_file.asset_path.numpy().decode())
    assert labels.read_text().splitlines() == list(CLASSES)
    # Its head's HeadDropout makes dropout_rate an hparam; MobileNetV2 brings the momentum.
    parameters = inspect.signature(classifier.__call__).parameters
    assert parameters["dropout_rate"].default == 0.2
    assert parameters["batch_norm_momentum"].default == 0.999


def test_finetune_and_export_recipe_without_reachable_weights_says_so_in_one_line(
    image_folder, tmp_path
):
    command = [
        sys.executable, "recipes/finetune_and_export.py", f"--data_dir={image_folder}",
        f"--out_dir={tmp_path / 'exports'}", "--image_size=48",
    ]  # fmt: skip
    done = run_as_new_user(command, NO_NETWORK | {"KERAS_HOME": str(tmp_path / "keras-home")})
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert not foreign_lines(done.stderr.replace(lines[-1], "")), done.stderr  # No traceback.
    assert lines[-1].startswith("error: Could not fetch the ImageNet weights of mobilenet_v2")
    assert "Use --weights=none for random initialization" in lines[-1], lines[-1]
    assert len(lines) <= 2, done.stderr  # The stage line that failed, then the error.
    assert not (tmp_path / "exports").exists()


@pytest.mark.slow  # Half a minute or more on 2 cores (docs/development.md).
def test_export_reproduces_the_finetuned_keras_model(image_folder, tmp_path):
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        import finetune_and_export as recipe
    finally:
        sys.path.remove(str(REPO / "recipes"))
    model, body, head, names = recipe.finetune(
        image_folder, backbone="efficientnet_b0", weights="none", image_size=48,
        epochs=1, batch_size=4,
    )  # fmt: skip
    paths = recipe.export(body, head, names, tmp_path / "out", backbone="efficientnet_b0")
    classifier = tf.saved_model.load(str(paths[1]))
    pixels = np.random.default_rng(1).integers(0, 256, (2, 48, 48, 3)).astype(np.float32)
    expected = model(pixels, training=False)
    actual = classifier(tf.constant(pixels / 255.0))
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def _finetune_export(*flags: str):
    done = run_as_new_user([sys.executable, "recipes/finetune_export.py", *flags])
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert not foreign_lines(output), output  # Only our own lines (issue 25).
    return output


@pytest.mark.slow  # Half a minute or more on 2 cores (docs/development.md).
def test_finetune_export_recipe_resumes_and_re_exports_a_conforming_classifier(
    export, image_folder, tmp_path
):
    from exporter.checking import conformance

    # An export as `python -m exporter.feature_vector` makes it (the fixture shares one).
    source = export("feature_vector", "mobilenet_v2", "none")
    out = tmp_path / "out"
    flags = [f"--export={source}", f"--data_dir={image_folder}", f"--out_dir={out}",
             "--image_size=48", "--batch_size=4"]  # fmt: skip
    first = _finetune_export(*flags, "--epochs=1")
    assert "Resuming" not in first and "Wrote the classifier" in first
    assert (out / "checkpoints" / "epoch-1.keras").is_file()
    # Restarted with more epochs, it resumes from the last checkpoint.
    second = _finetune_export(*flags, "--epochs=2", "--overwrite")
    assert "Resuming from" in second and "epoch-1.keras" in second
    assert "Epoch 2/2" in second and "Epoch 1/2" not in second
    assert (out / "checkpoints" / "epoch-2.keras").is_file()
    report = conformance.check(out / "classifier", strict_metadata=True)
    assert report.ok, report.to_text()
    classifier = tf.saved_model.load(str(out / "classifier"))
    labels = Path(classifier.labels_file.asset_path.numpy().decode())
    assert labels.read_text().splitlines() == list(CLASSES)
    assert classifier(tf.random.uniform([2, 48, 48, 3])).shape == (2, len(CLASSES))
    # The new Dense layer's L2 kernel regularizer travels as a regularization loss.
    assert len(classifier.regularization_losses) == 1


@pytest.mark.slow  # Two recipe processes training together.
def test_finetune_export_recipe_multi_worker_only_the_chief_writes(image_folder, tmp_path):
    import json

    import keras
    from test_distributed import TIMEOUT, _free_ports
    from test_keras_layer import tiny_backbone

    import exporter
    from exporter.checking import conformance

    keras.utils.set_random_seed(0)
    module = exporter.FeatureVectorModule(tiny_backbone(), preprocessing="identity")
    source = exporter.save(module, tmp_path / "tiny")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        command = [
            sys.executable, "recipes/finetune_export.py", f"--export={source}",
            f"--data_dir={image_folder}", f"--out_dir={tmp_path / f'w{index}'}",
            "--strategy=multi_worker", "--fine_tune", "--epochs=2", "--batch_size=4",
            "--image_size=32",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(config)}
        processes.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"worker timed out: {process.communicate()[0][-3000:]}")
        assert process.returncode == 0, outputs[-1][-3000:]
    assert all("Epoch 2/2" in output for output in outputs)
    assert not (tmp_path / "w1").exists()  # Only the chief writes.
    assert (tmp_path / "w0" / "checkpoints" / "epoch-2.keras").is_file()
    report = conformance.check(tmp_path / "w0" / "classifier", strict_metadata=True)
    assert report.ok, report.to_text()
