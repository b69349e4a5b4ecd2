"""The one way into a SavedModel, ours or anyone's: read once, scan, copy, only then load.

Every part of the package that opens a SavedModel (the checker, an export's verification,
conversion, batch embedding and the Keras layer) goes through ``load``: it reads
``saved_model.pb`` once without running anything, refuses a graph with an op that is not on
the allowlist (``unsafe_ops.scan``) unless the caller allows it, copies those very bytes and
the files TensorFlow reads into a private folder (``private_copy``), vets the copy
(``checkpoint_index.vet``), and only then calls ``tf.saved_model.load`` on the copy.
``metadata`` and ``labels`` read the files the making side writes beside the graph, with
the same care.

Paths are local directories (``file://`` ones included) or any filesystem TensorFlow reads
(``gs://...``); the file safety checks (regular files only, size limits) apply to local
paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import fingerprint_pb2, saved_model_pb2

from exporter import spec
from exporter.checking import checkpoint_index, files, private_copy, unsafe_ops
from exporter.errors import Error, UnsafeOpsError

_MAX_PB_BYTES = (2 << 30) - 1  # Protocol buffers cannot be larger: refuse before reading.
_MAX_TEXT_BYTES = 64 << 20  # metadata.json and a labels file are kilobytes.
OPT_IN = "If you trust it, pass allow_unsafe_ops=True."
_FINGERPRINT = "fingerprint.pb"


class UnreadableError(Error):
    """The path is not a readable SavedModel (missing, empty, corrupt or truncated)."""


class UnsafeFilesError(UnreadableError):
    """Files TensorFlow must not be given to read (it would abort or block); see ``reason``."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"Refusing to load {path}: {reason}.")
        self.reason = reason


def _remote(path: str) -> bool:
    return "://" in path


def local(path: str | os.PathLike) -> str:
    """``path`` with a ``file://`` scheme taken off: such a path gets the local checks."""
    path = str(path)
    return path[len("file://") :] if path.startswith("file://") else path


def read(path: str | os.PathLike) -> saved_model_pb2.SavedModel:
    """Parse ``saved_model.pb`` at ``path`` without running anything.

    Raises:
        UnreadableError: If ``path`` is not a readable SavedModel.
    """
    return _parse(*_read_pb(path))


def _read_pb(path: str | os.PathLike) -> tuple[str, bytes]:
    path = local(path)
    return path, _read_remote_pb(path) if _remote(path) else _read_local_pb(Path(path))


def _parse(path: str, data: bytes) -> saved_model_pb2.SavedModel:
    pb = f"{path.rstrip('/')}/{spec.SAVED_MODEL_FILE}"
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise UnreadableError(
            f"Corrupt {pb}: expected a serialized SavedModel protocol buffer, received "
            f"{len(data)} bytes that do not parse ({error or 'no reason given'})."
        ) from None
    if not proto.meta_graphs:
        raise UnreadableError(f"Corrupt {pb}: it holds no MetaGraph.")
    return proto


def _read_local_pb(path: Path) -> bytes:
    if not path.exists():
        raise UnreadableError(f"No such path: {path}.")
    if not path.is_dir():
        raise UnreadableError(f"Expected a SavedModel directory. Received a file: {path}.")
    pb = path / spec.SAVED_MODEL_FILE
    if not pb.exists():
        raise UnreadableError(f"Not a SavedModel: no {spec.SAVED_MODEL_FILE} in {path}.")
    try:
        return files.read_regular(pb, _MAX_PB_BYTES, "the protocol buffer limit")
    except files.UnsafeFileError as error:
        raise UnreadableError(f"Not a SavedModel: {error}") from None
    except OSError as error:
        raise UnreadableError(f"Cannot read {pb}: {error.strerror or error}.") from None


def _read_remote_pb(path: str) -> bytes:
    pb = f"{path.rstrip('/')}/{spec.SAVED_MODEL_FILE}"
    try:
        if not tf.io.gfile.exists(pb):
            raise UnreadableError(f"Not a SavedModel: no {spec.SAVED_MODEL_FILE} in {path}.")
        with tf.io.gfile.GFile(pb, "rb") as file:
            return file.read()
    except tf.errors.OpError as error:
        raise UnreadableError(f"Cannot read {pb}: {error.message.splitlines()[0]}.") from None


def refuse_unsafe(
    path: str | os.PathLike, proto: saved_model_pb2.SavedModel, opt_in: str = OPT_IN
) -> None:
    """Raise ``UnsafeOpsError`` if ``proto`` holds unsafe ops; ``opt_in`` is the way out.

    Example:
        >>> refuse_unsafe("exports/mobilenet_v2", read("exports/mobilenet_v2"))  # None: safe
    """
    found = unsafe_ops.scan(proto)
    if found:
        listed = "; ".join(f"{op} in {where}" for op, where in found[:10])
        raise UnsafeOpsError(
            f"Refusing to load the SavedModel at {path}: it holds ops that are not on the "
            f"allowlist of pure computation ({len(found)} found: {listed}). {opt_in}",
            found,
        )


def load(
    path: str | os.PathLike,
    *,
    allow_unsafe_ops: bool = False,
    opt_in: str = OPT_IN,
    options: tf.saved_model.LoadOptions | None = None,
    inspect: Callable[[saved_model_pb2.SavedModel], None] | None = None,
):
    """Read ``saved_model.pb`` once, scan it, copy it privately, vet the copy; load the copy.

    Args:
        path: The SavedModel directory (local, ``file://``, or any filesystem TensorFlow
            reads).
        allow_unsafe_ops: Load it even if its graph holds ops that are not on the allowlist.
        opt_in: The error message's last sentence: how the caller's user allows unsafe ops.
        options: Passed to ``tf.saved_model.load``.
        inspect: Called with the parsed ``saved_model.pb`` before the scan, so a caller
            that needs the graph too (its tags, the conformance rules) does not read and
            parse it a second time; what it raises ends the load.

    Returns:
        The restored object, as ``tf.saved_model.load`` returns it.

    Raises:
        UnreadableError: If it is not a readable SavedModel (``UnsafeFilesError``: its
            files are not safe for TensorFlow to read).
        UnsafeOpsError: If it holds unsafe ops and they are not allowed.
        Exception: Whatever ``tf.saved_model.load`` raises on a SavedModel it cannot load.

    Example:
        >>> obj = load("exports/mobilenet_v2")
        >>> obj(images, training=False).shape
    """
    path, data = _read_pb(path)
    proto = _parse(path, data)
    if inspect is not None:
        inspect(proto)
    if not allow_unsafe_ops:
        refuse_unsafe(path, proto, opt_in)
    try:
        copy = private_copy.make(path, data, _remote(path))
    except private_copy.CopyError as error:
        raise UnsafeFilesError(path, str(error)) from None
    except (OSError, tf.errors.OpError) as error:
        raise UnreadableError(f"Cannot copy {path} to load it: {_first_line(error)}.") from None
    try:
        _vet(path, copy)
        return tf.saved_model.load(str(copy), options=options)
    finally:
        private_copy.release(copy, keep_assets=True)


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or getattr(error, "strerror", None) or str(error)
    return (str(text).strip().splitlines() or [type(error).__name__])[0]


def _vet(path: str, copy: Path) -> None:
    """Refuse what TensorFlow would abort, block or print a traceback on: in the copy."""
    try:  # TensorFlow aborts or blocks on some files: vet them first.
        checkpoint_index.vet(copy)
    except checkpoint_index.CheckpointError as error:
        raise UnsafeFilesError(path, str(error)) from None
    found = copy / _FINGERPRINT
    if found.exists():
        try:
            fingerprint_pb2.FingerprintDef().ParseFromString(found.read_bytes())
        except (DecodeError, RuntimeWarning, ValueError):
            raise UnreadableError(
                f"Corrupt {path.rstrip('/')}/{_FINGERPRINT}: expected a serialized "
                f"FingerprintDef, received {found.stat().st_size} bytes that do not parse."
            ) from None


def read_text(path: str) -> str:
    """A small text file of a SavedModel (local: regular files only, at most 64 MiB).

    Raises:
        OSError: If it is missing or cannot be read.
        UnicodeDecodeError: If it is not UTF-8.
        files.UnsafeFileError: If it is not a regular file, or too large.
    """
    path = local(path)
    if _remote(path):
        try:
            with tf.io.gfile.GFile(path, "rb") as file:
                return file.read().decode("utf-8")
        except tf.errors.OpError as error:
            raise OSError(error.message.splitlines()[0]) from None
    return files.read_regular(Path(path), _MAX_TEXT_BYTES).decode("utf-8")


def metadata(path: str | os.PathLike) -> tuple[dict | None, str]:
    """The export's ``metadata.json`` as a dict, or ``(None, why not)``.

    Example:
        >>> facts, problem = metadata("exports/mobilenet_v2")
        >>> facts["input"]["min_size"]
        32
    """
    file = f"{local(path).rstrip('/')}/{spec.METADATA_FILE}"
    exists = tf.io.gfile.exists(file) if _remote(file) else Path(file).is_file()
    if not exists:
        return None, f"no {spec.METADATA_FILE}: the model's facts are undocumented"
    try:
        facts = json.loads(read_text(file))
    except files.UnsafeFileError as error:
        return None, f"{spec.METADATA_FILE} cannot be read: {error}"
    except OSError as error:
        return None, f"{spec.METADATA_FILE} cannot be read: {error.strerror or error}"
    except (ValueError, UnicodeDecodeError) as error:
        return None, f"{spec.METADATA_FILE} is not valid JSON: {error}"
    if not isinstance(facts, dict):
        return None, f"{spec.METADATA_FILE} is not a JSON object"
    return facts, ""


def labels(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names of a classifier's labels asset, one per line; None if it has none."""
    file = f"{local(path).rstrip('/')}/{spec.LABELS_ASSET}"
    exists = tf.io.gfile.exists(file) if _remote(file) else Path(file).is_file()
    if not exists:
        return None
    return tuple(read_text(file).splitlines())


_TF_FINGERPRINT_FIELDS = (
    "saved_model_checksum",
    "graph_def_program_hash",
    "signature_def_hash",
    "saved_object_graph_hash",
    "checkpoint_hash",
)


def identity(path: str | os.PathLike) -> dict:
    """What identifies the SavedModel at ``path``, for records made from it.

    ``saved_model_pb_sha256``: the SHA-256 of its graph. ``singleprint`` and
    ``tensorflow``: TensorFlow's own fingerprint (``fingerprint.pb``, TF 2.12 and later),
    None where it has none. (Change detection is the content fingerprint that our exports
    record in their metadata: ``exporter.checking.fingerprint``.)

    Raises:
        UnreadableError: If ``saved_model.pb`` cannot be read.
    """
    path, data = _read_pb(path)
    facts = {
        "saved_model_pb_sha256": hashlib.sha256(data).hexdigest(),
        "singleprint": None,
        "tensorflow": None,
    }
    found = None if _remote(path) else Path(path, _FINGERPRINT)
    if found is not None and (found.is_symlink() or not found.is_file()):
        return facts  # Missing (before TF 2.12), or a FIFO or device TF would block on.
    with contextlib.suppress(Exception):  # An unreadable one: no TensorFlow fingerprint.
        found = tf.saved_model.experimental.read_fingerprint(path)
        facts["tensorflow"] = {name: int(getattr(found, name)) for name in _TF_FINGERPRINT_FIELDS}
        facts["singleprint"] = found.singleprint()
    return facts
