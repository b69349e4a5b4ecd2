"""Run the checker in a child process with a time limit per rule and a memory limit.

A SavedModel that passes the op scan can still loop for ever (a ``while_loop`` that never
ends), allocate without bound (a dynamic ``Fill``), or abort the process from a kernel. So
``python -m exporter.check`` runs the rules in a child process (``python -m
exporter.checking.isolated``) that limits its own address space (``RLIMIT_AS``) before it
imports TensorFlow and reports each rule's verdict on a pipe as soon as it has one. If the
child hangs past the time limit (it is killed), dies of a signal or exits early, the rule it
was running becomes a FAIL line that says which; a new child then runs the rules after it,
with that verdict given, so the rest of the report still prints. This module imports no
TensorFlow itself.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from exporter.checking.report import FAIL, Report, Result, Status
from exporter.errors import Error

TIMEOUT_S = 600.0  # A rule of a ViT-B/16 export takes seconds on two cores.


def default_memory_limit() -> int:
    """Half of this machine's physical memory, in bytes: a model may not take the rest."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def check(
    path: str | os.PathLike,
    *,
    task: str | None = None,
    allow_unsafe_ops: bool = False,
    timeout_s: float = TIMEOUT_S,
    memory_limit: int | None = None,
) -> Report:
    """``conformance.check`` in bounded child processes: what hangs or crashes is a FAIL.

    Args:
        path: The SavedModel directory.
        task: As ``conformance.check``.
        allow_unsafe_ops: As ``conformance.check``.
        timeout_s: The most seconds one rule may take.
        memory_limit: The child's address-space limit in bytes; default: half of the
            physical memory.

    Raises:
        UnreadableError: If ``path`` is not a readable SavedModel (as the child says).

    Example:
        >>> check("exports/mobilenet_v2", timeout_s=60).ok
        True
    """
    memory_limit = default_memory_limit() if memory_limit is None else memory_limit
    decided: dict[str, Result] = {}
    while True:
        outcome = _Child(path, task, allow_unsafe_ops, memory_limit, decided).run(timeout_s)
        if isinstance(outcome, Report):
            return outcome
        rule, message = outcome
        if rule is None or rule in decided:  # Died outside any rule: nothing to resume.
            raise UnreadableError(f"The checker could not run on {path}: {message}.")
        decided[rule] = Result(rule, FAIL, message)


class UnreadableError(Error):
    """Raised where ``conformance.check`` raises ``UnreadableError`` (same message)."""


class _Child:
    def __init__(self, path, task, allow_unsafe_ops, memory_limit, decided):
        self.memory_limit = memory_limit
        self.request = {
            "path": str(path),
            "task": task,
            "allow_unsafe_ops": allow_unsafe_ops,
            "decided": {rule: result.message for rule, result in decided.items()},
        }

    def run(self, timeout_s: float) -> Report | tuple[str | None, str]:
        """The report, or ``(rule running when it failed, what happened)``."""
        read, write = os.pipe()
        command = [sys.executable, "-m", "exporter.checking.isolated", str(write)]
        command.append(str(self.memory_limit))
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(write,),
            env={**os.environ, "PYTHONPATH": _package_root(os.environ.get("PYTHONPATH"))},
        )
        os.close(write)
        process.stdin.write(json.dumps(self.request).encode())
        process.stdin.close()
        try:
            return self._follow(process, os.fdopen(read, "rb", buffering=0), timeout_s)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stderr.close()

    def _follow(self, process, pipe, timeout_s: float):
        selector = selectors.DefaultSelector()
        selector.register(pipe, selectors.EVENT_READ)
        rule, started, buffer = None, time.monotonic(), b""
        with pipe:
            while True:
                waited = time.monotonic() - started
                if rule is not None and waited > timeout_s:
                    process.kill()
                    return rule, f"did not finish within {timeout_s:g} s: killed (it may loop)"
                if not selector.select(timeout=1.0):
                    continue
                chunk = pipe.read(65536)
                if not chunk:
                    return rule, self._death(process)
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "report" in message:
                        return _report(message["report"])
                    if "unreadable" in message:
                        raise UnreadableError(message["unreadable"])
                    rule, started = message["start"], time.monotonic()

    def _death(self, process) -> str:
        code = process.wait()
        tail = process.stderr.read().decode(errors="replace").strip().splitlines()
        memory = f"{self.memory_limit / (1 << 30):.3g} GiB"
        out_of_memory = any(
            "MemoryError" in line or "bad_alloc" in line or "OOM" in line for line in tail[-20:]
        )
        if out_of_memory:
            return f"ran out of memory (limit {memory}): the checker died"
        if code < 0:
            name = signal.Signals(-code).name
            return f"the model crashed the checker ({name}; memory limit {memory})"
        last = tail[-1][:200] if tail else "no message"
        return f"the checker exited with status {code} ({last})"


def _package_root(pythonpath: str | None) -> str:
    """PYTHONPATH with the folder that holds this ``exporter`` package first."""
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([root, *([pythonpath] if pythonpath else [])])


def _report(data: dict) -> Report:
    results = [Result(r["rule"], Status(r["status"]), r["message"]) for r in data["rules"]]
    return Report(data["path"], data["task"], results)


def _worker(pipe_fd: int, memory_limit: int) -> None:
    """The child: limit memory, then run the rules, each verdict a line on ``pipe_fd``."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    request = json.loads(sys.stdin.read())
    pipe = os.fdopen(pipe_fd, "w", buffering=1)

    def send(message: dict) -> None:
        pipe.write(json.dumps(message) + "\n")

    from exporter.checking import conformance  # After the limit: TensorFlow loads here.

    decided = {
        rule: conformance.Result(rule, FAIL, message)
        for rule, message in request["decided"].items()
    }

    def progress(rule: str, result) -> None:
        if result is None:
            send({"start": rule})

    try:
        report = conformance.check(
            request["path"],
            task=request["task"],
            allow_unsafe_ops=request["allow_unsafe_ops"],
            decided=decided,
            progress=progress,
        )
    except conformance.UnreadableError as error:
        send({"unreadable": str(error)})
        return
    send({"report": json.loads(report.to_json())})


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))
