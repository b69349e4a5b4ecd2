"""The machine a run is on: CPU, cores, memory, load, library versions, the commit and the date."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path


def _first_line_of(path: str, prefix: str) -> str | None:
    """The value after the colon of ``path``'s first line starting with ``prefix``."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(repo: Path, *args: str) -> str | None:
    """``git ARGS``' stripped output in ``repo``, or None when it fails."""
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine_info(repo: Path, exporter_version: str | None = None) -> dict:
    """CPU, cores, memory, load, versions, the commit and the date of this run.

    Args:
        repo: The checkout whose commit (and whether it is dirty) is recorded.
        exporter_version: The version of exporter measured, if known.

    Returns:
        The report's ``machine`` entry (``date``, ``stamp``, ``cpu``, ``versions``, ...).
    """
    now = datetime.datetime.now(datetime.UTC)
    memory = _first_line_of("/proc/meminfo", "MemTotal")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "date": now.isoformat(timespec="seconds"),
        "stamp": now.strftime("%Y%m%dT%H%M%SZ"),
        "cpu": _first_line_of("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "memory_bytes": int(memory.split()[0]) * 1024 if memory else None,
        "load_average_start": load_average(),
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("tensorflow", "keras", "tf-keras", "tensorflow-hub", "numpy", "h5py")
        },
        "exporter": exporter_version,
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(status),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
