"""The conformance checker: no false alarms, each broken model caught by its own rule."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import CORE, random_images, run_cli, tiered
from test_unsafe_models import _Writer  # The hostile model of every unsafe-path test.

import exporter
from exporter.checking import conformance

EXPORTS = [("feature_vector", {}), ("classification", {}), ("classification", {"labels": True})]


def _export_for(export, name, task, options):
    if options.get("labels"):
        # test_export.py's new head with labels: for EfficientNetB0, the same export, made once.
        return export(task, name, "none", num_classes=5, labels=[f"class_{i}" for i in range(5)])
    return export(task, name, "file" if task == "classification" else "none")


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.parametrize("task, options", EXPORTS, ids=["feature_vector", "own_head", "labels"])
@pytest.mark.parametrize("name", tiered(CORE))
def test_no_false_alarms_on_our_exports(export, name, task, options):
    report = conformance.check(_export_for(export, name, task, options), strict_metadata=True)
    assert report.failed() == [], report.to_text()
    assert [r.rule for r in report.results if r.status == conformance.WARN] == []
    assert report.task == ("image_feature_vector" if task == "feature_vector" else
                           "image_classification")  # fmt: skip


def test_cli_exit_zero_and_json_lists_every_rule(export):
    done = run_cli("check", str(export("feature_vector", "mobilenet_v2", "none")), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = json.loads(done.stdout)
    assert parsed["ok"] is True
    assert [r["rule"] for r in parsed["rules"]] == list(conformance.RULES)
    assert {r["status"] for r in parsed["rules"]} == {"pass"}


# -- a catalogue of broken SavedModels, one per rule ----------------------------------------

GOOD_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32)


class _Model(tf.Module):
    variables = None
    trainable_variables = None


def _forward(model, images, training, broken):
    if broken == "bad_images_refused" and images.dtype != tf.float32:  # Silently converted.
        images = tf.ensure_shape(tf.cast(images, tf.float32) / 255.0, [None, None, None, 3])
    if broken == "input_dtype":
        images = tf.cast(images, tf.float32) / 255.0
    if broken == "input_layout":
        images = tf.transpose(images, [0, 2, 3, 1])
    x = tf.einsum("bhwc,cd->bhwd", images, model.kernel)
    if broken == "output_shape":
        return x  # The feature map, not pooled.
    if broken == "size_independent":
        pooled = tf.reshape(tf.nn.avg_pool2d(x, 32, 32, "VALID"), [tf.shape(x)[0], -1])
    else:
        pooled = tf.reduce_mean(x, [1, 2])
    if training:
        model.moving.assign(0.9 * model.moving + 0.1 * tf.reduce_mean(x, [0, 1, 2]))
        out = pooled
    else:
        out = pooled - tf.reduce_mean(model.moving)
    if broken == "batch_independent":
        out = out - tf.reduce_mean(out, 0, keepdims=True)
    if broken == "deterministic":
        out = out + 1e-5 * tf.reduce_max(tf.abs(out)) * tf.random.uniform(tf.shape(out))
    if broken == "output_dtype":
        out = tf.cast(out, tf.float16)
    if broken == "training_call" and training:
        out = tf.concat([out, out], -1)
    return out


def _broken(broken: str, directory: Path) -> Path:
    """Save a small image feature vector model that breaks exactly the rule ``broken``."""
    spec = {
        "input_dtype": tf.TensorSpec([None, None, None, 3], tf.uint8),
        "input_layout": tf.TensorSpec([None, 3, None, None], tf.float32),
        "input_batch": tf.TensorSpec([1, None, None, 3], tf.float32),
    }.get(broken, GOOD_SPEC)
    takes_training = broken != "training_argument"

    def call(self, images, training=False):
        return _forward(self, images, training, broken)

    def call_without_training(self, images):
        return _forward(self, images, False, broken)

    def call_with_a_literal_hparam(self, images, training=False, dropout_rate=0.1):
        return _forward(self, images, training, broken)  # dropout_rate traced as 0.1 itself.

    members = {}
    if broken != "callable":
        function = call if takes_training else call_without_training
        function = call_with_a_literal_hparam if broken == "hparams" else function
        members["__call__"] = tf.function(function, autograph=False)
    model = type("Broken", (_Model,), members)()
    rng = np.random.default_rng(0)
    model.kernel = tf.Variable(rng.normal(size=(3, 8)).astype("float32"), name="kernel")
    model.moving = tf.Variable(tf.zeros([8]), trainable=False, name="moving_mean")
    if broken != "variables":
        model.variables = [model.moving] if broken == "variables_subset" else [
            model.kernel, model.moving]  # fmt: skip
        model.trainable_variables = [model.kernel]
        if broken == "trainable_flags":
            model.trainable_variables = [model.kernel, model.moving]
    kernel = model.kernel
    loss = (lambda: kernel[0]) if broken == "regularization_losses" else (
        lambda: 0.01 * tf.reduce_sum(kernel**2))  # fmt: skip
    model.regularization_losses = [tf.function(loss, input_signature=[])]
    if "__call__" in members:
        for training in [False] if broken == "training_traced" else [False, True]:
            if takes_training:
                model.__call__.get_concrete_function(spec, training=training)
            else:
                model.__call__.get_concrete_function(spec)
            if broken == "bad_images_refused":  # A trace that takes uint8 of any shape.
                model.__call__.get_concrete_function(
                    tf.TensorSpec(None, tf.uint8), training=training
                )

    @tf.function(input_signature=[spec])
    def serve(images):
        out = _forward(model, images, False, broken)
        return {"feature_vector": out * 2.0 if broken == "serving_default" else out}

    signatures = {} if broken == "serving_default_missing" else {"serving_default": serve}
    if broken == "labels":
        labels = directory.parent / "labels.txt"
        labels.write_text("one\ntwo\nthree\n")
        model.labels_file = tf.saved_model.Asset(str(labels))
    tf.saved_model.save(model, str(directory), signatures=signatures)
    if broken == "no_tfhub_module_pb":
        (directory / "tfhub_module.pb").write_bytes(b"")
    if broken == "file_names":
        (directory / "assets" / ".DS_Store").write_bytes(b"")
    if broken == "loads":
        shutil.rmtree(directory / "variables")
    return directory


# broken variant -> the one rule that must fail
CATALOGUE = {
    "no_tfhub_module_pb": "no_tfhub_module_pb",
    "file_names": "file_names",
    "loads": "loads",
    "callable": "callable",
    "training_argument": "training_argument",
    "training_traced": "training_traced",
    "hparams": "hparams",
    "input_dtype": "input_dtype",
    "input_layout": "input_layout",
    "input_batch": "input_batch",
    "bad_images_refused": "bad_images_refused",
    "output_dtype": "output_dtype",
    "output_shape": "output_shape",
    "size_independent": "size_independent",
    "batch_independent": "batch_independent",
    "deterministic": "deterministic",
    "variables": "variables",
    "variables_subset": "variables",
    "trainable_flags": "trainable_flags",
    "regularization_losses": "regularization_losses",
    "serving_default": "serving_default",
    "labels": "labels",
    "training_call": "training_call",
}


def test_the_good_variant_passes(tmp_path):
    report = conformance.check(_broken("nothing", tmp_path / "model"))
    assert report.failed() == [], report.to_text()
    # Its einsum takes the raw pixels: input_range (issue 21) warns, as on any such model.
    # TensorFlow's "Could not find matching concrete function" refuses its bad images, and
    # says "Expected these arguments to match": bad_images_refused passes.
    warned = [r.rule for r in report.results if r.status == "warn"]
    assert warned == ["input_range", "metadata"]


@pytest.mark.parametrize("broken", ["nothing", "trainable_flags"])
def test_checking_leaves_the_variables_as_they_were(tmp_path, broken):
    """training_call's forward pass updates the moving statistics; the check puts them back
    (also when trainable_variables wrongly lists them)."""
    path = _broken(broken, tmp_path / "model")
    loaded = tf.saved_model.load(str(path))
    before = [v.numpy() for v in loaded.variables]
    assert np.any(np.asarray(loaded(random_images(2, 32), training=True)))
    moved = [v.numpy() for v in loaded.variables]
    assert not np.array_equal(moved[1], before[1])  # The moving mean did move...
    loaded.variables[1].assign(before[1])
    conformance.check(path, loaded=loaded)
    for variable, value in zip(loaded.variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)  # ...and the check put it back.


@pytest.mark.parametrize("broken", sorted(CATALOGUE))
def test_each_broken_model_fails_exactly_its_rule(tmp_path, broken):
    path = _broken(broken, tmp_path / "model")
    task = "image_classification" if broken == "labels" else None
    report = conformance.check(path, task=task)
    assert report.failed() == [CATALOGUE[broken]], report.to_text()


def test_catalogue_covers_at_least_twelve_rules():
    assert len(set(CATALOGUE.values())) >= 12
    assert set(CATALOGUE.values()) <= set(conformance.RULES)


def test_broken_model_exits_one_on_the_cli(tmp_path):
    done = run_cli("check", str(_broken("batch_independent", tmp_path / "model")))
    assert done.returncode == 1
    assert "FAIL  batch_independent" in done.stdout


def test_metadata_that_disagrees_with_our_export(export, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(export("feature_vector", "mobilenet_v2", "none"), copy)
    path = copy / "assets.extra" / "metadata.json"
    facts = json.loads(path.read_text())
    facts["num_features"] += 1
    path.write_text(json.dumps(facts))
    report = conformance.check(copy)
    assert report.failed() == ["metadata"], report.to_text()
    assert "num_features is 1281, the model outputs 1280" in report.to_text()


@pytest.mark.parametrize("change", ["default", "missing"])
def test_metadata_hparams_must_match_the_call_signature(export, tmp_path, change):
    copy = tmp_path / "model"
    shutil.copytree(export("feature_vector", "mobilenet_v2", "none"), copy)
    path = copy / "assets.extra" / "metadata.json"
    facts = json.loads(path.read_text())
    if change == "default":
        facts["hparams"]["batch_norm_momentum"]["default"] = 0.9
        expected = "hparam batch_norm_momentum defaults to 0.999, metadata says 0.9"
    else:
        facts["hparams"] = {}
        expected = "hparams [] but __call__ takes ['batch_norm_momentum']"
    path.write_text(json.dumps(facts))
    report = conformance.check(copy)
    assert report.failed() == ["metadata"], report.to_text()
    assert expected in report.to_text()


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.parametrize("change", ["graph", "added", "malformed"])
def test_fingerprint_detects_changes_that_still_load_and_run(export, tmp_path, change):
    from tensorflow.core.protobuf import saved_model_pb2

    copy = tmp_path / "model"
    shutil.copytree(export("feature_vector", "mobilenet_v2", "none"), copy)
    if change == "graph":  # A valid graph, one string edited: every other rule passes.
        pb = copy / "saved_model.pb"
        proto = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
        proto.meta_graphs[0].meta_info_def.tensorflow_git_version = "edited"
        pb.write_bytes(proto.SerializeToString())
        expected = "the files changed since the export: saved_model.pb changed"
    elif change == "added":
        (copy / "variables" / "extra.txt").write_text("not a shard")
        expected = "variables/extra.txt was added"
    else:
        path = copy / "assets.extra" / "metadata.json"
        facts = json.loads(path.read_text())
        facts["fingerprint"]["files"]["saved_model.pb"] = "0" * 64  # Digest no longer covers it.
        path.write_text(json.dumps(facts))
        expected = "the recorded fingerprint is malformed"
    report = conformance.check(copy)
    assert report.failed() == ["fingerprint"], report.to_text()
    assert expected in report.to_text()
    done = run_cli("check", str(copy))
    assert done.returncode == 1 and "FAIL  fingerprint" in done.stdout, done.stdout[-2000:]


def test_metadata_without_a_fingerprint_warns(export, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(export("feature_vector", "mobilenet_v2", "none"), copy)
    path = copy / "assets.extra" / "metadata.json"
    facts = json.loads(path.read_text())
    del facts["fingerprint"]
    path.write_text(json.dumps(facts))
    report = conformance.check(copy)
    assert report.ok and [r.rule for r in report.results if r.status == "warn"] == [
        "fingerprint"
    ], report.to_text()
    assert conformance.check(copy, strict_metadata=True).failed() == ["fingerprint"]


def test_exporter_refuses_a_model_that_breaks_a_rule(tmp_path):
    inputs = keras.Input((None, None, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    leaky = keras.layers.Lambda(lambda f: f - keras.ops.mean(f, axis=0, keepdims=True))(features)
    module = exporter.FeatureVectorModule(keras.Model(inputs, leaky), preprocessing="identity")
    with pytest.raises(exporter.ExportError, match="rule batch_independent"):
        exporter.save(module, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def _amplifier(leak: float) -> keras.Model:
    """A small model that amplifies rounding without bound, as deep random networks do.

    Forty steps of the logistic map at 3.99 double any difference each step, so moving the
    pixels by one part in a million ends as a difference of order 1. ``leak`` adds that
    fraction of the batch mean to every pooled feature: 1e-6 is a leak no larger than
    rounding. Through such a model no leak can be told from rounding
    (test_exporter_refuses_a_model_that_breaks_a_rule keeps a leak in a model that does not
    amplify a failure).
    """

    def chaos(pooled):
        shared = pooled + leak * keras.ops.mean(pooled, axis=0, keepdims=True)
        y = keras.ops.sigmoid(shared)
        for _ in range(40):
            y = 3.99 * y * (1.0 - y)
        return y

    inputs = keras.Input((None, None, 3))
    keras.utils.set_random_seed(3)
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Lambda(chaos)(features))


def test_batch_independence_cannot_be_judged_through_amplified_rounding(tmp_path):
    # As EfficientNetV2-M and -L with --weights=none (a one-step nudge of every pixel moves
    # L's output by 0.8 of its scale): the rule warns instead of refusing the export.
    module = exporter.FeatureVectorModule(_amplifier(1e-6), preprocessing="identity")
    path = exporter.save(module, tmp_path / "model")
    result = {r.rule: r for r in conformance.check(path).results}["batch_independent"]
    assert result.status == "warn", result
    assert "cannot tell" in result.message and "amplifies rounding" in result.message, result


# -- safety ------------------------------------------------------------------------------


def test_unsafe_model_is_refused_before_it_runs(tmp_path):
    target = tmp_path / "written-by-model.txt"
    path = tmp_path / "model"
    tf.saved_model.save(_Writer(str(target)), str(path))
    assert not target.exists()  # Saving traces; it never ran the op.
    done = run_cli("check", str(path))
    assert done.returncode == 1
    assert "FAIL  safe_ops" in done.stdout and "WriteFile" in done.stdout
    assert "SKIP  loads" in done.stdout
    assert not target.exists()
    # The scan is what stands between the check and the write.
    run_cli("check", str(path), "--allow_unsafe_ops")
    assert target.read_text() == "pwned"


def test_scan_finds_python_ops(tmp_path):
    class PyModel(tf.Module):
        @tf.function(input_signature=[GOOD_SPEC])
        def __call__(self, images):
            return tf.py_function(lambda x: x, [images], tf.float32)

    tf.saved_model.save(PyModel(), str(tmp_path / "model"))
    report = conformance.check(tmp_path / "model")
    assert report.failed() == ["safe_ops"]
    assert "EagerPyFunc" in report.to_text()


def test_checkpoint_ops_are_allowed_only_in_the_saver(export):
    from exporter.checking import unsafe_ops

    path = Path(export("feature_vector", "mobilenet_v2", "none"))
    proto = conformance.read_saved_model(path)
    assert unsafe_ops.scan(proto) == []
    function = proto.meta_graphs[0].graph_def.library.function
    call = next(f for f in function if "__call__" in f.signature.name)
    call.node_def.add(name="sneaky", op="SaveV2")
    assert unsafe_ops.scan(proto) == [
        ("SaveV2", f"function {call.signature.name} (writes a checkpoint outside the saver's save)")
    ]


def test_checkpoint_ops_reached_through_a_function_attribute_are_not_the_savers():
    """A function named inside another function's attributes is called too (through a
    placeholder attribute): it is not reachable solely from the saver. And a write that the
    saver's restore op reaches is refused all the same."""
    from tensorflow.core.protobuf import saved_model_pb2

    from exporter.checking import unsafe_ops

    proto = saved_model_pb2.SavedModel()
    meta = proto.meta_graphs.add()
    meta.saver_def.restore_op_name = "restore"
    library = meta.graph_def.library
    writer = library.function.add()
    writer.signature.name = "writes_files"
    writer.node_def.add(name="save", op="SaveV2")
    caller = library.function.add()
    caller.signature.name = "calls_its_attribute"
    call = caller.node_def.add(name="call", op="PartitionedCall")
    call.attr["f"].placeholder = "inner"
    restore = meta.graph_def.node.add(name="restore", op="StatefulPartitionedCall")
    restore.attr["f"].func.name = "writes_files"
    main = meta.graph_def.node.add(name="main", op="StatefulPartitionedCall")
    main.attr["f"].func.name = "calls_its_attribute"
    main.attr["f"].func.attr["inner"].func.name = "writes_files"
    outside = " (writes a checkpoint outside the saver's save)"
    assert unsafe_ops.scan(proto) == [("SaveV2", f"function writes_files{outside}")]
    del meta.graph_def.node[1]  # Without the main node, only the saver's restore reaches it:
    # a write there runs whenever a TF1 loader restores the checkpoint (issue 32, finding 4).
    assert unsafe_ops.scan(proto) == [
        ("SaveV2", "function writes_files (writes a file when the checkpoint is restored)")
    ]


# -- unreadable input --------------------------------------------------------------------


def _unreadable(tmp_path, kind) -> Path:
    path = tmp_path / "model"
    if kind == "missing":
        return path
    path.mkdir()
    if kind == "garbage":
        (path / "saved_model.pb").write_bytes(b"\xff\xfenot a protobuf at all")
    if kind == "truncated":
        good = tf.Module()
        good.v = tf.Variable(1.0)
        tf.saved_model.save(good, str(tmp_path / "good"))
        data = (tmp_path / "good" / "saved_model.pb").read_bytes()
        (path / "saved_model.pb").write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated"])
def test_unreadable_input_exits_two_with_one_line(tmp_path, kind):
    done = run_cli("check", str(_unreadable(tmp_path, kind)))
    assert done.returncode == 2, done.stdout + done.stderr[-1000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert done.stdout == ""


@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_unreadable_input_with_json_prints_one_object(tmp_path, kind):
    path = _unreadable(tmp_path, kind)
    done = run_cli("check", str(path), "--json")
    assert done.returncode == 2, done.stdout + done.stderr[-1000:]
    parsed = json.loads(done.stdout)
    assert parsed["ok"] is False and parsed["path"] == str(path)
    assert parsed["error"] and parsed["error"] in done.stderr


def test_usage_errors_exit_two():
    assert run_cli("check").returncode == 2
    assert run_cli("check", "--task=segmentation", "x").returncode == 2


# -- what the API lets a publisher omit, and sizes -----------------------------------------


class _ThirdParty(_Model):
    """A reusable SavedModel as hub's own tests write one: no signatures, no empty lists."""

    def __init__(self, with_variable_lists: bool = True, body=None):
        super().__init__()
        self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(3, 8)).astype("float32"))
        self.body = body
        if with_variable_lists:
            self.variables = [self.kernel]
            self.trainable_variables = [self.kernel]

    @tf.function(autograph=False)
    def __call__(self, images, training=False):
        features = tf.einsum("bhwc,cd->bhwd", images * 2.0 - 1.0, self.kernel)
        if self.body is not None:
            features = tf.concat([features, self.body(images, training=training)], -1)
        return tf.reduce_mean(features, [1, 2])


def _save_third_party(model: tf.Module, path: Path, signatures=None) -> Path:
    for training in (False, True):
        model.__call__.get_concrete_function(GOOD_SPEC, training=training)
    tf.saved_model.save(model, str(path), signatures=signatures)
    return path


def test_omitted_empty_lists_and_signatures_are_warnings_only(tmp_path):
    """The Reusable SavedModel API lets ``regularization_losses`` be omitted when empty, and
    asks for no signature: such a model passes, its missing serving_default a warning."""
    report = conformance.check(_save_third_party(_ThirdParty(), tmp_path / "model"))
    assert report.ok, report.to_text()
    results = {r.rule: r for r in report.results}
    assert results["regularization_losses"].status == "pass"
    assert "omitted as empty" in results["regularization_losses"].message
    assert results["serving_default"].status == "warn"
    assert {r.rule for r in report.results if r.status == "warn"} == {"serving_default", "metadata"}


def test_variable_lists_may_be_omitted_only_when_nothing_would_be_in_them(tmp_path):
    class _Stateless(tf.Module):
        @tf.function(autograph=False)
        def __call__(self, images, training=False):
            return tf.reduce_mean(images * 2.0 - 1.0, [1, 2])

    stateless = _save_third_party(_Stateless(), tmp_path / "stateless")
    results = {r.rule: r for r in conformance.check(stateless).results}
    assert results["variables"].status == "pass", results["variables"]
    assert "no `variables` (omitted as empty" in results["variables"].message
    hidden = _save_third_party(_ThirdParty(with_variable_lists=False), tmp_path / "hidden")
    results = {r.rule: r for r in conformance.check(hidden).results}
    assert results["variables"].status == "fail"
    assert "no `variables` attribute, but __call__ uses 1" in results["variables"].message


def test_regularization_losses_held_below_the_root_must_be_listed(tmp_path):
    import tf_keras

    body = tf_keras.Sequential(
        [tf_keras.Input((None, None, 3)),
         tf_keras.layers.Conv2D(4, 1, kernel_regularizer=tf_keras.regularizers.L2(1e-3))]
    )  # fmt: skip
    model = _ThirdParty(body=body)
    model.variables = [model.kernel, *body.variables]
    model.trainable_variables = [model.kernel, *body.trainable_variables]
    report = conformance.check(_save_third_party(model, tmp_path / "model"))
    result = {r.rule: r for r in report.results}["regularization_losses"]
    assert result.status == "fail" and "regularization loss function" in result.message, result


def test_a_missing_serving_default_warns_on_theirs_and_fails_ours(tmp_path):
    """Issue 21: the reusable API asks for no signature, so a third-party model without one
    (the catalogue's variant) only warns; our exports (strict) must have it."""
    path = _broken("serving_default_missing", tmp_path / "model")
    results = {r.rule: r for r in conformance.check(path).results}
    assert results["serving_default"].status == "warn", results["serving_default"]
    strict = {r.rule: r for r in conformance.check(path, strict_metadata=True).results}
    assert strict["serving_default"].status == "fail", strict["serving_default"]


class _OneSizeOnly(_Model):
    """Works at 32x32 only (a flatten into a dense kernel), whatever it claims."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(tf.random.stateless_normal([32 * 32 * 3, 4], seed=[1, 2]))

    @tf.function(autograph=False)
    def __call__(self, images, training=False):
        flat = tf.reshape(images * 2.0 - 1.0, [tf.shape(images)[0], 32 * 32 * 3])
        return flat @ self.kernel


def test_a_model_claiming_dynamic_sizes_is_tried_at_a_second_size(tmp_path):
    """Its metadata says min_size = native_size = 32 and not fixed: the check must not try
    32 twice (spec.probe_sizes once did) but a second, larger size, where it fails. The
    same model documented as fixed-size at 32 passes every rule that calls it."""
    assert exporter.spec.probe_sizes(32, 32, False) == (64, 32)
    model = _OneSizeOnly()
    model.variables, model.trainable_variables = [model.kernel], [model.kernel]
    path = _save_third_party(model, tmp_path / "model", signatures={})
    (path / "assets.extra").mkdir()
    reports = {}
    for fixed in (False, True):
        size = {"min_size": 32, "native_size": 32, "fixed_size": fixed}
        facts = {"task": "image_feature_vector", "input": size}
        (path / exporter.spec.METADATA_FILE).write_text(json.dumps(facts))
        reports[fixed] = conformance.check(path)
    claims_dynamic = {r.rule: r for r in reports[False].results}
    assert claims_dynamic["output_dtype"].status == "fail", reports[False].to_text()
    assert "InvalidArgumentError" in claims_dynamic["output_dtype"].message
    # Only its hand-written metadata (no card, no num_features) fails then.
    assert reports[True].failed() == ["metadata"], reports[True].to_text()


# -- input_range: a model that may expect pre-normalized pixels ----------------------------


def _input_range(path: Path):
    return {r.rule: r for r in conformance.check(path).results}["input_range"]


@pytest.mark.parametrize("first", ["conv", "rescaling", "normalization"])
def test_input_range_on_a_tf_keras_saved_model(tmp_path, first):
    """A tf-keras model.save(save_format="tf") whose first layer is a convolution on the raw
    input warns (as Model Garden's TF Hub exports would: they take mean/std-normalized
    pixels); one that rescales or normalizes first does not."""
    import tf_keras

    layers = {
        "conv": [],
        "rescaling": [tf_keras.layers.Rescaling(2.0, offset=-1.0)],
        "normalization": [tf_keras.layers.Normalization(mean=0.5, variance=0.25)],
    }[first]
    model = tf_keras.Sequential(
        [tf_keras.Input((None, None, 3)), *layers, tf_keras.layers.Conv2D(4, 3),
         tf_keras.layers.GlobalAveragePooling2D()]
    )  # fmt: skip
    model.save(tmp_path / "model", save_format="tf")
    result = _input_range(tmp_path / "model")
    if first == "conv":
        assert result.status == "warn", result
        assert "before the first Conv2D" in result.message and "pre-normalized" in result.message
    else:
        assert result.status == "pass", result


def test_input_range_follows_the_images_through_functions_and_asserts(tmp_path):
    from exporter.checking import input_range

    class _Checked(tf.Module):
        def __init__(self, rescale: bool):
            super().__init__()
            self.kernel = tf.Variable(tf.ones([3, 3, 3, 4]))
            self.rescale = rescale

        @tf.function(input_signature=[GOOD_SPEC])
        def __call__(self, images):
            check = tf.debugging.assert_greater_equal(tf.shape(images)[1:3], 3)
            with tf.control_dependencies([check]):
                images = tf.identity(images[..., ::-1])  # BGR: moves pixels, scales none.
            return self._features(images * 255.0 - 120.0 if self.rescale else images)

        @tf.function
        def _features(self, images):
            return tf.reduce_mean(tf.nn.conv2d(images, self.kernel, 1, "SAME"), [1, 2])

    for rescale in (False, True):
        path = tmp_path / f"model-{rescale}"
        tf.saved_model.save(_Checked(rescale), str(path))
        verdict = input_range.first_layer_input(conformance.read_saved_model(path))
        assert verdict.rescaled is rescale, verdict
        assert verdict.first_layer_op == (None if rescale else "Conv2D")


def test_input_range_passes_a_keras_hub_backbone_export(tmp_path):
    import keras_hub

    keras.utils.set_random_seed(0)
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block",
        image_shape=(None, None, 3),
    )  # fmt: skip
    module = exporter.FeatureVectorModule(resnet, preprocessing="torch")
    result = _input_range(exporter.save(module, tmp_path / "model"))
    assert result.status == "pass" and result.message.startswith("rescaled"), result


def test_input_range_passes_our_identity_export_by_its_declaration(tmp_path):
    """preprocessing="identity" declares that the backbone takes [0, 1] as is."""
    body = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
         keras.layers.GlobalAveragePooling2D()]
    )  # fmt: skip
    path = exporter.save(
        exporter.FeatureVectorModule(body, preprocessing="identity"), tmp_path / "m"
    )
    result = _input_range(path)
    assert result.status == "pass" and "as the metadata declares" in result.message, result
