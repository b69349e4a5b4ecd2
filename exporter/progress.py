"""Timed stages, logged so a user can see where a slow export spends its time."""

from __future__ import annotations

import contextlib
import logging
import time

logger = logging.getLogger("exporter")


@contextlib.contextmanager
def stage(name: str):
    """Log the start of ``name`` and, when it ends, how long it took."""
    logger.info("%s ...", name)
    start = time.perf_counter()
    yield
    logger.info("%s done in %.1f s", name, time.perf_counter() - start)
