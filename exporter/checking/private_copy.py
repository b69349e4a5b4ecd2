"""Copy a SavedModel into a private folder, so that TensorFlow loads exactly what was checked.

``savedmodel.load`` reads ``saved_model.pb`` once, scans those bytes, and writes them here;
the variables, ``fingerprint.pb`` and the assets are copied beside them, regular files only,
and links that point outside the SavedModel are refused. TensorFlow then loads the copy:
swapping or editing the user's files after the scan changes nothing that runs.

The folder is made with ``tempfile.mkdtemp`` (mode 0700). ``release`` removes it once the
variables are restored, except the assets of a SavedModel that has any: a loaded object
keeps their paths (``obj.labels_file``), so they stay until the process exits.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from exporter import spec
from exporter.checking import files
from exporter.errors import Error

# What TensorFlow reads of a SavedModel besides saved_model.pb (assets: their paths).
_FOLDERS = ("variables", "assets")
_FINGERPRINT = "fingerprint.pb"
_CHUNK = 1 << 20
_kept: list[Path] = []


class CopyError(Error, ValueError):
    """A file of the SavedModel that must not be given to TensorFlow; one line says why."""


def make(source: str, graph: bytes, remote: bool) -> Path:
    """A private folder holding ``graph`` as ``saved_model.pb`` and copies of the rest.

    Args:
        source: The SavedModel directory (local, or any filesystem TensorFlow reads).
        graph: The bytes of ``saved_model.pb`` that were read and scanned.
        remote: Whether ``source`` is read through TensorFlow's file systems.

    Raises:
        CopyError: If a file is not a regular file, or links outside the SavedModel.
        OSError: If a file cannot be read or the copy cannot be written.
    """
    root = Path(tempfile.mkdtemp(prefix="exporter-load-"))
    try:
        (root / spec.SAVED_MODEL_FILE).write_bytes(graph)
        copy = _copy_remote if remote else _copy_local
        for name in (*_FOLDERS, _FINGERPRINT):
            copy(source, name, root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


def release(root: Path, keep_assets: bool) -> None:
    """Remove the copy after loading; assets the loaded object points at stay until exit
    (``remove_kept``), and an empty ``assets`` folder goes at once."""
    assets = root / "assets"
    if not keep_assets or not assets.is_dir() or not any(assets.iterdir()):
        shutil.rmtree(root, ignore_errors=True)
        return
    for entry in root.iterdir():
        if entry.name != "assets":
            (shutil.rmtree if entry.is_dir() else Path.unlink)(entry)
    if not _kept:
        atexit.register(remove_kept)
    _kept.append(root)


def remove_kept() -> None:
    """Remove the assets kept for loaded objects: at exit, or by a process that ends without
    running exit handlers (``os._exit``) and has no use for the objects any more."""
    while _kept:
        shutil.rmtree(_kept.pop(), ignore_errors=True)


def _copy_local(source: str, name: str, root: Path) -> None:
    top = Path(source).resolve()
    start = Path(source, name)
    if not start.exists() and not start.is_symlink():
        return
    for path in [start, *sorted(start.rglob("*"))] if start.is_dir() else [start]:
        relative = path.relative_to(source)
        resolved = path.resolve()
        if top not in resolved.parents:
            raise CopyError(
                f"{relative} is a link to {resolved}, outside the SavedModel: refusing to read it"
            )
        if path.is_dir():
            (root / relative).mkdir(exist_ok=True)
            continue
        try:
            file, _ = files.open_regular(path)
        except files.UnsafeFileError:
            mode = path.stat().st_mode
            raise CopyError(
                f"{relative} is {files.kind(mode)}, not a regular file: TensorFlow would "
                "block or read it without end"
            ) from None
        with file, open(root / relative, "wb") as target:
            shutil.copyfileobj(file, target, _CHUNK)


def _copy_remote(source: str, name: str, root: Path) -> None:
    start = f"{source.rstrip('/')}/{name}"
    if not tf.io.gfile.exists(start):
        return
    if not tf.io.gfile.isdir(start):
        tf.io.gfile.copy(start, str(root / name))
        return
    for folder, _, names in tf.io.gfile.walk(start):
        relative = folder[len(source.rstrip("/")) + 1 :]
        (root / relative).mkdir(parents=True, exist_ok=True)
        for file in names:
            tf.io.gfile.copy(f"{folder}/{file}", str(root / relative / file))
