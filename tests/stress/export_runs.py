"""What the crash and concurrency stress tests share: a CLI export followed stage by stage,
exports compared by content, and two exports of one small backbone, an "old" and a "new".

(A module, not a conftest.py: tests/conftest.py is imported as ``conftest`` by the tests.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
from conftest import REPO, calibrate_batch_norm, facts_images, keras_reference_for_weights
from tensorflow.core.protobuf import fingerprint_pb2

import exporter
from exporter.making.save import _OLD_TAG
from exporter.siblings import TMP_TAG as _TMP_TAG

# The cheapest real backbone: MobileNet (v1) exports in about 16 s of CPU, MobileNetV2 in 24.
BACKBONE = "mobilenet"
STAGES = ("build", "trace", "save", "verify")  # The lines exporter.progress logs, in order.
TIMEOUT = 300  # Seconds any one export process may run before it is killed as hung.
# One seed for every random choice of the stress tests: printed in their figures.
SEED = int(os.environ.get("EXPORTER_STRESS_SEED", random.SystemRandom().randrange(10**6)))
_DONE = re.compile(r"(?P<stage>\w+)\b.*? done in (?P<seconds>[\d.]+) s")
_TEMPORARY = re.compile(rf"\.(?P<name>.+)\.(?:{_TMP_TAG}|{_OLD_TAG})-(?P<pid>\d+)-.+")


class Export:
    """A ``python -m exporter.feature_vector`` process whose log lines are read as they come.

    Each line is kept with the seconds since the start, so a test can aim a signal at a
    stage. A watchdog kills the process after ``timeout`` seconds (``hung`` is then True).
    """

    def __init__(self, out: Path, weights: Path, *, overwrite: bool = True, timeout=TIMEOUT):
        flags = [f"--backbone={BACKBONE}", f"--weights={weights}", f"--out={out}"]
        command = [sys.executable, "-m", "exporter.feature_vector", *flags]
        command += ["--overwrite"] if overwrite else []
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []  # (seconds since the start, message)
        self.hung = False
        self._watchdog = threading.Timer(timeout, self._kill_hung)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _kill_hung(self) -> None:
        self.hung = True
        self.process.kill()

    def _read(self, line: str) -> str:
        # Our lines are plain ("save ..."); with -v a time comes first, absl's "...] save ...".
        message = line.rstrip("\n").split("] ", 1)[-1]
        self.lines.append((time.monotonic() - self.started, message))
        return message

    def wait_for(self, prefix: str) -> bool:
        """Read lines until one starts with ``prefix``; False if the process ended first."""
        return any(self._read(line).startswith(prefix) for line in self.process.stderr)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self) -> int:
        """Read the rest of the log, wait for the process and return its exit status."""
        for line in self.process.stderr:
            self._read(line)
        code = self.process.wait()
        self._watchdog.cancel()
        self.process.stderr.close()
        return code

    @property
    def log(self) -> str:
        return "\n".join(message for _, message in self.lines)

    def stage(self) -> str:
        """Where the process was when it ended, from what it logged.

        ``start`` (importing, before the first stage), one of ``STAGES`` (from its line to
        the next stage's), ``move`` (after ``verify done``: moving the export into place)
        or ``completed`` (it logged ``exported to``).
        """
        where = "start"
        for _, message in self.lines:
            if message.startswith("exported to "):
                return "completed"
            word = message.split(" ", 1)[0]
            if word in STAGES and message.endswith(" ..."):
                where = word
            elif message.startswith("verify done"):
                where = "move"
        return where

    def stage_lengths(self) -> dict[str, float]:
        """How long each stage took, as the run logged it (``save done in 4.2 s``), and
        ``start``: the seconds until its first stage (right if its lines were read as they came).
        """
        lengths = {}
        for at, message in self.lines:
            if message.split(" ", 1)[0] in STAGES and message.endswith(" ..."):
                lengths.setdefault("start", at)
            done = _DONE.fullmatch(message)
            if done and done["stage"] in STAGES:
                lengths[done["stage"]] = float(done["seconds"])
        return lengths


def content(root: Path) -> dict[str, str] | None:
    """Every file and folder under ``root`` with a hash of its bytes; None if it is missing.

    ``fingerprint.pb`` holds a random uuid that TensorFlow draws for each save: it is
    compared without it. Two exports of the same weights have the same content.
    """
    if not root.is_dir():
        return None
    result = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            result[name] = "folder"
            continue
        data = path.read_bytes()
        if name == "fingerprint.pb":
            fingerprint = fingerprint_pb2.FingerprintDef.FromString(data)
            fingerprint.ClearField("uuid")
            data = fingerprint.SerializeToString(deterministic=True)
        result[name] = hashlib.sha256(data).hexdigest()
    return result


def leftovers(out: Path) -> dict[str, int]:
    """Everything beside ``out`` but ``out`` itself: name -> pid for exporter's temporaries,
    -1 for anything else."""
    found = {}
    for path in out.parent.iterdir():
        if path.name != out.name:
            match = _TEMPORARY.fullmatch(path.name)
            ours = match is not None and match["name"] == out.name
            found[path.name] = int(match["pid"]) if ours else -1
    return found


def run_check(path: Path) -> subprocess.Popen:
    """Start ``python -m exporter.check PATH`` (its output piped, as one text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "exporter.check", str(path)], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TwoExports:
    weights: tuple[Path, Path]
    paths: tuple[Path, Path]
    contents: tuple[dict, dict]
    lengths: dict[str, float]  # Export.stage_lengths(), the slower of the two runs.


def _weights(path: Path, seed: int) -> Path:
    # Calibrated batch norm: features of order 1, so that comparing outputs means something.
    keras.utils.set_random_seed(seed)
    facts = exporter.get_backbone(BACKBONE)
    model = keras_reference_for_weights(facts, include_top=False)
    calibrate_batch_norm(model, facts_images(facts, 64))
    model.save_weights(path)
    return path


_made: dict[Path, TwoExports] = {}


def two_exports(workdir: Path) -> TwoExports:
    """Two exports through the CLI, as the stress tests' own runs make them, that differ
    only in their weights, each passed by ``python -m exporter.check``: an export
    byte-identical to one of them passes it too. Made once per session (``workdir``)."""
    if workdir not in _made:
        _made[workdir] = _two_exports(workdir / "stress")
    return _made[workdir]


def _two_exports(root: Path) -> TwoExports:
    root.mkdir()
    weights = tuple(_weights(root / f"{BACKBONE}-{seed}.weights.h5", seed) for seed in (1, 2))
    paths = (root / "export-1", root / "export-2")
    pairs = zip(paths, weights, strict=True)
    runs = [Export(path, source, overwrite=False) for path, source in pairs]
    for run in runs:
        assert run.finish() == 0, run.log
    checks = [run_check(path) for path in paths]
    for check in checks:
        report = check.communicate(timeout=TIMEOUT)[0]
        assert check.returncode == 0, report
    contents = (content(paths[0]), content(paths[1]))
    assert contents[0] != contents[1]
    # The first run's lines were read as they came, the second's once the first was done.
    lengths = [run.stage_lengths() for run in runs]
    slower = {stage: max(each[stage] for each in lengths) for stage in STAGES}
    return TwoExports(weights, paths, contents, {"start": lengths[0]["start"], **slower})
