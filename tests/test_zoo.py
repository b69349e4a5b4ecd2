"""Every registered backbone: its facts, a round trip, preprocessing parity, its own head.

Each backbone is checked by ``tests/zoo_check.py`` in a fresh Python process (see there
why), ``EXPORTER_ZOO_JOBS`` of them at a time (default 2). One test per backbone reports
that process's verdict, with its output when it fails.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import BACKBONES, REPO

import exporter

WORKER = Path(__file__).with_name("zoo_check.py")
JOBS = int(os.environ.get("EXPORTER_ZOO_JOBS", "2"))
TIMEOUT_S = 1200


def test_names_follow_the_keras_function_names():
    for name in BACKBONES:
        facts = exporter.get_backbone(name)
        assert name.replace("_", "") == facts.build.__name__.lower(), name
        assert name == name.lower()


def _check(name: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Each process gets an equal share of the cores instead of all of them each.
    threads = str(max(1, (os.cpu_count() or 1) // JOBS))
    environ.update(TF_NUM_INTRAOP_THREADS=threads, OMP_NUM_THREADS=threads)
    try:
        return subprocess.run(
            [sys.executable, str(WORKER), name],
            cwd=REPO, env=environ, capture_output=True, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        return subprocess.CompletedProcess(error.cmd, -1, str(error.stdout), f"timed out: {error}")


@pytest.fixture(scope="module")
def zoo(request):
    """Start the checks of every selected backbone at once; each test waits for its own."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_backbone_end_to_end"
    ]
    pool = ThreadPoolExecutor(max_workers=JOBS)
    futures = {name: pool.submit(_check, name) for name in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_end_to_end(zoo, name):
    done = zoo[name].result()
    output = f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert done.returncode == 0, output
    assert f"{name}: check_feature_vector passed" in done.stdout, output
    assert f"{name}: check_own_classifier passed" in done.stdout, output
