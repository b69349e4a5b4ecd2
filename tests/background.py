"""Process work of slow tests, started as soon as pytest has collected, run beside the suite.

CI has two cores and the suite is one stream of tests: on its own it keeps one core busy.
Work that a test only waits for, in processes of its own (the zoo's backbones, the JAX and
PyTorch workers, a fresh virtual environment), is queued here when collection ends and run
by a background thread, one job at a time, while the suite goes on; a second thread joins
once the zoo's tests are reached (``release``), the rest of the suite being done.

A job is called with the runner (``Runner.run`` starts a process that ``stop`` kills).
A test reads its job's result with ``result(key)``: it waits if the job is running, and
runs the job itself, at once, if no thread has started it yet (the suite then never waits
for a queue). A job raises as the test would: its exception is the test's failure.

A job runs in a thread of the pytest process: it may start processes and read and write
files, but must not use TensorFlow or Keras there (the suite's own thread does). What a
test checks in process (loading an export, comparing outputs) stays in the test.
"""

from __future__ import annotations

import collections
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Runner:
    """Jobs by key, worked in the order given by up to ``jobs`` threads (one until ``release``)."""

    def __init__(self, jobs: dict[str, Callable[[Runner], Any]], threads: int):
        self.threads = max(1, threads)
        self.results: dict[str, Future] = {key: Future() for key in jobs}
        self.lines: list[str] = []  # One per finished job: its wall time, as it says.
        self._jobs = jobs
        self._todo = collections.deque(jobs)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._processes: set[subprocess.Popen] = set()
        self._workers = [threading.Thread(target=self._work, daemon=True)]
        self._workers[0].start()

    def release(self) -> None:
        """Start the other threads: the rest of the suite is done."""
        while len(self._workers) < self.threads:
            self._workers.append(threading.Thread(target=self._work, daemon=True))
            self._workers[-1].start()

    def result(self, key: str) -> Any:
        """The job's result (its exception raised); run it here and now if not yet started."""
        if self._take(key):
            self._run(key)
        return self.results[key].result()

    def stop(self) -> None:
        """Drop what has not started and kill the processes of what is running."""
        self._stopped.set()
        with self._lock:
            self._todo.clear()
            for process in self._processes:
                process.kill()

    def popen(self, command: list[str], **kwargs) -> subprocess.Popen:
        """``subprocess.Popen``, killed by ``stop`` (the session ended or was interrupted)."""
        with self._lock:
            if self._stopped.is_set():
                raise RuntimeError("the test session ended first")
            process = subprocess.Popen(command, **kwargs)
            self._processes.add(process)
        return process

    def run(self, command: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run(..., capture_output=True, text=True)`` through ``popen``; a
        process still running after ``timeout`` seconds is killed, and says so in stderr."""
        process = self.popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            stderr += f"\nkilled after {timeout} s"
        finally:
            with self._lock:
                self._processes.discard(process)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def _take(self, key: str) -> bool:
        with self._lock:
            if key not in self._todo:
                return False
            self._todo.remove(key)
            return True

    def _work(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                if not self._todo:
                    return
                key = self._todo.popleft()
            self._run(key)

    def _run(self, key: str) -> None:
        start = time.perf_counter()
        try:
            value = self._jobs[key](self)
        except BaseException as error:  # Reported by the job's test.
            self.results[key].set_exception(error)
            outcome = f"failed: {type(error).__name__}"
        else:
            self.results[key].set_result(value)
            outcome = getattr(value, "summary", "done")  # A job's own words, if it has any.
        self.lines.append(f"{key}: {outcome}, {time.perf_counter() - start:.0f} s")
