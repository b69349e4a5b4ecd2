"""Timed stages, logged so a user can see where a slow export spends its time.

The ``exporter`` logger prints its lines itself, to standard error, as plain text
(``build mobilenet_v2 done in 1.7 s``): from Python, where nothing else would show an INFO
line, and in our CLIs, where absl's handler would put its prefix on each. It does not pass
them on to the root logger. To silence them, ``logging.getLogger("exporter").setLevel(
logging.WARNING)``; to route them through your own logging, remove its handler and set its
``propagate`` back to True.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

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
logger.addHandler(_handler)
logger.setLevel(logging.INFO)
logger.propagate = False


def show_times(on: bool = True) -> None:
    """Start each of our lines with the time (a CLI's ``--verbosity``), or stop."""
    _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s" if on else "%(message)s"))


@contextlib.contextmanager
def stage(name: str):
    """Log the start of ``name`` and, when it ends, how long it took."""
    logger.info("%s ...", name)
    start = time.perf_counter()
    yield
    logger.info("%s done in %.1f s", name, time.perf_counter() - start)
