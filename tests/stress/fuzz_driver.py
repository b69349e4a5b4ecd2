"""Run mutants through a long-lived checker process (fuzz_worker.py) under a deadline each.

A hang is killed at the deadline, a crash (signal, abort) ends the worker: either way that
mutant gets its verdict and a fresh worker takes the next one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = Path(__file__).with_name("fuzz_worker.py")
STARTUP_S = 180  # Importing TensorFlow on a busy machine.
# The verdicts a test must not see: all but exit 1 or 2 with a message.
BAD = ("false pass", "traceback", "crash", "hang", "no message")


@dataclasses.dataclass
class Outcome:
    """What one check of one SavedModel gave."""

    verdict: str  # "exit 1", "exit 2", or one of BAD.
    code: int | None
    seconds: float
    message: str  # The first FAIL line or error line; or what went wrong.
    detail: str = ""  # The output; a traceback; the stderr tail of a crash or hang.


def judge(
    code: int | None, stdout: str, stderr: str, rules: int, logs: bool = False
) -> tuple[str, str]:
    """The verdict and message of a finished check: exit 1 or 2 with a one-line message.

    ``logs``: stderr may start with TensorFlow's own log lines (a fresh process's).
    """
    if code == 0:
        return "false pass", stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if code == 2:
        lines = stderr.strip().splitlines()[-1:] if logs else stderr.strip().splitlines()
        if stdout == "" and len(lines) == 1 and lines[0].startswith("error: "):
            return "exit 2", lines[0]
        return "no message", f"exit 2 with stderr {stderr[-300:]!r} and stdout {stdout[-300:]!r}"
    if code == 1:
        lines = stdout.strip().splitlines()
        failed = [line.strip() for line in lines if line.strip().startswith("FAIL ")]
        # A header, one line per rule, a summary: a message with a line break breaks that.
        if failed and len(lines) == rules + 2 and lines[-1].startswith("NOT CONFORMING"):
            return "exit 1", failed[0]
        return "no message", f"exit 1 with stdout {stdout[-600:]!r}"
    return "no message", f"exit {code}: {(stderr or stdout)[-300:]!r}"


def statuses(stdout: str) -> list[tuple[str, str]]:
    """``(rule, status)`` for each rule line of a text report."""
    found = []
    for line in stdout.splitlines():
        words = line.split()
        if (
            line.startswith("  ")
            and len(words) >= 2
            and words[0] in ("PASS", "FAIL", "WARN", "SKIP")
        ):
            found.append((words[1], words[0]))
    return found


def cli_check(path: Path, repo: Path, rules: int, deadline_s: float = 60.0) -> Outcome:
    """Check ``path`` with ``python -m exporter.check PATH`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-m", "exporter.check", str(path)],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            seconds = time.monotonic() - start
            return Outcome("hang", None, seconds, f"no exit in {deadline_s:.0f} s", stderr[-2000:])
    seconds = time.monotonic() - start
    code = process.returncode
    if code < 0:
        last = (stderr.strip().splitlines() or [""])[-1][:300]
        message = f"died ({signal.Signals(-code).name}): {last}"
        return Outcome("crash", code, seconds, message, stderr[-2000:])
    if "Traceback (most recent call last)" in stderr:
        last = stderr.strip().splitlines()[-1]
        return Outcome("traceback", code, seconds, last, stderr[-4000:])
    verdict, message = judge(code, stdout, stderr, rules, logs=True)
    return Outcome(verdict, code, seconds, message, stdout + stderr[-2000:])


class Worker:
    """One fuzz_worker.py process, restarted after it crashes or hangs."""

    def __init__(self, repo: Path, deadline_s: float = 60.0):
        self.repo, self.deadline_s = repo, deadline_s
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open until close().
        self.starts = 0
        self._buffer = b""

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.repo), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            cwd=self.repo,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )
        self.starts += 1
        self._buffer = b""
        ready = self._answer(STARTUP_S)
        if ready is None or not ready.get("ready"):
            self.stop()
            raise RuntimeError(f"the fuzz worker did not start: {self._log_tail(0)}")

    def _answer(self, timeout: float) -> dict | None:
        """The next answer line; None on timeout (the process still runs) or at end of file."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return None
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _log_tail(self, offset: int) -> str:
        self.log.seek(offset)
        text = self.log.read().decode("utf-8", "replace")
        self.log.seek(0, os.SEEK_END)
        return text[-2000:]

    def check(self, path: Path, rules: int) -> Outcome:
        """Check ``path`` as ``python -m exporter.check PATH`` would, within the deadline."""
        if self.process is None:
            self._start()
        offset = self.log.seek(0, os.SEEK_END)
        start = time.monotonic()
        try:
            self.process.stdin.write(f"{path}\n".encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # It died; the answer below is None.
        answer = self._answer(self.deadline_s)
        seconds = time.monotonic() - start
        if answer is None:
            try:  # At end of file it is ending (an abort may take a moment to dump its stack).
                self.process.wait(timeout=max(0.0, self.deadline_s - seconds) + 5)
                alive = False
            except subprocess.TimeoutExpired:
                alive = True
            self.stop()
            status = self.process.returncode
            self.process = None
            tail = self._log_tail(offset)
            if alive:
                return Outcome("hang", None, seconds, f"no answer in {self.deadline_s:.0f} s", tail)
            name = signal.Signals(-status).name if status < 0 else f"exit {status}"
            last = (tail.strip().splitlines() or [""])[-1][:300]
            return Outcome("crash", status, seconds, f"worker died ({name}): {last}", tail)
        if answer["traceback"] is not None:
            trace = answer["traceback"]
            return Outcome("traceback", None, seconds, trace.strip().splitlines()[-1], trace)
        verdict, message = judge(answer["code"], answer["stdout"], answer["stderr"], rules)
        output = answer["stdout"] + answer["stderr"]
        return Outcome(verdict, answer["code"], seconds, message, output)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.stop()
        self.log.close()
