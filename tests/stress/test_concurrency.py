"""Concurrency: exports racing to one ``--out``, threads sharing one loaded export, and
threads fine-tuning two copies of one export in one process.

Environment: ``EXPORTER_STRESS_ROUNDS`` (races, default 5), ``EXPORTER_STRESS_CALLS`` (calls
per thread, default 50), ``EXPORTER_STRESS_SEED`` (default: drawn, printed).
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import threading
import time

import export_runs
import numpy as np
import pytest
import tensorflow as tf
from export_runs import SEED, Export, content, leftovers

pytestmark = pytest.mark.stress

ROUNDS = int(os.environ.get("EXPORTER_STRESS_ROUNDS", "5"))
CALLS = int(os.environ.get("EXPORTER_STRESS_CALLS", "50"))
STAGGER = 2.0  # Seconds: the second export of a race starts up to this much after the first.
THREADS = 8
SIZES = (32, 48, 64)  # Image heights and widths the threads call with.


@pytest.fixture(scope="module")
def two_exports(workdir):
    return export_runs.two_exports(workdir)


def test_two_processes_export_to_one_out(two_exports, tmp_path):
    """Each race: one export of each weights to the same --out (with --overwrite), the
    second started a random moment after the first, onto no export (first and fourth
    rounds) or onto the last round's. --out must end as one of the two whole, and as the
    one that succeeded if only one did; a failure is one line; nothing is left beside it.
    Each sweeps the leftovers beside --out while the other's temporary is there."""
    rng = random.Random(SEED)
    out = tmp_path / "model"
    rows, problems = [], []
    for number in range(ROUNDS):
        if number % 3 == 0:
            shutil.rmtree(out, ignore_errors=True)
        start = "fresh" if not out.exists() else "replace"
        order = rng.sample([0, 1], 2)
        stagger = rng.uniform(0.0, STAGGER)
        runs = {order[0]: Export(out, two_exports.weights[order[0]])}
        watch = _Watch(out, runs)
        time.sleep(stagger)
        runs[order[1]] = Export(out, two_exports.weights[order[1]])
        codes = {index: runs[index].finish() for index in (0, 1)}
        watch.stop()
        after = content(out)
        holds = next((i for i in (0, 1) if after == two_exports.contents[i]), None)
        succeeded = [index for index in (0, 1) if codes[index] == 0]
        said = {}
        for index, run in runs.items():
            last = run.lines[-1][1] if run.lines else ""
            if codes[index] != 0:
                said[index] = last
                if run.hung or "Traceback" in run.log or not last.startswith("error:"):
                    problems.append(f"round {number}: export {index} failed badly:\n{run.log}")
        if not succeeded:
            problems.append(f"round {number}: neither export succeeded")
        if holds is None:
            problems.append(f"round {number}: --out is neither export whole: {after}")
        elif len(succeeded) == 1 and holds != succeeded[0]:
            problems.append(f"round {number}: the failed export {holds} replaced the other")
        if leftovers(out):
            problems.append(f"round {number}: left beside --out: {sorted(leftovers(out))}")
        rows.append(
            f"round {number}: {start}, export {order[1]} started {stagger:.2f} s after "
            f"export {order[0]}; both temporaries at once: {'yes' if watch.both else 'no'}; "
            f"exit {codes[0]}/{codes[1]}; --out holds export {holds}"
            + "".join(f"; export {i} said {line!r}" for i, line in said.items())
        )
    whole = ROUNDS - len({p.split(":")[0] for p in problems})
    overlapped = sum("at once: yes" in row for row in rows)
    if not overlapped:  # Then no sweep ran beside the other export's temporary.
        problems.append("the two exports' temporaries never existed at once")
    figure = (
        f"{whole}/{ROUNDS} races of two exports to one --out: --out whole, one of the two, "
        f"nothing left beside it; both temporaries at once in {overlapped}, both succeeded "
        f"in {sum('exit 0/0' in row for row in rows)}; seed {SEED}"
    )
    print("\n" + "\n".join(rows) + "\n" + figure)
    assert not problems, figure + "\n" + "\n".join(rows + problems)


class _Watch:
    """Lists what is beside ``out`` every 10 ms while a race runs: were both exports'
    temporaries there at once? (Then the later one's sweep ran beside the earlier's.)"""

    def __init__(self, out, runs: dict):
        self.both = False
        self._out, self._runs, self._done = out, runs, threading.Event()
        self._thread = threading.Thread(target=self._look, daemon=True)
        self._thread.start()

    def _look(self) -> None:
        while not self._done.wait(0.01):
            pids = {run.pid for run in list(self._runs.values())}
            self.both |= len(pids) == 2 and pids <= set(leftovers(self._out).values())

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def test_threads_share_one_loaded_export(two_exports):
    """8 threads call one loaded export's __call__ and serving_default with mixed batch
    and image sizes; every result equals the serial result for the same input.

    The threads call a fresh load of the export, so they also trace __call__ for each new
    shape concurrently (a restored __call__ traces once per input shape: about 0.3 s each,
    hence a few sizes only); the serial results come from another load.
    """
    path = str(two_exports.paths[0])
    rng = np.random.default_rng(SEED)
    inputs = [
        tf.constant(rng.random((rng.integers(1, 5), *rng.choice(SIZES, 2), 3), np.float32))
        for _ in range(THREADS * CALLS)
    ]

    def calls(loaded):
        serving = loaded.signatures["serving_default"]
        (output,) = serving.structured_outputs
        return lambda images: (loaded(images).numpy(), serving(images=images)[output].numpy())

    both = calls(tf.saved_model.load(path))
    serial = [both(images) for images in inputs]
    scale = float(np.std(np.concatenate([call for call, _ in serial])))
    assert scale > 1e-2, f"features of scale {scale}: equality would prove nothing"
    both = calls(tf.saved_model.load(path))
    threaded = [None] * len(inputs)
    errors = []
    start = threading.Barrier(THREADS)

    def work(first: int) -> None:
        start.wait()
        try:
            for index in range(first, len(inputs), THREADS):  # Interleaved: mixed shapes.
                threaded[index] = both(inputs[index])
        except Exception as error:  # Reported below.
            errors.append(f"thread {first}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(first,)) for first in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors and all(result is not None for result in threaded), errors
    exact = collections.Counter()
    worst = 0.0
    for expected, actual in zip(serial, threaded, strict=True):
        for name, want, got in zip(("__call__", "serving_default"), expected, actual, strict=True):
            exact[name] += np.array_equal(want, got)
            worst = max(worst, float(np.max(np.abs(want - got))))
    shapes = len({tuple(images.shape) for images in inputs})
    figure = (
        f"{THREADS} threads x {CALLS} calls ({shapes} shapes: batch 1-4, {SIZES} px): "
        f"bit-identical to serial: __call__ {exact['__call__']}/{len(inputs)}, "
        f"serving_default {exact['serving_default']}/{len(inputs)}; largest difference "
        f"{worst:.1e} (features' scale {scale:.2f}); seed {SEED}"
    )
    print(figure)
    assert exact["__call__"] == exact["serving_default"] == len(inputs), figure


STEPS, BATCH, SIZE = 4, 4, 32  # Fine-tuning: SGD steps of BATCH images of SIZE px.


def _fine_tune(path, seed: int) -> tuple[list, list[np.ndarray], list[np.ndarray]]:
    """Fine-tune one export through hub.KerasLayer(trainable=True) in a tf_keras model.

    Everything random comes from ``seed`` (data, head), nothing from a global seed, which
    threads would share. Returns the model's variables, their values before and after.
    """
    import tensorflow_hub as hub
    import tf_keras

    rng = np.random.default_rng(seed)
    images = rng.random((STEPS * BATCH, SIZE, SIZE, 3), np.float32)
    labels = rng.integers(0, 3, STEPS * BATCH)
    head = tf_keras.layers.Dense(3, kernel_initializer=tf_keras.initializers.GlorotUniform(seed))
    model = tf_keras.Sequential(
        [tf_keras.Input((SIZE, SIZE, 3)), hub.KerasLayer(str(path), trainable=True), head]
    )
    model.compile(
        tf_keras.optimizers.SGD(0.1, momentum=0.9),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [w.numpy() for w in model.weights]
    model.fit(images, labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return model.weights, before, [w.numpy() for w in model.weights]


def test_threads_fine_tune_two_copies(two_exports, tmp_path):
    """Two threads fine-tune two copies of one export in one process: each ends with the
    weights of the same run done alone, and the copies share no variable."""
    copies = [shutil.copytree(two_exports.paths[0], tmp_path / f"copy-{i}") for i in (0, 1)]
    seeds = (SEED, SEED + 1)  # Other data and head for each copy: interference would show.
    alone = [_fine_tune(path, seed) for path, seed in zip(copies, seeds, strict=True)]
    together: list = [None, None]
    errors = []
    start = threading.Barrier(2)

    def work(index: int) -> None:
        start.wait()
        try:
            together[index] = _fine_tune(copies[index], seeds[index])
        except Exception as error:  # Reported below.
            errors.append(f"thread {index}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors and None not in together, errors
    rows, problems = [], []
    for index in (0, 1):
        weights, before, after = together[index]
        _, _, expected = alone[index]
        changed = sum(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))
        same = sum(np.array_equal(e, a) for e, a in zip(expected, after, strict=True))
        worst = max(float(np.max(np.abs(e - a))) for e, a in zip(expected, after, strict=True))
        rows.append(
            f"copy {index}: {same}/{len(after)} variables bit-identical to the run alone "
            f"(largest difference {worst:.1e}), {changed} changed by training"
        )
        if same != len(after):
            problems.append(f"copy {index} differs from its run alone")
        if not changed:
            problems.append(f"copy {index}: training changed nothing, so equality proves nothing")
    ids = [{id(w) for w in together[index][0]} for index in (0, 1)]
    handles = [{id(w.handle) for w in together[index][0]} for index in (0, 1)]
    shared = len(ids[0] & ids[1]) + len(handles[0] & handles[1])
    if shared:
        problems.append(f"{shared} variables shared by the two copies")
    figure = (
        f"2 threads fine-tuning 2 copies ({STEPS} steps each): {'; '.join(rows)}; "
        f"{shared} variables shared; seed {SEED}"
    )
    print(figure)
    assert not problems, figure + "\n" + "\n".join(problems)
