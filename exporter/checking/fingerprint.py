"""The content fingerprint of an export: SHA-256 digests of its graph and its variables.

The export records it in ``metadata.json``; ``python -m exporter.check`` recomputes it, so
any later change to ``saved_model.pb`` or to a file under ``variables/`` is detected, even
one that loads and runs. TensorFlow's own ``fingerprint.pb`` is not a substitute: it holds
a random UUID per save and nothing reads it on load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from exporter import spec
from exporter.checking import files
from exporter.errors import Error

ALGORITHM = "sha256"
VARIABLES_DIR = "variables"
_CHUNK = 1 << 20


class FingerprintError(Error, ValueError):
    """A covered file that cannot be hashed: missing, not a regular file, unreadable."""


def covered_files(directory: Path) -> list[str]:
    """The relative paths a fingerprint covers, sorted: the graph and every variables file."""
    directory = Path(directory)
    variables = directory / VARIABLES_DIR
    found = [spec.SAVED_MODEL_FILE]
    if variables.is_dir() and not variables.is_symlink():
        found += [f"{VARIABLES_DIR}/{p.name}" for p in variables.iterdir()]
    return sorted(found)


def file_digest(path: Path) -> str:
    """The SHA-256 of a regular file, read up to its size when opened (never a device)."""
    try:
        file, left = files.open_regular(path)  # Never blocks, on a FIFO either.
        with file:
            digest = hashlib.sha256()
            while left > 0:
                chunk = file.read(min(_CHUNK, left))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
    except files.UnsafeFileError as error:
        raise FingerprintError(str(error)) from None
    except OSError as error:
        raise FingerprintError(f"cannot read {path}: {error.strerror or error}") from None
    return digest.hexdigest()


def compute(directory: Path) -> dict:
    """``{"algorithm", "files": {relative path: digest}, "digest"}`` for ``directory``.

    ``digest`` covers the file list and every file's digest, so a file added to or
    removed from ``variables/`` changes it too.

    Raises:
        FingerprintError: If a covered file cannot be hashed.
    """
    directory = Path(directory)
    files = {name: file_digest(directory / name) for name in covered_files(directory)}
    return {"algorithm": ALGORITHM, "files": files, "digest": _combined(files)}


def _combined(files: dict) -> str:
    lines = "".join(f"{name}\t{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def mismatches(recorded: dict, directory: Path) -> list[str]:
    """How ``directory`` differs from the ``recorded`` fingerprint; empty when it matches.

    Raises:
        FingerprintError: If ``recorded`` is malformed or a covered file cannot be hashed.
    """
    files = recorded.get("files") if isinstance(recorded, dict) else None
    if (
        not isinstance(files, dict)
        or recorded.get("algorithm") != ALGORITHM
        or not all(isinstance(v, str) for v in files.values())
        or recorded.get("digest") != _combined(files)
    ):
        raise FingerprintError(
            f"the recorded fingerprint is malformed: expected {{'algorithm': '{ALGORITHM}', "
            f"'files': {{path: digest}}, 'digest': ...}} whose digest covers its files"
        )
    present = covered_files(directory)
    problems = [f"{name} is missing" for name in sorted(set(files) - set(present))]
    problems += [f"{name} was added" for name in sorted(set(present) - set(files))]
    for name in sorted(set(files) & set(present)):
        if file_digest(Path(directory) / name) != files[name]:
            problems.append(f"{name} changed")
    return problems
