"""The op scan is an allowlist (issue 32): what it does not know is refused, on every path.

Each hostile SavedModel below was found to get past the old denylist. Each is refused by
the way in (``savedmodel.load``, which check, convert, embed's model handler and the Keras
layer use), by the checker, by conversion, by ``exporter.KerasLayer`` and by a ``.keras``
file loaded in safe mode; no marker file appears, no secret leaves and no connection is
made. Then: every stateful or file-like op of TensorFlow's registry is refused unless the
allowlist gives a reason, legitimate SavedModels of other makers are admitted, TensorFlow
loads exactly the bytes that were scanned, and only an explicit argument grants trust.
"""

from __future__ import annotations

import importlib.util
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli
from tensorflow.core.framework import op_def_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.client import pywrap_tf_session
from test_unsafe_models import _retarget  # The layer pointed elsewhere, unsafe ops allowed.

import exporter
from exporter.checking import conformance, op_allowlist, private_copy, savedmodel, unsafe_ops
from exporter.errors import UnsafeOpsError
from exporter.use import beam_handler, convert

IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")


def _pooled(images):
    return tf.reduce_mean(images, axis=[1, 2])


def _dataset_graph(dataset: tf.data.Dataset) -> bytes:
    """A dataset's serialized graph: what DatasetFromGraph rebuilds from a string."""
    return tf.raw_ops.DatasetToGraphV2(input_dataset=dataset._variant_tensor).numpy()


class _FromGraph(tf.Module):
    """Rebuilds a dataset from a string (a graph) and runs it on every call."""

    def __init__(self, graph: bytes, spec: tf.TensorSpec):
        super().__init__()
        # A variable, not a constant: the optimizer would try to fold the rebuilt dataset.
        self.graph, self.spec = tf.Variable(graph), spec

    @tf.function(input_signature=[IMAGES])
    def __call__(self, images):
        variant = tf.raw_ops.DatasetFromGraph(graph_def=self.graph)
        dataset = tf.data.experimental.from_variant(variant, self.spec)
        first = dataset.get_single_element()
        return _pooled(images) + tf.cast(tf.strings.length(first), tf.float32) * 0.0


class _Op(tf.Module):
    """Runs ``effect`` (an op the old scan did not know) beside the pooled images."""

    def __init__(self, effect):
        super().__init__()
        self.effect = effect

    @tf.function(input_signature=[IMAGES])
    def __call__(self, images):
        with tf.control_dependencies([self.effect(images)]):
            return _pooled(images)


def _hostile(tmp: Path, secret: Path, port: int) -> dict[str, tuple[tf.Module, Path]]:
    """Each hostile module by name, with the marker file it would write."""
    marker = {name: tmp / f"{name}.marker" for name in ("writes", "debug", "tf1")}

    def write_marker(_):
        tf.io.write_file(str(marker["writes"]), "pwned")
        return tf.constant("x")

    writes = tf.data.Dataset.from_tensors(tf.constant("x")).map(write_marker)
    reads = tf.data.Dataset.from_tensors(str(secret)).map(tf.io.read_file)
    string = tf.TensorSpec([], tf.string)
    address = f"127.0.0.1:{port}"

    def register(images):
        dataset = tf.data.Dataset.from_tensors(images)
        return tf.raw_ops.RegisterDataset(
            dataset=dataset._variant_tensor, address=address, protocol="grpc",
            external_state_policy=0,
        )  # fmt: skip

    def debug(images):
        return tf.raw_ops.DebugIdentity(
            input=images, debug_urls=[f"file://{tmp / 'debug-dump'}"], tensor_name="x:0"
        )

    return {
        "dataset_from_graph_writes": (_FromGraph(_dataset_graph(writes), string), marker["writes"]),
        "dataset_from_graph_reads": (_FromGraph(_dataset_graph(reads), string), None),
        "debug_identity": (_Op(debug), tmp / "debug-dump"),
        "register_dataset": (_Op(register), None),
        "collective": (
            _Op(
                lambda x: tf.raw_ops.CollectiveReduceV2(
                    input=x,
                    group_size=2,
                    group_key=1,
                    instance_key=1,
                    ordering_token=[],
                    merge_op="Add",
                    final_op="Id",
                )
            ),
            None,
        ),  # fmt: skip
    }


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """``(SavedModels by name, markers, the secret, the listening socket)``."""
    tmp = tmp_path_factory.mktemp("hostile")
    secret = tmp / "secret.txt"
    secret.write_text("the secret bytes")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    paths, markers = {}, {}
    for name, (module, marker) in _hostile(tmp, secret, listener.getsockname()[1]).items():
        paths[name] = tmp / name
        tf.saved_model.save(module, str(paths[name]), signatures=module.__call__)
        markers[name] = marker
    paths["tf1_restore_writes"], markers["tf1_restore_writes"] = _tf1_restore_writes(tmp)
    yield paths, markers, secret, listener
    listener.close()


def _tf1_saved_model(path: Path) -> None:
    """A TF1 SavedModel (SavedModelBuilder, a Saver, a variable): the legitimate kind."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        scale = tf.compat.v1.get_variable("scale", initializer=2.0)
        output = tf.reduce_mean(images, axis=[1, 2]) * scale
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(path))
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"images": images}, {"x": output}
        )
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": signature}
        )
        builder.save()


def _tf1_restore_writes(tmp: Path) -> tuple[Path, Path]:
    """The TF1 SavedModel whose saver restore op is a SaveV2 to a constant path."""
    path = tmp / "tf1_restore_writes"
    _tf1_saved_model(path)
    marker = tmp / "tf1.marker"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    meta = proto.meta_graphs[0]
    inputs = []
    for name, value in [("prefix", str(marker)), ("names", ["x"]), ("slices", [""]),
                        ("value", np.float32(1.0))]:  # fmt: skip
        tensor = tf.make_tensor_proto(value)
        node = meta.graph_def.node.add(name=f"attacker/{name}", op="Const")
        node.attr["dtype"].type = tensor.dtype
        node.attr["value"].tensor.CopyFrom(tensor)
        inputs.append(node.name)
    save = meta.graph_def.node.add(name="attacker/save", op="SaveV2", input=inputs)
    save.attr["dtypes"].list.type.append(tf.float32.as_datatype_enum)
    meta.saver_def.restore_op_name = save.name
    (path / "saved_model.pb").write_bytes(proto.SerializeToString())
    return path, marker


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """A ``.keras`` file holding an ``exporter.KerasLayer`` of a safe SavedModel."""
    tmp = tmp_path_factory.mktemp("keras_file")
    safe = tmp / "safe"
    tf.saved_model.save(_Op(lambda x: tf.constant(0.0)), str(safe))
    model = keras.Sequential([keras.Input((8, 8, 3)), exporter.KerasLayer(str(safe))])
    model.save(tmp / "safe.keras")
    return tmp / "safe.keras"


HOSTILE = [
    "dataset_from_graph_writes", "dataset_from_graph_reads", "debug_identity",
    "register_dataset", "collective", "tf1_restore_writes",
]  # fmt: skip
REFUSED_OP = {
    "dataset_from_graph_writes": "DatasetFromGraph",
    "dataset_from_graph_reads": "DatasetFromGraph",
    "debug_identity": "DebugIdentity",
    "register_dataset": "RegisterDataset",
    "collective": "CollectiveReduceV2",
    "tf1_restore_writes": "SaveV2",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_each_hostile_model_is_refused_on_every_path(hostile, keras_file, tmp_path, name):
    paths, markers, secret, listener = hostile
    path, op = paths[name], REFUSED_OP[name]
    assert any(found == op for found, _ in unsafe_ops.scan(savedmodel.read(path)))
    attempts = {
        "the way in": lambda: savedmodel.load(path),
        "embed's model handler": lambda: beam_handler.SavedModelHandler(str(path)).load_model(),
        "convert": lambda: convert.convert(path, tmp_path / "out.onnx", to="onnx"),
        "KerasLayer": lambda: exporter.KerasLayer(str(path)),
        "a .keras file in safe mode": lambda: keras.models.load_model(
            _retarget(keras_file, tmp_path / "hostile.keras", path)
        ),
    }
    for where, attempt in attempts.items():
        with pytest.raises((UnsafeOpsError, TypeError), match=op) as raised:
            attempt()
        assert "allowlist" in str(raised.value) or where == "a .keras file in safe mode", where
    report = conformance.check(path)
    statuses = {r.rule: r.status for r in report.results}
    assert statuses["safe_ops"] == "fail" and statuses["loads"] == "skip"
    assert op in report.to_text()
    assert not (tmp_path / "out.onnx").exists()
    marker = markers[name]
    assert marker is None or not list(marker.parent.glob(f"{marker.name}*"))
    with pytest.raises(BlockingIOError):
        listener.accept()  # No connection was made.
    assert secret.read_text() == "the secret bytes"


def test_the_scan_is_what_stood_in_the_way(hostile):
    """The markers of the tests above would have appeared: allowed, each model runs its op."""
    paths, markers, _, _ = hostile
    savedmodel.load(paths["dataset_from_graph_writes"], allow_unsafe_ops=True)(
        tf.zeros([1, 4, 4, 3])
    )
    assert markers["dataset_from_graph_writes"].read_text() == "pwned"
    marker = markers["tf1_restore_writes"]
    savedmodel.load(paths["tf1_restore_writes"], allow_unsafe_ops=True)
    assert list(marker.parent.glob(f"{marker.name}*"))  # Loading alone wrote its checkpoint.


def _registry() -> dict[str, op_def_pb2.OpDef]:
    ops = op_def_pb2.OpList()
    ops.ParseFromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
    return {op.name: op for op in ops.op}


_FILE_LIKE = re.compile(r"file|path|url|address|dir|server|host|port|target", re.IGNORECASE)


def _risky(op: op_def_pb2.OpDef) -> bool:
    """Stateful, or with a string attr or input named like a file, path, url or address."""
    strings = [a.name for a in op.attr if a.type in ("string", "list(string)")]
    strings += [a.name for a in op.input_arg if a.type == tf.string.as_datatype_enum]
    return op.is_stateful or any(_FILE_LIKE.search(name) for name in strings)


def _one_op_model(op: str) -> saved_model_pb2.SavedModel:
    proto = saved_model_pb2.SavedModel()
    function = proto.meta_graphs.add().graph_def.library.function.add()
    function.signature.name = "__inference___call___1"
    function.node_def.add(name="node", op=op)
    return proto


def test_every_stateful_or_file_like_op_is_refused_unless_allowed_with_a_reason():
    registry = _registry()
    risky = sorted(name for name, op in registry.items() if _risky(op))
    assert len(risky) > 300  # TensorFlow 2.21 has about 700: the generator found them.
    admitted = []
    for name in risky:
        refused = unsafe_ops.scan(_one_op_model(name))
        if name in op_allowlist.ALLOWED:
            assert refused == [], name
            # Admitted ones carry their own reason, not just a family's.
            assert op_allowlist.EFFECTS.get(name, "").strip(), name
            admitted.append(name)
        else:
            assert len(refused) == 1 and refused[0][0] == name, name
            assert refused[0][1].startswith("function __inference___call___1"), name
    for name in ("WriteFile", "ReadFile", "DatasetFromGraph", "DebugIdentity", "RegisterDataset",
                 "XlaCallModule", "Abort", "EagerPyFunc", "PrintV2", "ImmutableConst"):  # fmt: skip
        assert name not in op_allowlist.ALLOWED
    assert set(admitted) <= set(op_allowlist.EFFECTS)
    assert set(op_allowlist.ALLOWED) <= set(registry)  # No name that TensorFlow lacks.


def test_a_function_attribute_naming_an_op_is_judged_as_that_op():
    """TensorFlow runs an op as a function: PartitionedCall(f=WriteFile) writes."""
    proto = _one_op_model("PartitionedCall")
    call = proto.meta_graphs[0].graph_def.library.function[0].node_def[0]
    call.attr["f"].func.name = "WriteFile"
    assert unsafe_ops.scan(proto) == [
        ("WriteFile", "function __inference___call___1 (called as a function by PartitionedCall)")
    ]


def test_legitimate_models_of_other_makers_are_admitted(tmp_path):
    """tf-keras model.save, Keras 3 model.export and a TF1 SavedModelBuilder graph."""
    import tf_keras

    inputs = tf_keras.Input((None, None, 3))
    features = tf_keras.layers.Conv2D(4, 3)(inputs)
    features = tf_keras.layers.BatchNormalization()(features)
    features = tf_keras.layers.Dropout(0.2)(tf_keras.layers.GlobalAveragePooling2D()(features))
    tf_keras.Model(inputs, features).save(str(tmp_path / "tf_keras"))
    model = keras.Sequential([
        keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.2),
    ])  # fmt: skip
    model.export(str(tmp_path / "keras_export"), verbose=False)
    _tf1_saved_model(tmp_path / "tf1")
    for name in ("tf_keras", "keras_export", "tf1"):
        assert unsafe_ops.scan(savedmodel.read(tmp_path / name)) == [], name
        savedmodel.load(tmp_path / name)  # Restores its variables from the private copy.
    images = tf.random.uniform([2, 8, 8, 3])
    loaded = savedmodel.load(tmp_path / "tf1")
    expected = tf.reduce_mean(images, axis=[1, 2]) * 2.0
    got = loaded.signatures["serving_default"](images=images)["x"]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)


def test_tensorflow_loads_exactly_the_bytes_that_were_scanned(hostile, tmp_path, monkeypatch):
    """The user's saved_model.pb is swapped for a hostile one right after it was read: the
    model that runs is still the scanned one."""
    paths, markers, _, _ = hostile
    safe = tmp_path / "safe"
    tf.saved_model.save(_Op(lambda x: tf.constant(0.0)), str(safe))
    hostile_graph = (paths["dataset_from_graph_writes"] / "saved_model.pb").read_bytes()
    marker = markers["dataset_from_graph_writes"]
    marker.unlink(missing_ok=True)
    made = private_copy.make

    def swap_then_copy(source, graph, remote):
        (Path(source) / "saved_model.pb").write_bytes(hostile_graph)  # The attacker's move.
        return made(source, graph, remote)

    monkeypatch.setattr(private_copy, "make", swap_then_copy)
    loaded = savedmodel.load(safe)
    images = tf.random.uniform([1, 4, 4, 3])
    np.testing.assert_allclose(loaded(images).numpy(), _pooled(images).numpy(), rtol=1e-6)
    assert not marker.exists()
    assert (safe / "saved_model.pb").read_bytes() == hostile_graph  # The swap did happen.


def test_links_out_of_the_savedmodel_and_fifos_are_refused_also_through_file_urls(tmp_path):
    safe = tmp_path / "safe"
    tf.saved_model.save(_Op(lambda x: tf.constant(0.0)), str(safe))
    secret = tmp_path / "secret.data"
    secret.write_bytes(b"\0" * 64)
    data = next((safe / "variables").glob("variables.data-*"))
    fingerprint = safe / "fingerprint.pb"
    kept = fingerprint.read_bytes()
    fingerprint.unlink()
    import os

    os.mkfifo(fingerprint)
    signal.alarm(60)  # A FIFO opened for reading would block: fail instead of hanging.
    try:
        with pytest.raises(savedmodel.UnsafeFilesError, match="fingerprint.pb is a FIFO"):
            savedmodel.load(f"file://{safe}")
        fingerprint.unlink()
        fingerprint.write_bytes(kept)
        data.unlink()
        data.symlink_to(secret)
        with pytest.raises(savedmodel.UnsafeFilesError, match="outside the SavedModel"):
            savedmodel.load(f"file://{safe}")
    finally:
        signal.alarm(0)


def test_a_corrupt_fingerprint_is_one_line_naming_the_file(tmp_path, capfd):
    safe = tmp_path / "safe"
    tf.saved_model.save(_Op(lambda x: tf.constant(0.0)), str(safe))
    (safe / "fingerprint.pb").write_bytes(b"\xff\xff\xff not a fingerprint")
    with pytest.raises(savedmodel.UnreadableError, match=r"Corrupt .*fingerprint\.pb"):
        savedmodel.load(safe)
    loads = next(r for r in conformance.check(safe).results if r.rule == "loads")
    assert loads.status == "fail" and "fingerprint.pb" in loads.message
    assert "Traceback" not in capfd.readouterr().err


def test_keras_global_unsafe_switch_grants_no_trust(hostile):
    from keras.src.saving import serialization_lib

    paths, markers, _, _ = hostile
    before = serialization_lib.in_safe_mode()
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(UnsafeOpsError, match="DatasetFromGraph"):
            exporter.KerasLayer(str(paths["dataset_from_graph_writes"]))
    finally:
        keras.src.backend.common.global_state.set_global_attribute("safe_mode_saving", before)


# -- bounded runs -------------------------------------------------------------------------


class _Endless(tf.Module):
    """Allowed ops only, but the loop never ends."""

    @tf.function(input_signature=[IMAGES])
    def __call__(self, images):
        count = tf.while_loop(lambda i: i >= 0, lambda i: i + 1, [tf.constant(0)])
        return _pooled(images) + tf.cast(count, tf.float32) * 0.0


class _Hog(tf.Module):
    """Allowed ops only, but every call allocates 8 GiB (a size known only when run)."""

    @tf.function(input_signature=[IMAGES])
    def __call__(self, images):
        size = tf.cast(tf.reduce_min(images) > -1.0, tf.int64) * (1 << 31)  # Not foldable.
        return _pooled(images) + tf.reduce_sum(tf.fill([size], 1.0)) * 0.0


class _Aborts(tf.Module):
    """Aborts the process on every call (refused by the scan unless unsafe ops are allowed)."""

    @tf.function(input_signature=[IMAGES])
    def __call__(self, images):
        with tf.control_dependencies([tf.raw_ops.Abort(error_msg="boom")]):
            return _pooled(images)

    @classmethod
    def save(cls, path: str) -> None:
        tf.saved_model.save(cls(), path)


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.parametrize(
    "module, flags, expected",
    [
        (_Endless, ["--timeout_s=5"], "did not finish within 5 s"),
        (_Hog, ["--memory_limit_gib=6"], "OOM when allocating"),
        (_Aborts, ["--allow_unsafe_ops"], "SIGABRT"),
    ],
    ids=["never_returns", "allocates_8_gib", "aborts"],
)
def test_check_on_a_model_that_hangs_or_crashes_ends_with_a_fail_line(
    tmp_path, module, flags, expected
):
    path = tmp_path / "model"
    if module is _Aborts:  # Saved in a fresh process: after other saves in this one, the
        # saved graph lost the Abort (seen with TF 2.21; not understood).
        save = f"from test_allowlist import _Aborts; _Aborts.save({str(path)!r})"
        saved = subprocess.run([sys.executable, "-c", save], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert saved.returncode == 0, saved.stderr[-2000:]
    else:
        tf.saved_model.save(module(), str(path))
    refused = {op for op, _ in unsafe_ops.scan(savedmodel.read(path))}
    assert refused == ({"Abort"} if module is _Aborts else set())
    done = run_cli("check", str(path), *flags, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    failed = [line for line in done.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert any(expected in line for line in failed), done.stdout
    assert "NOT CONFORMING" in done.stdout  # The rest of the report still printed.
    assert "safe_ops" in done.stdout and "serving_default" in done.stdout


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
@pytest.mark.skipif(
    importlib.util.find_spec("official") is None,
    reason="Model Garden is not installed: .ci/run installs tf-models-official (--no-deps)",
)
def test_model_gardens_tf_hub_exports_are_admitted(tmp_path):
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("model_garden_export.py")), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for name, width in (("classifier", 10), ("feature_vector", 128)):
        assert unsafe_ops.scan(savedmodel.read(tmp_path / name)) == [], name
        loaded = savedmodel.load(tmp_path / name)
        assert loaded(tf.zeros([1, 64, 64, 3]), training=False).shape == (1, width)


def test_a_write_that_a_signature_runs_is_model_code_even_if_the_save_tensor_reaches_it(
    tmp_path,
):
    """Pointing the saver's save tensor at a signature's output does not make its writes the
    saver's: a TF1 signature would write to the filename's default (``model``) when run."""
    _tf1_saved_model(tmp_path / "tf1")
    proto = savedmodel.read(tmp_path / "tf1")
    meta = proto.meta_graphs[0]
    assert unsafe_ops.scan(proto) == []
    filename = meta.saver_def.filename_tensor_name.split(":")[0]
    save = next(node for node in meta.graph_def.node if node.op == "SaveV2")
    save.input[0] = filename
    output = meta.signature_def["serving_default"].outputs["x"]
    out = meta.graph_def.node.add(name="attacker/out", op="Identity")
    out.input.extend([output.name, f"^{save.name}"])
    output.name = "attacker/out:0"
    meta.saver_def.save_tensor_name = output.name
    assert ("SaveV2", "graph (writes a checkpoint outside the saver's save)") in (
        unsafe_ops.scan(proto)
    )
