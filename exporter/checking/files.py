"""Open files of a SavedModel that strangers send: regular files only, never blocking.

A FIFO blocks whoever opens it until someone writes to it; ``/dev/zero`` never ends. A
SavedModel may hold either (or a link to one) under any name, so the checker opens its
files through these functions: without blocking, and refusing anything but a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from exporter.errors import Error


class UnsafeFileError(Error, ValueError):
    """Not read: not a regular file (a FIFO, a device, a socket, a directory), or too large."""


def kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words."""
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
        stat.S_ISREG: "a regular file",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` (links followed) for reading; return the file and its size then.

    Raises:
        UnsafeFileError: If it is not a regular file.
        OSError: If it cannot be opened.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(
                f"Expected {path} to be a regular file. Received {kind(info.st_mode)}."
            )
        return os.fdopen(descriptor, "rb"), info.st_size
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: Path, limit: int, why: str = "") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (``why``: the limit's
    reason, for the message).

    Raises:
        UnsafeFileError: If it is not a regular file, or is larger than ``limit``.
        OSError: If it cannot be read.
    """
    file, size = open_regular(path)
    with file:
        if size > limit:
            reason = f" ({why})" if why else ""
            raise UnsafeFileError(
                f"Expected {path} to be at most {limit} bytes{reason}. Received {size} bytes."
            )
        return file.read(limit)  # Not beyond the limit, even if it grew since.
