"""Shared fixtures: small weight files made here, and a cache of exports per session."""

from __future__ import annotations

import functools
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import weakref
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import exporter  # noqa: E402
from exporter.making import save as exporter_save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BACKBONES = exporter.list_backbones()
# The three of the core issue: every consumer and every error path is tested on these;
# test_zoo.py covers the facts, a round trip, parity and the own classifier of BACKBONES.
CORE = ("efficientnet_b0", "mobilenet_v2", "resnet50")
# The core backbone the quick tier (``-m "not slow and not stress"``) runs: the cheapest.
QUICK = "mobilenet_v2"


def tiered(values, quick=QUICK) -> list:
    """``values`` for ``pytest.mark.parametrize``, every one but ``quick`` marked ``slow``.

    The quick tier runs the case ``quick``; the whole suite (CI) runs them all, unchanged.
    """
    assert quick in values, f"{quick!r} is not among {values}"
    slow = pytest.mark.slow
    return [pytest.param(value, marks=() if value == quick else slow) for value in values]


ZOO_TEST = "test_backbone_end_to_end"
_background: dict = {}


def pytest_collection_finish(session):
    """Start the background jobs of the selected tests: first the jobs of slow tests that
    the suite reaches sooner, in its order, then the zoo's, longest first."""
    import zoo_runner
    from background import Runner

    if session.config.option.collectonly:
        return
    jobs, zoo = {}, []
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "originalname", None) == ZOO_TEST:
            zoo.append(params["name"])
        elif (marker := item.get_closest_marker("background")) is not None:
            jobs[item.nodeid] = _job(session, item, marker.kwargs["job"], params)
    threads = int(os.environ.get("EXPORTER_ZOO_JOBS", "2"))
    cores = max(1, (os.cpu_count() or 1) // threads)  # Each zoo process's share.
    for name in zoo_runner.order(zoo):
        jobs[f"zoo {name}"] = functools.partial(
            zoo_runner.check, name=name, repo=REPO, threads=cores
        )
    if jobs:
        _background["runner"] = Runner(jobs, threads)


def _job(session, item, job, params: dict):
    """``job`` with a scratch folder of its own and the test's parameters it names."""
    names = inspect.signature(job).parameters
    scratch = session.config._tmp_path_factory.mktemp(f"background-{item.name[:40]}")
    given = {name: value for name, value in params.items() if name in names}
    return functools.partial(job, scratch=scratch, **given)


def pytest_sessionfinish(session):
    if "runner" in _background:
        _background["runner"].stop()


def pytest_terminal_summary(terminalreporter):
    """How long each background job took (the zoo's with its checks' times): the CI log
    shows where the time goes."""
    if "runner" in _background and _background["runner"].lines:
        terminalreporter.section("background jobs")
        for line in _background["runner"].lines:
            terminalreporter.write_line(line)


@pytest.fixture
def background(request):
    """The result of this test's ``background`` job (tests/background.py): waited for, or
    run now if it has not started."""
    runner = _background.get("runner")
    assert runner is not None and request.node.nodeid in runner.results, (
        f"{request.node.nodeid} has no background job: mark it @pytest.mark.background(job=...)"
    )
    return runner.result(request.node.nodeid)


@pytest.fixture(scope="session")
def zoo():
    """The background runner, from the zoo's first test on with its second thread (the zoo's
    tests come last: the rest of the suite is done); None if no zoo test was selected."""
    runner = _background.get("runner")
    if runner is not None:
        runner.release()
    return runner


def random_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """Float32 RGB images in [0, 1], the contract's input."""
    return np.random.default_rng(seed).random((batch, size, size, 3), dtype=np.float32)


def keras_reference(name: str, weights: Path, include_top: bool = False) -> keras.Model:
    """The backbone as keras.applications builds it, with the given weights file."""
    facts = exporter.get_backbone(name)
    if include_top:
        return facts.build(include_top=True, weights=weights, classifier_activation=None)
    return facts.build(include_top=False, weights=weights, input_shape=(None, None, 3))


def _randomize_batch_norm(model: keras.Model, rng: np.random.Generator) -> None:
    # Fresh batch norm is the identity in inference; random statistics make parity tests
    # sensitive to moving-average handling.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable, low, high in (
                (layer.gamma, 0.5, 1.5),
                (layer.beta, -0.1, 0.1),
                (layer.moving_mean, -0.1, 0.1),
                (layer.moving_variance, 0.5, 1.5),
            ):
                if variable is not None:
                    variable.assign(rng.uniform(low, high, variable.shape).astype("float32"))


@pytest.fixture(scope="session")
def workdir():
    """A session scratch directory, removed at the end (exports are hundreds of MB)."""
    path = Path(tempfile.mkdtemp(prefix="exporter-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def weights_file(workdir):
    """Make (once) a random weights file for a backbone, with or without its classifier."""
    cache = {}

    def make(name: str, include_top: bool = False, suffix: str = ".weights.h5") -> Path:
        key = (name, include_top, suffix)
        if key not in cache:
            keras.utils.set_random_seed(zlib.crc32(name.encode()))
            facts = exporter.get_backbone(name)
            if include_top:
                model = facts.build(include_top=True, weights=None, classifier_activation=None)
            else:
                model = facts.build(include_top=False, weights=None, input_shape=(None, None, 3))
            _randomize_batch_norm(model, np.random.default_rng(1))
            path = workdir / f"{name}-{'top' if include_top else 'notop'}{suffix}"
            if suffix == ".keras":
                model.save(path)
            else:
                model.save_weights(path)
            cache[key] = path
        return cache[key]

    return make


def calibrate_batch_norm(model, images: np.ndarray, gamma: tuple | None = None) -> None:
    """Set every batch norm's moving statistics to those of ``images`` (docs/contract.md, traps).

    Fresh random weights make deep backbones' features vanish (MobileNetV2 about 1e-11), so
    a parity check with an absolute tolerance would pass whatever the code does. One
    ``training=True`` pass at momentum 0 normalizes every layer, giving features of order 1.
    ``gamma=(low, high)`` first draws every scale from that range. Dropout is off during
    that pass: a residual branch it dropped would skew every statistic after it
    (EfficientNet's stochastic depth).
    """
    rng = np.random.default_rng(1)
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    momenta = [layer.momentum for layer in norms]
    rates = [layer.rate for layer in drops]
    for layer in norms:
        if gamma is not None and layer.gamma is not None:
            layer.gamma.assign(rng.uniform(*gamma, layer.gamma.shape))
        layer.momentum = 0.0
    for layer in drops:
        layer.rate = 0.0
    model(tf.constant(images), training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum
    for layer, rate in zip(drops, rates, strict=True):
        layer.rate = rate


@pytest.fixture(scope="session")
def calibrated_weights(workdir):
    """Make (once) a weights file whose batch norm is calibrated: features of real scale."""
    cache = {}

    def make(name: str, include_top: bool = False) -> Path:
        key = (name, include_top)
        if key not in cache:
            keras.utils.set_random_seed(zlib.crc32(name.encode()))
            facts = exporter.get_backbone(name)
            size = facts.native_size if include_top or facts.fixed_size else 64
            model = keras_reference_for_weights(facts, include_top)
            calibrate_batch_norm(model, facts_images(facts, size))
            path = workdir / f"{name}-{'top' if include_top else 'notop'}-calibrated.weights.h5"
            model.save_weights(path)
            cache[key] = path
        return cache[key]

    return make


def keras_reference_for_weights(facts, include_top: bool) -> keras.Model:
    if include_top:
        return facts.build(include_top=True, weights=None, classifier_activation=None)
    size = facts.native_size if facts.fixed_size else None
    return facts.build(include_top=False, weights=None, input_shape=(size, size, 3))


def facts_images(facts, size: int) -> np.ndarray:
    """A batch of 8 random images as ``facts``' family expects them (its preprocess_input)."""
    family = getattr(keras.applications, facts.family)
    return family.preprocess_input(random_images(8, size, seed=7) * 255.0)


@pytest.fixture(scope="session")
def export(workdir, weights_file, calibrated_weights):
    """Export (once per session) a backbone.

    ``weights='file'`` uses ``weights_file`` (random batch-norm statistics),
    ``weights='calibrated'`` uses ``calibrated_weights`` (features of order 1: use it for
    parity checks), anything else is passed on (``'none'``, a path).
    """
    cache = {}

    def run(task: str, name: str, weights: str = "file", **kwargs) -> Path:
        key = (task, name, weights, repr(sorted(kwargs.items())))
        if key not in cache:
            own_head = task == "classification" and kwargs.get("num_classes") is None
            makers = {"file": weights_file, "calibrated": calibrated_weights}
            maker = makers.get(weights)
            source = maker(name, include_top=own_head) if maker else weights
            out = workdir / "exports" / f"{task}-{name}-{weights}-{len(cache)}"
            if task == "feature_vector":
                cache[key] = exporter.export_feature_vector(name, out, weights=source, **kwargs)
            else:
                cache[key] = exporter.export_classifier(name, out, weights=source, **kwargs)
        return cache[key]

    return run


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.stat()
        state[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return state


# What a user's standard error must not show (issue 25): TensorFlow's C++ log lines and
# absl's prefix (one format), Python logging's default format, tracebacks.
FOREIGN_LINE = re.compile(
    r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]|WARNING: All log messages before absl"
    r"|(INFO|WARNING|ERROR):(root|tensorflow|absl):|Traceback \(most recent call last\)"
)


def foreign_lines(text: str) -> list[str]:
    """The lines of ``text`` that are not ours (``FOREIGN_LINE``), or over 300 characters."""
    return [line for line in text.splitlines() if FOREIGN_LINE.match(line) or len(line) > 300]


def run_as_new_user(command: list[str], env: dict | None = None, timeout: int = 600):
    """Run ``command`` from the repository as a new user would: with no TF_CPP_MIN_LOG_LEVEL
    of their own (the suite sets one); ``env`` adds to the environment."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout
    )


def run_cli(module: str, *flags: str, env: dict | None = None, timeout: int = 600):
    """Run ``python -m exporter.<module>`` from the repository; return the finished process.

    ``env`` adds to the environment; a value of None removes that variable.
    """
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    environ = {name: value for name, value in environ.items() if value is not None}
    return subprocess.run(
        [sys.executable, "-m", f"exporter.{module}", *flags],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def released(monkeypatch):
    """Whether the module an ``export_*`` call built was still alive when verification began."""
    seen = {}
    write, verify = exporter_save._write, exporter_save._verify

    def spy_write(module, *args):
        seen["module"] = weakref.ref(module)
        return write(module, *args)

    def spy_verify(*args):
        seen["alive at verify"] = seen["module"]() is not None
        return verify(*args)

    monkeypatch.setattr(exporter_save, "_write", spy_write)
    monkeypatch.setattr(exporter_save, "_verify", spy_verify)
    return seen
