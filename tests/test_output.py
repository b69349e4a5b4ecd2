"""What a user sees on standard error: our own lines, none of TensorFlow's (issue 25).

The CLIs' own output is checked in ``test_cli``, the recipes' in ``test_recipes``.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import foreign_lines, run_as_new_user, run_cli
from test_cli import STAGE_LINE


@pytest.fixture(scope="module")
def python_export(tmp_path_factory):
    """A feature vector exported from Python, and what that process printed."""
    out = tmp_path_factory.mktemp("python-export") / "mobilenet_v2"
    code = (
        "import sys, exporter\n"
        "exporter.enable_stage_lines()  # The documented opt-in (a library logs quietly).\n"
        "exporter.export_feature_vector('mobilenet_v2', sys.argv[1], weights='none')\n"
    )
    return out, run_as_new_user([sys.executable, "-c", code, str(out)])


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_a_python_export_prints_only_its_stage_lines(python_export):
    out, done = python_export
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines and all(STAGE_LINE.fullmatch(line) for line in lines), done.stderr
    assert not foreign_lines(done.stderr), done.stderr
    finished = [line.split(" done in ")[0] for line in lines if " done in " in line]
    assert finished[0].startswith("build mobilenet_v2") and finished[1:] == [
        "trace", "save", "verify"
    ], finished  # fmt: skip
    assert (out / "saved_model.pb").is_file()


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_exporter_embed_prints_only_its_summary(python_export, tmp_path):
    out, _ = python_export
    rng = np.random.default_rng(0)
    for index in range(3):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        tf.io.write_file(str(tmp_path / "images" / f"{index}.png"), tf.io.encode_png(pixels))
    done = run_cli(
        "embed", f"--model={out}", f"--images={tmp_path / 'images'}",
        f"--out={tmp_path / 'out' / 'vectors'}", "--image_size=32",
        env={"TF_CPP_MIN_LOG_LEVEL": None},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # Neither Beam's "apitools not found" nor its "Resource module is not available".
    assert done.stderr == "", done.stderr
    assert done.stdout.startswith("embedded 3 images, 0 failed"), done.stdout
    assert not foreign_lines(done.stdout)


def test_a_loaded_export_refuses_bad_input_without_grappler_notes(tmp_path):
    """Input checks that TensorFlow's loop optimizer has nothing to say about (issue 35):
    an assert whose message carries a float (an hparam's value) made TensorFlow guard it with
    a cond, whose Merge node grappler reports on every load ("Skipping loop optimization for
    Merge node ... AssertGuard"). A fresh process loads an export with hparams and calls it
    with good images, a bad hparam and bad images: stderr holds none of that."""
    import exporter

    model = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
         keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D()]
    )  # fmt: skip
    module = exporter.ClassifierModule(model, preprocessing="identity", num_classes=2, min_size=8)
    out = exporter.save(module, tmp_path / "model")
    code = (
        "import sys, tensorflow as tf\n"
        "obj = tf.saved_model.load(sys.argv[1])\n"
        "print(obj(tf.zeros([2, 16, 16, 3])).shape)\n"
        "for size, kwargs in ((16, {'dropout_rate': 1.5}), (4, {})):\n"
        "    try:\n"
        "        obj(tf.zeros([1, size, size, 3]), **kwargs)\n"
        "    except tf.errors.InvalidArgumentError as error:\n"
        "        print([line for line in str(error).splitlines() if 'assertion' in line][0])\n"
    )
    # TensorFlow's own C++ warnings shown (level 1), as a consumer without exporter sees them.
    done = run_as_new_user([sys.executable, "-c", code, str(out)], {"TF_CPP_MIN_LOG_LEVEL": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.splitlines()
    assert printed[0] == "(2, 2)"
    assert "Expected dropout_rate in [0, 1). Received:] [1.5]" in printed[1], printed
    assert "Expected images with height and width of at least 8 pixels" in printed[2], printed
    assert "loop_optimizer" not in done.stderr and "AssertGuard" not in done.stderr, done.stderr
