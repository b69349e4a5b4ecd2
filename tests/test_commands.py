"""What every command shares (issue 35): --help, usage errors before TensorFlow loads, exit
statuses, and what a bare ``import exporter`` does. Cheap: usage errors import no TensorFlow,
so each subprocess here takes a fraction of a second."""

import json
import logging
import sys
import time
import unittest

import keras
import pytest
from conftest import REPO, run_as_new_user, run_cli

import exporter
from exporter import command, console, progress

# Every flag each command takes, as docs/command-line.md lists them.
EXPORT_FLAGS = (
    "backbone", "out", "weights", "weight_decay", "overwrite", "serving_inputs", "serving_size",
    "compute_dtype", "preprocessing", "native_size", "min_size", "list_backbones",
)  # fmt: skip
OWN_FLAGS = {
    "feature_vector": (*EXPORT_FLAGS, "pooling"),
    "classification": (*EXPORT_FLAGS, "num_classes", "labels", "dropout_rate"),
    "convert": ("to", "out", "quantize", "size", "overwrite", "allow_unsafe_ops"),
    "embed": (
        "model",
        "images",
        "out",
        "batch_size",
        "image_size",
        "format",
        "top_k",
        "max_pixels",
        "runner",
        "allow_unsafe_ops",
    ),  # fmt: skip
    "check": ("task", "json", "allow_unsafe_ops", "list_rules", "timeout_s", "memory_limit_gib"),
}


def _timed(module: str, *flags: str):
    start = time.perf_counter()
    done = run_cli(module, *flags, timeout=120)
    return done, time.perf_counter() - start


@pytest.mark.parametrize("module", list(OWN_FLAGS))
def test_help_lists_every_flag_of_the_command_and_exits_0(module):
    done, seconds = _timed(module, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    listed = {line.split(":")[0].strip() for line in done.stdout.splitlines() if "  --" in line}
    names = {name.removeprefix("--").removeprefix("[no]") for name in listed}
    assert set(OWN_FLAGS[module]) <= names, sorted(set(OWN_FLAGS[module]) - names)
    # absl's and TensorFlow's own flags stay in --helpfull.
    assert "verbosity" not in names and "--helpfull" in done.stdout
    assert seconds < 5, f"--help took {seconds:.1f} s: something slow was imported"


USAGE_ERRORS = {
    "flag typo": ("feature_vector", ["--backbone=resnet50", "--out=x", "--poolin=max"],
                  "error: Unknown command line flag 'poolin'. Did you mean: pooling ?"),
    "num_classes=0": ("classification", ["--backbone=resnet50", "--out=x", "--num_classes=0"],
                      "error: flag --num_classes=0: 0 is not a positive integer; see --help."),
    "missing --out": ("classification", ["--backbone=resnet50"],
                      "error: --out required; see --help."),
    "bad pooling": ("feature_vector", ["--backbone=resnet50", "--out=x", "--pooling=mean"],
                    "error: flag --pooling=mean: value should be one of <avg|max|token|gap>"),
    "stray argument": ("feature_vector", ["--backbone=resnet50", "out"],
                       "error: unexpected arguments ['out']"),
    "convert without --to": ("convert", ["export", "--out=x.onnx"],
                             "error: --to required; see --help."),
    "convert typo": ("convert", ["export", "--to=onnx", "--out=x", "--quantise=none"],
                     "error: Unknown command line flag 'quantise'"),
    "embed missing flags": ("embed", ["--images=x"],
                            "error: --model and --out required; see --help."),
}  # fmt: skip


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_a_usage_error_is_one_line_and_exit_2_in_well_under_a_second(case, tmp_path):
    module, flags, message = USAGE_ERRORS[case]
    done, seconds = _timed(module, *flags)
    assert done.returncode == command.USAGE_ERROR, done.stderr[-2000:]
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert seconds < 2, f"{case}: {seconds:.1f} s (TensorFlow imported before the flags?)"


def test_check_usage_error_is_one_line_one_json_object_and_exit_2():
    done, seconds = _timed("check", "--task=foo", "--json", "model")
    assert done.returncode == command.USAGE_ERROR, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert json.loads(done.stdout)["ok"] is False
    assert seconds < 2, seconds


def test_an_embed_flag_typo_is_one_line_without_beams_warning():
    done = run_cli("embed", "--model=m", "--images=i", "--out=o", "--direct_num_worker=2")
    assert done.returncode == command.USAGE_ERROR
    assert done.stderr == (
        "error: unknown flags ['--direct_num_worker']: neither ours nor Beam pipeline options.\n"
    ), done.stderr


def test_exit_statuses_are_the_documented_ones():
    assert (command.SUCCESS, command.FAILED, command.USAGE_ERROR, command.INTERRUPTED) == (
        0, 1, 2, 130,
    )  # fmt: skip
    page = (REPO / "docs" / "command-line.md").read_text()
    for status in ("`0`", "`1`", "`2`", "`130`"):
        assert status in page, status


def test_a_bare_import_is_cheap_and_the_public_names_resolve():
    code = (
        "import logging, sys\n"
        "import exporter\n"
        "assert 'tensorflow' not in sys.modules, 'import exporter loaded TensorFlow'\n"
        "from exporter.checking import conformance  # TensorFlow's first import: filtered.\n"
        "log = logging.getLogger('exporter')\n"
        "printing = [h for h in log.handlers if not isinstance(h, logging.NullHandler)]\n"
        "assert not printing and log.propagate, (log.handlers, log.propagate)\n"
        "from exporter import KerasLayer, export_feature_vector, ExportError\n"
        "assert exporter.get_backbone('resnet50').num_features == 2048\n"
        "assert set(exporter.__all__) <= set(dir(exporter))\n"
        "assert exporter.making.preprocessing.Affine  # A subpackage, as an attribute.\n"
        "import tensorflow as tf; tf.constant(1.0) + 1.0  # The first op: no cuInit line.\n"
        "print(all(getattr(exporter, name) is not None for name in exporter.__all__))\n"
    )
    done = run_as_new_user([sys.executable, "-c", code], timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
    assert done.stderr == "", done.stderr  # Nothing of TensorFlow's, nothing of ours.
    with pytest.raises(AttributeError, match="no attribute 'export_feature_vectors'"):
        exporter.export_feature_vectors  # noqa: B018


def test_our_records_reach_assertlogs_and_caplog_and_the_opt_in_prints_them(caplog, capsys):
    with unittest.TestCase().assertLogs("exporter", level="INFO") as seen, progress.stage("probe"):
        pass
    assert seen.output == ["INFO:exporter:probe ...", "INFO:exporter:probe done in 0.0 s"]
    caplog.set_level(logging.INFO, logger="exporter")
    with progress.stage("probe"):
        pass
    assert [r.getMessage() for r in caplog.records if r.name == "exporter"][-1].startswith(
        "probe done in"
    )
    assert capsys.readouterr().err == ""  # Nothing printed without the opt-in.
    try:
        exporter.enable_stage_lines()
        with progress.stage("probe"):
            pass
        assert capsys.readouterr().err.splitlines() == ["probe ...", "probe done in 0.0 s"]
        assert not logging.getLogger("exporter").propagate  # Not printed twice.
    finally:
        exporter.enable_stage_lines(False)
    assert logging.getLogger("exporter").propagate


def test_litert_delegate_line_is_filtered_as_native():
    assert console.is_native_log(b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert not console.is_native_log(b"INFO: our own line\n")


def test_jax_default_log_level_is_not_taken_for_the_users_choice():
    jax = {"jax": object()}
    level = {"TF_CPP_MIN_LOG_LEVEL": "1"}
    # import jax sets "1" with setdefault: the process did not start with it.
    assert console.user_level(level, jax, initial={}) is None
    assert console.user_level(level, jax, initial=level) == "1"  # The user's own "1".
    assert console.user_level({"TF_CPP_MIN_LOG_LEVEL": "2"}, jax, initial={}) == "2"
    assert console.user_level(level, {}, initial={}) == "1"  # No jax: theirs.
    assert console.user_level({}, jax, initial={}) is None


# -- every choice checked against the backbone, before anything slow ------------------------


def _features_model(path):
    model = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(16, 3),
         keras.layers.GlobalAveragePooling2D()]
    )  # fmt: skip
    model.save(path)
    return path


@pytest.mark.parametrize(
    "backbone, pooling, takes",
    [("mobilenet_v2", "token", "one of avg, max for mobilenet_v2"),
     ("resnet50", "gap", "one of avg, max for resnet50")],
)  # fmt: skip
def test_a_pooling_the_backbone_does_not_take_is_refused_in_python(
    tmp_path, backbone, pooling, takes
):
    with pytest.raises(exporter.ArgumentError, match=takes) as raised:
        exporter.export_feature_vector(backbone, tmp_path / "out", weights="none", pooling=pooling)
    assert f'Received: pooling="{pooling}"' in str(raised.value) and "--" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_a_keras_file_of_features_takes_no_pooling_and_its_card_claims_none(tmp_path):
    path = _features_model(tmp_path / "features.keras")
    with pytest.raises(exporter.ArgumentError, match=r"output \[batch, 16\] is already a feature"):
        exporter.build_feature_vector(str(path), pooling="token", preprocessing="identity")
    module = exporter.build_feature_vector(str(path), preprocessing="identity", native_size=32)
    assert module.pooling == "none" and "pooled" not in module.bottleneck, module.bottleneck
    assert module.bottleneck == "the model's own output (16 features), used as it is"
    # Your own model of features, from Python: the card claims no pooling either.
    own = exporter.FeatureVectorModule(keras.saving.load_model(path), preprocessing="identity")
    assert (own.pooling, own.bottleneck) == (module.pooling, module.bottleneck)


def test_dtype_and_weights_a_keras_file_cannot_take_are_refused_before_it_loads(tmp_path):
    path = _features_model(tmp_path / "features.keras")
    out = tmp_path / "out"
    cases = {
        "compute_dtype='float32' for a keras-hub preset or a .keras file": dict(
            compute_dtype="bfloat16"
        ),
        "A .keras file carries its own weights": dict(weights="other.weights.h5"),
    }
    for message, kwargs in cases.items():
        with pytest.raises(exporter.ArgumentError, match=message):
            exporter.export_feature_vector(str(path), out, preprocessing="identity", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.keras"]


def test_a_wrong_pooling_from_the_cli_is_one_line_exit_2_and_nothing_written(tmp_path):
    out = tmp_path / "out"
    done = run_cli(
        "feature_vector", "--backbone=mobilenet_v2", "--weights=none", "--pooling=token",
        f"--out={out}",
    )  # fmt: skip
    assert done.returncode == command.USAGE_ERROR, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "error: Expected pooling to be one of avg, max for mobilenet_v2 (a global pooling of "
        "its last feature map). Received: --pooling=token."
    ], done.stderr
    assert list(tmp_path.iterdir()) == []


def test_serving_size_without_image_bytes_is_refused_before_the_build(tmp_path, monkeypatch):
    from exporter.making import build

    monkeypatch.setattr(build, "load_backbone", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(exporter.ArgumentError, match="add image_bytes to serving_inputs"):
        exporter.export_feature_vector(
            "mobilenet_v2", tmp_path / "out", weights="none", serving_size=64
        )
    with pytest.raises(exporter.ArgumentError, match="at least 32 .mobilenet_v2's min_size"):
        exporter.export_feature_vector(
            "mobilenet_v2", tmp_path / "out", weights="none", serving_size=8,
            serving_inputs="image_bytes",
        )  # fmt: skip


def test_weights_of_another_architecture_are_named_in_one_sentence(weights_file):
    with pytest.raises(exporter.ExportError) as raised:
        exporter.build_feature_vector("resnet50", weights=weights_file("mobilenet_v2"))
    message = str(raised.value)
    assert "\n" not in message and not message.endswith(":"), message
    assert "does not fit resnet50: its layer conv1_conv expects 2 weights (kernel, bias), the " \
        "file has 1 for it" in message, message  # fmt: skip


def test_an_offline_handle_says_so_naming_the_host():
    from exporter.making import presets

    try:  # What requests raises offline (urllib3's NameResolutionError inside).
        try:
            raise OSError("[Errno -2] Name or service not known")
        except OSError as inner:
            raise ConnectionError(
                "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded "
                "with url: /v1/x (Caused by NameResolutionError(...))"
            ) from inner
    except ConnectionError as error:
        reason = presets.offline_reason(error)
    assert reason == (
        "cannot download it: no network (api.kaggle.com cannot be reached). Connect, or export "
        "a preset folder that keras-hub's save_to_preset wrote."
    )
    assert presets.offline_reason(ValueError("no config.json")) is None
