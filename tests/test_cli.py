"""The CLIs: a working export, and every failure as one line, no traceback, no change on disk."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import REPO, foreign_lines, run_cli, tree_state

import exporter
from exporter import console, progress

# A closed local port as proxy makes Keras' real ImageNet download fail fast, online or not.
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
              "NO_PROXY": "", "KERAS_HOME": "{tmp}/keras-home"}  # fmt: skip


def test_feature_vector_cli_exports_and_logs_each_stage(tmp_path):
    out = tmp_path / "nested" / "mobilenet_v2"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # As a new user runs it: no TF_CPP_MIN_LOG_LEVEL of their own (the suite sets one).
    done = run_cli(
        "feature_vector", "--backbone=mobilenet_v2", "--weights=none", f"--out={out}",
        env={"TF_CPP_MIN_LOG_LEVEL": None, "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The verified copy (exporter.checking.private_copy) is gone, though the command ends
    # without running exit handlers (cli._exit_now).
    assert not list(scratch.glob("exporter-load-*")), sorted(scratch.iterdir())
    for stage in ("build mobilenet_v2", "trace", "save", "verify"):
        assert f"{stage} done in" in done.stderr
    # Quiet by default: our stage lines and the result, none of TensorFlow's own logging.
    lines = done.stderr.splitlines()
    assert lines and all(STAGE_LINE.fullmatch(line) for line in lines), done.stderr
    assert not foreign_lines(done.stderr), done.stderr
    # --weights=none: the last line says, once, that the weights are random (issue 25).
    assert lines[-1].endswith(f"exported to {out} (random weights: its outputs carry no "
                              "meaning; for trying it out)"), lines[-1]  # fmt: skip
    assert sum("random weights" in line for line in lines) == 1
    card = (out / "assets.extra" / "model_card.md").read_text()
    assert "- **Weights**: random initialization" in card
    obj = tf.saved_model.load(str(out))
    assert obj(tf.zeros([2, 32, 32, 3])).shape == (2, 1280)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mobilenet_v2"]


# Plain: no absl prefix, no time (issue 25).
STAGE_LINE = re.compile(r"[a-z][^ ]*( [^ ]+)* (\.\.\.|done in \d+\.\d s)|exported to .+")


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_verbosity_flag_brings_tensorflow_logging_back():
    # Importing exporter sets TF_CPP_MIN_LOG_LEVEL only in our own CLIs, and not with
    # -v / --verbosity (any value). TensorFlow then loads without its C++ start-up lines in
    # Python too, but not with -v in a CLI or a level the user set. (The level is read
    # before TensorFlow loads: Keras imports jax where it is installed, which sets "1".)
    code = (
        "import os, sys; sys.orig_argv = sys.argv[1:]; import exporter; "
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL')); import exporter.making"
    )
    cases = {  # argv, the level the user set -> the level then, whether C++ lines show.
        (("python", "-m", "exporter.check", "DIR"), None): ("3", False),
        (("python", "-m", "exporter.feature_vector", "-v", "1"), None): ("None", True),
        (("python", "train.py"), None): ("None", False),
        (("python", "train.py"), "0"): ("0", True),
    }
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for (argv, level), (expected, native) in cases.items():
        env = {
            **clean,
            "PYTHONPATH": str(REPO),
            **({"TF_CPP_MIN_LOG_LEVEL": level} if level else {}),
        }
        done = subprocess.run(
            [sys.executable, "-c", code, *argv], env=env,
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )  # fmt: skip
        assert done.stdout.strip() == expected, (argv, done.stdout, done.stderr[-2000:])
        assert bool(foreign_lines(done.stderr)) == native, (argv, done.stderr[-2000:])
    assert console.verbose(["prog", "--verbosity=0"]) and not console.verbose(["prog", "-x"])
    assert not console.running_cli(["python", "-m", "pytest", "tests"])


@pytest.mark.slow  # Half a minute or more on 2 cores (docs/development.md).
def test_export_clis_run_tensorflow_without_onednn_unless_the_user_chose():
    """Its allocator keeps what verification's release frees (BUILD_NOTES); TensorFlow reads
    the variable when it loads, so importing exporter must set it first."""
    code = (
        "import os, sys; sys.orig_argv = sys.argv[1:]; import exporter; "
        "from tensorflow.python.util import _pywrap_util_port as port; "
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), port.IsMklEnabled())"
    )
    clean = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}

    def run(argv, value=None, importing="import exporter; "):
        env = {**clean, "PYTHONPATH": str(REPO)}
        env.update({"TF_ENABLE_ONEDNN_OPTS": value} if value else {})
        done = subprocess.run(
            [sys.executable, "-c", code.replace("import exporter; ", importing), *argv],
            env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    # TensorFlow's own default depends on the CPU (on for recent x86 ones).
    default = run(["python", "train.py"], importing="import tensorflow; ")
    cases = {  # argv, the value the user set -> the value then, whether oneDNN runs.
        (("python", "-m", "exporter.feature_vector", "--backbone=x"), None): "0 False",
        (("python", "-m", "exporter.classification", "-v", "1"), None): "0 False",
        (("python", "-m", "exporter.feature_vector"), "1"): "1 True",
        (("python", "-m", "exporter.embed", "--saved_model=x"), None): default,
        (("python", "train.py"), None): default,
    }
    assert default.startswith("None ")
    for (argv, value), expected in cases.items():
        assert run(argv, value) == expected, argv


def test_commands_load_tensorflow_without_the_optional_packages_it_would_import():
    """``exporter.lean_import``: in a command, TensorFlow and Keras find jax, pandas,
    matplotlib and cv2 missing while they load (each of them is installed here: the test
    extras and CI's install), and a later import of one loads it; in Python nothing changes."""
    code = (
        "import sys; sys.orig_argv = sys.argv[1:]; import exporter, tensorflow; "
        "from keras.src.trainers.data_adapters import array_slicing; "
        "from tensorflow.lite.python import util; "
        "loaded = [m for m in exporter.lean_import.SKIPPED if m in sys.modules]; "
        "finders = [type(f).__name__ for f in sys.meta_path]; "
        "import pandas; "
        "print(loaded, array_slicing.pandas is None, util._jit is None, "
        "'_SkipWhileLoading' in finders, pandas.__name__)"
    )
    cases = {  # argv -> what the process prints
        ("python", "-m", "exporter.feature_vector", "--backbone=x"): "[] True True False pandas",
        ("python", "train.py"): "['jax', 'pandas', 'matplotlib', 'cv2'] False False False pandas",
    }
    for argv, expected in cases.items():
        done = subprocess.run(
            [sys.executable, "-c", code, *argv], env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == expected, (argv, done.stdout, done.stderr[-2000:])


def test_stage_lines_are_plain_and_timed_only_when_verbose(capsys, monkeypatch):
    try:
        exporter.enable_stage_lines()  # What a Python user opts in to.
        with progress.stage("probe"):
            pass
        assert capsys.readouterr().err.splitlines() == ["probe ...", "probe done in 0.0 s"]
        monkeypatch.setattr(sys, "argv", ["prog", "-v", "0"])
        console.quiet_python_logs()  # What a CLI runs once its flags are parsed.
        with progress.stage("probe"):
            pass
    finally:
        progress.show_times(False)
        exporter.enable_stage_lines(False)
    timed = capsys.readouterr().err.splitlines()
    assert len(timed) == 2 and re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ probe \.\.\.", timed[0]), (
        timed
    )


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_classification_cli_with_labels_and_weights_file(tmp_path, weights_file):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    out = tmp_path / "classifier"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = run_cli(
        "classification", "--backbone=mobilenet_v2", f"--weights={weights_file('mobilenet_v2')}",
        "--num_classes=3", f"--labels={labels}", f"--out={out}", "--weight_decay=1e-4",
        env={"TMPDIR": str(scratch)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The verified copy kept its labels.txt while the loaded object lived; not past the end.
    assert not list(scratch.glob("exporter-load-*")), sorted(scratch.iterdir())
    assert "load weights from" in done.stderr
    assert len(tf.saved_model.load(str(out)).regularization_losses) > 50
    assert (out / "assets" / "labels.txt").read_text().splitlines() == ["cat", "dog", "bird"]
    assert tf.saved_model.load(str(out))(tf.zeros([1, 32, 32, 3])).shape == (1, 3)


def test_list_backbones_flag():
    done = run_cli("feature_vector", "--list_backbones")
    assert done.returncode == 0, done.stderr
    assert "| resnet50 | 224 | 32 | 2048 | caffe |" in done.stdout


def _failure_cases(tmp_path: Path, weights_file) -> dict:
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    wrong = weights_file("mobilenet_v2")
    out = f"--out={tmp_path / 'out'}"
    return {
        "bad flag": (["--backbone=resnet50", out, "--pooling=mean"], "pooling"),
        "unknown flag": (["--backbone=resnet50", out, "--colour=red"], "colour"),
        "unknown backbone": (["--backbone=resnet5", out, "--weights=none"],
                             "Unknown backbone 'resnet5': expected a registered name "
                             "(convnext_base, convnext_large"),
        "missing weights": (["--backbone=resnet50", out, f"--weights={tmp_path}/no.weights.h5"],
                            "Weights file not found"),
        "weights of another architecture": (["--backbone=resnet50", out, f"--weights={wrong}"],
                                            "does not fit resnet50"),
        "weights of unknown format": (["--backbone=resnet50", out, "--weights=model.pt"],
                                      "Expected weights to be 'imagenet' (Keras' own download"),
        "non-empty out": (["--backbone=mobilenet_v2", "--weights=none", f"--out={existing}"],
                          "exists and is not empty; pass --overwrite"),
        "overwrite a non-SavedModel": (["--backbone=mobilenet_v2", "--weights=none",
                                        f"--out={existing}", "--overwrite"],
                                       "not a SavedModel"),
        "missing --out": (["--backbone=mobilenet_v2"], "--out required"),
        "out under a file": (["--backbone=mobilenet_v2", "--weights=none",
                              f"--out={existing / 'notes.txt' / 'export'}"],
                             "notes.txt is a file"),
        "imagenet unreachable": (["--backbone=mobilenet_v2", out],
                                 "Could not fetch the ImageNet weights of mobilenet_v2"),
    }  # fmt: skip


CASES = [
    "bad flag", "unknown flag", "unknown backbone", "missing weights",
    "weights of another architecture", "weights of unknown format", "non-empty out",
    "overwrite a non-SavedModel", "missing --out", "out under a file", "imagenet unreachable",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_cli_failure_is_one_line_and_changes_nothing(tmp_path, weights_file, case):
    flags, message = _failure_cases(tmp_path, weights_file)[case]
    env = {k: v.format(tmp=tmp_path) for k, v in NO_NETWORK.items()}
    before = tree_state(tmp_path)
    done = run_cli("feature_vector", *flags, env=env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert message in done.stderr, done.stderr[-2000:]
    assert last.startswith("error: ") and message in last, last
    after = tree_state(tmp_path)
    after = {k: v for k, v in after.items() if not k.startswith("keras-home")}
    assert after == before


def test_classification_cli_refuses_wrong_label_count(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    before = tree_state(tmp_path)
    done = run_cli(
        "classification", "--backbone=mobilenet_v2", "--weights=none", "--num_classes=3",
        f"--labels={labels}", f"--out={tmp_path / 'out'}",
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "Expected one label per class (3 for mobilenet_v2). Received 2 labels." in done.stderr
    assert tree_state(tmp_path) == before


def test_classification_cli_refuses_headless_weights_for_own_classifier(tmp_path, weights_file):
    before = tree_state(tmp_path)
    done = run_cli(
        "classification", "--backbone=mobilenet_v2",
        f"--weights={weights_file('mobilenet_v2')}", f"--out={tmp_path / 'out'}",
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "does not fit mobilenet_v2" in last and "include_top=True" in last
    assert tree_state(tmp_path) == before


def test_library_errors_name_python_arguments_and_the_cli_names_flags(tmp_path):
    """A Python user is told ``overwrite=True`` and ``weights="none"``, never a flag; the CLI
    translates the same message into its flags (its cases above check the CLI side)."""
    import exporter

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    module = exporter.build_feature_vector("mobilenet_v2", weights=None)
    with pytest.raises(exporter.ExportError, match="pass overwrite=True to replace it") as raised:
        exporter.save(module, existing)
    assert "--" not in str(raised.value)
    message = (
        "Could not fetch the ImageNet weights of resnet50 (offline). Nothing was written. Use "
        'weights="none" for random initialization, or weights=PATH for a .weights.h5 file; '
        "pass overwrite=True, or allow_unsafe_ops=True. Expected out=/tmp/x inside a directory."
    )
    names = ("out", "weights", "overwrite", "allow_unsafe_ops")
    assert console.as_flags(message, names) == (
        "Could not fetch the ImageNet weights of resnet50 (offline). Nothing was written. Use "
        "--weights=none for random initialization, or --weights=PATH for a .weights.h5 file; "
        "pass --overwrite, or --allow_unsafe_ops. Expected --out=/tmp/x inside a directory."
    )
    # Never inside a path, and only the names a CLI has as flags.
    kept = "Expected out=/data/out=3/x; hparams weights=0.5"
    assert console.as_flags(kept, ("out",)) == "Expected --out=/data/out=3/x; hparams weights=0.5"


def test_offline_imagenet_in_python_names_the_argument(tmp_path, monkeypatch):
    import exporter

    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    with pytest.raises(exporter.ExportError, match='Use weights="none" for random') as raised:
        exporter.build_feature_vector("mobilenet_v2", weights="imagenet")
    assert "--weights" not in str(raised.value)
