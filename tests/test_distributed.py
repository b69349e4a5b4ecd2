"""``exporter.KerasLayer`` under ``tf.distribute``: each case in fresh processes.

Workers (tests/distributed_worker.py) pick their devices or ``TF_CONFIG`` before TensorFlow
starts; multi-worker runs two processes on 127.0.0.1 with free ports and a bounded time.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from test_keras_layer import tiny_backbone

import exporter
from exporter.checking import conformance

TIMEOUT = 240  # Seconds for a worker; a hung collective fails the test instead of CI.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    keras.utils.set_random_seed(0)
    module = exporter.FeatureVectorModule(tiny_backbone(), preprocessing="identity")
    return str(exporter.save(module, tmp_path_factory.mktemp("tiny") / "export"))


def _worker(case: str, handle: str, out, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "distributed_worker.py"), case, handle, str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"worker timed out after {TIMEOUT}s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_mirrored_strategy_on_two_logical_cpus(tiny, tmp_path):
    _finish(_worker("mirrored", tiny, tmp_path))
    facts = json.loads((tmp_path / "result.json").read_text())
    assert facts["replicas"] == 2
    assert facts["mirrored"], "the restored variables are not mirrored"
    assert facts["moved"]
    assert facts["losses"][-1] < facts["losses"][0], facts["losses"]
    assert "create the layer (or load the model) inside the scope" in facts["outside_error"]


@pytest.mark.slow  # Two worker processes, each importing TensorFlow and training.
def test_multi_worker_mirrored_strategy_with_two_processes(tiny, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {"TF_CONFIG": json.dumps(config)}
        processes.append(_worker("multi_worker", tiny, tmp_path / f"w{index}", env))
    outputs = [_finish(p) for p in processes]
    chief, other = (json.loads((tmp_path / f"w{i}" / "result.json").read_text()) for i in (0, 1))
    assert chief["replicas"] == other["replicas"] == 2, outputs[0][-2000:]
    assert "export" in chief and "export" not in other
    report = conformance.check(chief["export"], strict_metadata=True)
    assert report.ok, report.to_text()
    first, second = (np.load(tmp_path / f"w{i}" / "weights.npz") for i in (0, 1))
    untouched = tf.saved_model.load(tiny).trainable_variables
    assert (
        sorted(first.files)
        == sorted(second.files)
        == sorted(f"w{i}" for i in range(len(untouched)))
    )
    for index, variable in enumerate(untouched):
        np.testing.assert_array_equal(first[f"w{index}"], second[f"w{index}"])
        assert not np.array_equal(first[f"w{index}"], variable.numpy()), "not trained"
