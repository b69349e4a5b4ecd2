"""Interrupts a command received, kept so that none is lost on the way.

A command turns SIGINT and SIGTERM into ``KeyboardInterrupt`` (``exporter.command``). That
exception can be swallowed before it unwinds the export: landing inside a C extension's
callback it comes out as another exception type (seen: ``SystemError``), which code that
falls back on ``except Exception`` (TensorFlow's AutoGraph, for one) takes for an ordinary
failure, and carries on. The export then completes from the fallback: a run that was
interrupted would replace ``--out`` with something other than what was asked for.

So the signal is recorded here as well, and each stage boundary (``progress.stage``) raises
it again: the last is the end of ``verify``, right before an export is moved into place.
"""

from __future__ import annotations

_received: list[int] = []


def record(signum: int) -> None:
    """Note that the process received ``signum`` (SIGINT or SIGTERM)."""
    _received.append(signum)


def received() -> int | None:
    """The first interrupting signal received, None if none was."""
    return _received[0] if _received else None


def raise_if_received() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt was received, swallowed or not."""
    if _received:
        raise KeyboardInterrupt(f"signal {_received[0]}")
