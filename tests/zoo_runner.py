"""The zoo's jobs for the background runner (tests/background.py): ``zoo_check.py`` for
each selected backbone, one process each, started when pytest has collected, after the
other slow tests' jobs (which the suite needs sooner), longest first."""

from __future__ import annotations

import os
import subprocess
import sys
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


def check(runner, *, name: str, repo: Path, threads: int) -> subprocess.CompletedProcess:
    """One backbone's ``zoo_check.py`` process: a job of tests/background.py's runner."""
    environ = {**os.environ, "PYTHONPATH": str(repo), "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Each process gets its share of the cores rather than all of them.
    environ.update(TF_NUM_INTRAOP_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    command = [sys.executable, str(WORKER), name, *(["--own_head"] * (name in OWN_HEADS))]
    done = runner.run(command, cwd=repo, env=environ, timeout=TIMEOUT_S)
    passed = [line.split(": ", 1)[-1] for line in done.stdout.splitlines() if " passed in " in line]
    done.summary = f"exit {done.returncode} ({'; '.join(passed) or 'no check finished'})"
    return done


def order(names: list[str]) -> list[str]:
    """The order the zoo's processes start in (``LONGEST_FIRST``)."""
    return sorted(names, key=_start_order)


def _start_order(name: str) -> tuple[int, int]:
    """The longest first (``LONGEST_FIRST``), then the rest in the order given."""
    return (0, LONGEST_FIRST.index(name)) if name in LONGEST_FIRST else (1, 0)
