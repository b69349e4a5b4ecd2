"""Timed stages, logged so a user can see where a slow export spends its time.

The ``exporter`` logger follows Python's rule for libraries: it has a ``NullHandler`` and
propagates, so its records (``build mobilenet_v2 done in 1.7 s``, at INFO) go wherever the
application's logging sends them, ``assertLogs`` and pytest's ``caplog`` included, and a
bare ``import exporter`` prints nothing of its own. Our commands, and a Python user who
wants the same plain lines, call ``enable_stage_lines()``: a handler that writes them to
standard error as they are, and no propagation (so they are not printed twice).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from exporter import interrupts

logger = logging.getLogger("exporter")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line comes (test runners replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        del value  # StreamHandler sets it; sys.stderr is read at each line instead.


_handler = _StderrHandler()
_handler.setFormatter(logging.Formatter("%(message)s"))
logger.addHandler(logging.NullHandler())


def enable_stage_lines(on: bool = True) -> None:
    """Print our stage lines on standard error, plain, at INFO and above (or stop).

    The one line a script adds for the output our commands show; without it, the records
    go to the application's own logging configuration (``logging.basicConfig(level=
    logging.INFO)`` shows them too, in its format).

    Example:
        >>> import exporter
        >>> exporter.enable_stage_lines()
        >>> exporter.export_feature_vector("mobilenet_v2", "/tmp/fv", weights="none")
    """
    if on:
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    else:
        logger.removeHandler(_handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def show_times(on: bool = True) -> None:
    """Start each of our lines with the time (a CLI's ``--verbosity``), or stop."""
    _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s" if on else "%(message)s"))


@contextlib.contextmanager
def stage(name: str):
    """Log the start of ``name`` and, when it ends, how long it took.

    An interrupt received before or during the stage is raised at its start or end, even
    if something inside swallowed it (``exporter.interrupts``).
    """
    interrupts.raise_if_received()
    logger.info("%s ...", name)
    start = time.perf_counter()
    yield
    interrupts.raise_if_received()
    logger.info("%s done in %.1f s", name, time.perf_counter() - start)
