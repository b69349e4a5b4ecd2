"""Hidden temporary siblings: where an export or a conversion is written before its rename.

A temporary beside the destination (same directory, so the final rename is atomic) is
named ``.NAME.exporter-tmp-PID-...``: hidden, and traceable to the process that made it,
so that a later run can remove what a killed one left. Python's ``mkdtemp``/``mkstemp``
create it for the owner only (0700 / 0600); it is given the permissions the user's umask
gives a new file, since the rename carries them to the destination.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TMP_TAG = "exporter-tmp"


def umask() -> int:
    """The process's umask (reading it means setting it: it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prefix(destination: Path, tag: str = TMP_TAG) -> str:
    """The name prefix of a hidden sibling of ``destination`` made by this process."""
    return f".{destination.name}.{tag}-{os.getpid()}-"


def directory(destination: Path, tag: str = TMP_TAG) -> Path:
    """Make an empty hidden sibling directory of ``destination``, as a new directory is."""
    path = Path(tempfile.mkdtemp(prefix=prefix(destination, tag), dir=destination.parent))
    os.chmod(path, 0o777 & ~umask())
    return path


def file(destination: Path, content: bytes) -> Path:
    """Write ``content`` to a hidden sibling file of ``destination``, as a new file is."""
    handle, name = tempfile.mkstemp(prefix=prefix(destination), dir=destination.parent)
    with os.fdopen(handle, "wb") as opened:
        opened.write(content)
    os.chmod(name, 0o666 & ~umask())
    return Path(name)


def make_parents(parent: Path) -> list[Path]:
    """Make ``parent`` and the missing folders above it; return those it made, deepest first
    (the order to remove them in, should the write fail)."""
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
    return missing
