"""Child processes: run one command to its end, with its wall time, CPU time and peak RSS."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# How the peak resident set of a child is measured (stated in every report).
RSS_METHOD = (
    "ru_maxrss of the measured process's own rusage, read with os.wait4(pid) by a small "
    "launcher (python -S) that spawned it (the per-child form of "
    "getrusage(RUSAGE_CHILDREN); not spawned from the harness itself, whose own peak Linux "
    "would count as the child's floor). Linux's wait4 reports the larger of the process's "
    "own peak and that of any child it waited for (a subprocess it ran is counted, as the "
    "larger, not the sum)"
)
# The same launcher can also sample the whole process tree (the measured process and every
# descendant alive at the time): the sum of their resident sets (statm), the largest sum seen.
TREE_RSS_METHOD = (
    "the largest sum of the resident sets (/proc/PID/statm) of the measured process and all "
    "its descendants, sampled every {every:g} s by the launcher (pages shared between two "
    "processes count twice; a peak shorter than the interval can be missed)"
)


@dataclasses.dataclass
class ChildRun:
    """One finished child process, as the parent saw it."""

    returncode: int
    wall_s: float
    peak_rss_bytes: int
    cpu_s: float
    log: Path
    timed_out: bool = False
    tree_peak_rss_bytes: int | None = None  # With ``sample_tree``: the sampled tree's peak.

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the child's output (empty if its log is unreadable)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# Spawns the measured command, waits for it and writes its wall time and rusage as JSON to
# argv[1]; exits with its status. It runs as `python -S -c` (a few MB): Linux gives a child the
# peak resident set of the address space it was spawned from (exec keeps the larger of the two
# as ru_maxrss), so a child spawned straight from a harness holding TensorFlow would report at
# least the harness' own peak.
_LAUNCHER = """
import json, os, sys, threading, time
out, every, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
page = os.sysconf("SC_PAGE_SIZE")

def tree_rss(pid):
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            pass
    return total

peak, done = [0], threading.Event()

def sample(pid):
    while not done.wait(every):
        peak[0] = max(peak[0], tree_rss(pid))

start = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
if every > 0:
    threading.Thread(target=sample, args=(pid,), daemon=True).start()
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
done.set()
with open(out, "w") as f:
    json.dump({"wall_s": wall, "maxrss": usage.ru_maxrss,
               "cpu_s": usage.ru_utime + usage.ru_stime,
               "tree_rss": peak[0] if every > 0 else None}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(
    argv: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: float | None = None,
    sample_tree: float | None = None,
) -> ChildRun:  # Long for its docstring; the spawn, waits and kills share one process handle.
    """Run ``argv`` to its end with output to ``log``; time it and read its own rusage.

    The wall time runs from just before the spawn to the reaping ``wait4``: the whole
    process, interpreter start and imports included. The command runs under a small launcher
    (see ``_LAUNCHER``) in a process group of its own, killed on timeout or when the harness
    is interrupted.

    Args:
        argv: The command; ``argv[0]`` is looked up on ``PATH``.
        log: Where its stdout and stderr go (its rusage goes beside it, ``.rusage.json``).
        cwd: Its working directory (this process's when None).
        env: Its environment (this process's when None).
        timeout: Seconds before it is killed (no limit when None).
        sample_tree: Seconds between samples of the process tree's summed resident set
            (``TREE_RSS_METHOD``; Linux only); None samples nothing.

    Returns:
        Its exit status, wall time, peak RSS and CPU time (zeros when killed before the
        launcher could write them), and the tree's sampled peak with ``sample_tree``. CPU
        time, like the peak RSS, includes the children it waited for.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    usage_file = log.with_suffix(".rusage.json")
    usage_file.unlink(missing_ok=True)
    timed_out = False
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(usage_file), str(sample_tree or 0), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        wall = time.perf_counter() - start
    try:
        usage = json.loads(usage_file.read_text())
    except (OSError, ValueError):  # Killed before it could write: no rusage.
        usage = {"wall_s": wall, "maxrss": 0, "cpu_s": 0.0, "tree_rss": None}
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return ChildRun(
        returncode=proc.returncode,
        wall_s=usage["wall_s"],
        peak_rss_bytes=usage["maxrss"] * scale,
        cpu_s=usage["cpu_s"],
        log=log,
        timed_out=timed_out,
        tree_peak_rss_bytes=usage.get("tree_rss"),
    )
