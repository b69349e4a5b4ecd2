"""Runs ``zoo_check.py`` for each selected backbone in the background, one process each.

The zoo starts as soon as pytest has collected, with one process at a time while the rest
of the suite runs, and a second one once the zoo's own tests are reached (``release``):
on CI's two cores the zoo then overlaps the suite instead of following it.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

WORKER = Path(__file__).with_name("zoo_check.py")
TIMEOUT_S = 1200
# Whose own ImageNet classifier is exported too, and whose max pooling is checked: the
# smallest of each family, which covers every shape of head (pooled Dense, dropout, keepdims
# pooling into a convolution, LayerNorm, VGG's flatten at a fixed size) and every pooled
# head (ConvNeXt's LayerNorm after pooling) while CI stays under 45 minutes.
OWN_HEADS = (
    "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_b0",
    "inception_resnet_v2", "inception_v3", "mobilenet", "mobilenet_v2", "mobilenet_v3_small",
    "nasnet_mobile", "resnet50", "resnet50_v2", "vgg16", "vgg19", "xception",
)  # fmt: skip


# The zoo processes that took longest in a whole-suite run (2026-11-27, 2 cores: 157 to 212 s
# each; the median is 88 s). They start first, so that the zoo's last minutes are small
# backbones sharing the two cores, not one large one alone on a core.
LONGEST_FIRST = (
    "inception_resnet_v2", "nasnet_large", "efficientnet_v2_l", "convnext_xlarge",
    "nasnet_mobile", "convnext_large", "efficientnet_b7", "convnext_base",
)  # fmt: skip


class ZooRunner:
    """A queue of backbone names, worked by up to ``jobs`` threads that each run a process."""

    def __init__(self, names: list[str], repo: Path, jobs: int):
        self.repo, self.jobs = repo, max(1, jobs)
        self.results: dict[str, Future] = {name: Future() for name in names}
        self.lines: list[str] = []  # One per finished backbone: wall time and check times.
        self._todo: queue.Queue[str] = queue.Queue()
        for name in sorted(names, key=_start_order):
            self._todo.put(name)
        self._stopped = threading.Event()
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True)]
        self._threads[0].start()

    def release(self) -> None:
        """Start the other workers: the rest of the suite is done."""
        while len(self._threads) < self.jobs:
            self._threads.append(threading.Thread(target=self._work, daemon=True))
            self._threads[-1].start()

    def stop(self) -> None:
        """Drop what has not started and end what is running."""
        self._stopped.set()
        with self._lock:
            for process in self._processes:
                process.kill()

    def _work(self) -> None:
        while not self._stopped.is_set():
            try:
                name = self._todo.get_nowait()
            except queue.Empty:
                return
            try:
                self.results[name].set_result(self._run(name))
            except Exception as error:  # Reported by that backbone's test.
                self.results[name].set_exception(error)

    def _run(self, name: str) -> subprocess.CompletedProcess:
        environ = {**os.environ, "PYTHONPATH": str(self.repo), "TF_CPP_MIN_LOG_LEVEL": "2"}
        # Each process gets its share of the cores rather than all of them.
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
        environ.update(TF_NUM_INTRAOP_THREADS=threads, OMP_NUM_THREADS=threads)
        command = [sys.executable, str(WORKER), name, *(["--own_head"] * (name in OWN_HEADS))]
        with self._lock:
            if self._stopped.is_set():
                raise RuntimeError("the test session ended first")
            process = subprocess.Popen(
                command, cwd=self.repo, env=environ, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            self._processes.add(process)
        start = time.perf_counter()
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            stderr += f"\nkilled after {TIMEOUT_S} s"
        finally:
            with self._lock:
                self._processes.discard(process)
        passed = [line.split(": ", 1)[-1] for line in stdout.splitlines() if " passed in " in line]
        checks = "; ".join(passed)
        self.lines.append(
            f"{name}: exit {process.returncode} after {time.perf_counter() - start:.0f} s"
            f" ({checks or 'no check finished'})"
        )
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _start_order(name: str) -> tuple[int, int]:
    """The longest first (``LONGEST_FIRST``), then the rest in the order given."""
    return (0, LONGEST_FIRST.index(name)) if name in LONGEST_FIRST else (1, 0)
