"""Vet the files TensorFlow reads when it loads a SavedModel, before it reads them.

TensorFlow's checkpoint reader trusts ``variables/variables.index``: an entry whose shape
has a negative dimension, more than 254 dimensions or more than 2**63 - 1 elements fails a
CHECK in ``tensor_shape.cc`` and aborts the whole process (SIGABRT, TF 2.21), checksums
notwithstanding. Loading also blocks forever on a FIFO where it expects ``fingerprint.pb``
or a variables file, and a data file shorter than the index says gives a bare
``IndexError: Read less bytes than requested`` that names no file. ``vet`` reads the index
as TensorFlow would (footer, index block, data blocks, entries) without trusting a byte of
it, checks that each data file holds what the index places in it, and names the first
reason not to let TensorFlow read the directory. It does not verify checksums: TensorFlow
does, and stops at a bad one with an error instead of a crash.
"""

from __future__ import annotations

import stat
import struct
from pathlib import Path

from google.protobuf.message import DecodeError
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import tensor_bundle_pb2

from exporter.checking import files
from exporter.errors import Error

INDEX = "variables/variables.index"
# TensorFlow's limits (tensor_shape.h): dimensions of a TensorShape, elements of a tensor.
MAX_DIMENSIONS = 254
MAX_ELEMENTS = (1 << 63) - 1
_MAGIC = 0xDB4775248B80FB57  # The table format's footer magic (lib/io/format.h).
_FOOTER = 48
_TRAILER = 5  # A compression type byte and a masked CRC32C after each block.
_MAX_INDEX_BYTES = 1 << 30  # An image backbone's index is kilobytes; a huge model's, megabytes.
_VALID_DTYPES = frozenset(
    value
    for value in types_pb2.DataType.values()
    if 0 < value < 100 and value != types_pb2.DT_RESOURCE  # No reference types, no handles.
)


class CheckpointError(Error, ValueError):
    """A SavedModel whose files TensorFlow must not be given to read."""


def vet(directory: Path) -> None:
    """Raise CheckpointError with a one-line reason if loading ``directory`` is unsafe.

    A missing ``variables/`` or index is not unsafe: TensorFlow reports that itself.
    """
    directory = Path(directory)
    variables = directory / "variables"
    for path in [directory / "fingerprint.pb", *_children(variables)]:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # Missing or a dangling link: TensorFlow fails to open it, cleanly.
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            relative = path.relative_to(directory)
            raise CheckpointError(
                f"{relative} is {files.kind(mode)}, not a regular file: TensorFlow would "
                "block or read it without end"
            )
    index = directory / INDEX
    if not index.exists():
        return
    try:
        table = files.read_regular(index, _MAX_INDEX_BYTES)
    except (files.UnsafeFileError, OSError) as error:
        raise CheckpointError(f"{INDEX} cannot be read: {error}") from None
    ends: dict[int, tuple[int, str]] = {}  # Per shard: the last byte any entry needs, and whose.
    num_shards = 1
    for key, value in entries(table):
        if not key:  # The header.
            num_shards = _num_shards(value)
            continue
        name, entry = _vet_entry(key, value)
        end = entry.offset + entry.size
        if end > ends.get(entry.shard_id, (0, ""))[0]:
            ends[entry.shard_id] = (end, name)
    _vet_shards(directory, ends, num_shards)


def _children(variables: Path) -> list[Path]:
    try:
        return sorted(variables.iterdir()) if variables.is_dir() else []
    except OSError:
        return []


def entries(table: bytes) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of a checkpoint index, in the order TensorFlow finds them.

    Raises:
        CheckpointError: If the table is not laid out as TensorFlow writes it (bad footer,
            blocks out of range, compressed blocks, entries that overrun their block,
            restart points that are not entries).
    """
    if len(table) < _FOOTER:
        raise CheckpointError(
            f"{INDEX} is {len(table)} bytes: expected a table, at least {_FOOTER} bytes"
        )
    footer = table[-_FOOTER:]
    (magic,) = struct.unpack("<Q", footer[-8:])
    if magic != _MAGIC:
        raise CheckpointError(f"{INDEX} ends in {magic:#x}: expected the table magic {_MAGIC:#x}")
    _, at = _handle(footer, 0, "footer")
    index_handle, _ = _handle(footer, at, "footer")
    limit = len(table) - _FOOTER
    found = []
    for _, handle in _block(table, index_handle, limit, "index block"):
        data_handle, _ = _handle(handle, 0, "index block")
        found += _block(table, data_handle, limit, f"data block at {data_handle[0]}")
    return found


def _varint(data: bytes, at: int, where: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        if at >= len(data):
            raise CheckpointError(f"{INDEX}: a number in the {where} runs past its end")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
    raise CheckpointError(f"{INDEX}: a number in the {where} is longer than 64 bits")


def _handle(data: bytes, at: int, where: str) -> tuple[tuple[int, int], int]:
    offset, at = _varint(data, at, where)
    size, at = _varint(data, at, where)
    return (offset, size), at


def _block(table: bytes, handle: tuple[int, int], limit: int, where: str) -> list:
    offset, size = handle
    if offset + size + _TRAILER > limit or size < 4:
        raise CheckpointError(
            f"{INDEX}: the {where} spans bytes {offset}..{offset + size + _TRAILER}: expected "
            f"at least 4 bytes and a trailer before the footer at {limit}"
        )
    if table[offset + size] != 0:
        raise CheckpointError(
            f"{INDEX}: the {where} has compression type {table[offset + size]}: expected 0 "
            "(TensorFlow writes uncompressed indexes)"
        )
    block = table[offset : offset + size]
    (count,) = struct.unpack_from("<I", block, size - 4)
    end = size - 4 - 4 * count
    if count < 1 or end < 0:
        raise CheckpointError(
            f"{INDEX}: the {where} claims {count} restart points: expected 1 to {(size - 4) // 4}"
        )
    restarts = set(struct.unpack_from(f"<{count}I", block, end))
    restarts.discard(0)  # Where the first entry starts, or the one restart of an empty block.
    found, key, at = [], b"", 0
    while at < end:
        start = at
        shared, at = _varint(block, at, where)
        unshared, at = _varint(block, at, where)
        length, at = _varint(block, at, where)
        if shared > len(key) or (start in restarts and shared):
            raise CheckpointError(
                f"{INDEX}: an entry of the {where} shares {shared} bytes of the previous "
                f"key: expected at most {0 if start in restarts else len(key)}"
            )
        if at + unshared + length > end:
            raise CheckpointError(f"{INDEX}: an entry of the {where} runs past its end")
        restarts.discard(start)
        key = key[:shared] + block[at : at + unshared]
        found.append((key, block[at + unshared : at + unshared + length]))
        at += unshared + length
    if restarts:
        raise CheckpointError(
            f"{INDEX}: the {where} has a restart point at {min(restarts)}: expected every "
            "restart point at the start of an entry"
        )
    return found


def _num_shards(value: bytes) -> int:
    try:
        return tensor_bundle_pb2.BundleHeaderProto.FromString(value).num_shards
    except DecodeError:
        raise CheckpointError(f"{INDEX}: the header entry does not parse") from None


def data_file(shard: int, num_shards: int) -> str:
    """The data file of ``shard``, relative to the SavedModel, as TensorFlow names it."""
    return f"variables/variables.data-{shard:05d}-of-{num_shards:05d}"


def _vet_shards(directory: Path, ends: dict[int, tuple[int, str]], num_shards: int) -> None:
    """Raise unless every data file the index points into holds the bytes it points to.

    TensorFlow reads a tensor at its ``offset`` and ``size`` in the shard's data file; a
    shorter file (truncated by a full disk or an interrupted copy) gives a bare
    ``IndexError: Read less bytes than requested`` (TF 2.21) that names no file.
    """
    for shard, (end, name) in sorted(ends.items()):
        if not 0 <= shard < num_shards:
            raise CheckpointError(
                f"{INDEX}: {name!r} is in shard {shard}: expected one of the header's "
                f"{num_shards} shards"
            )
        relative = data_file(shard, num_shards)
        try:
            size = (directory / relative).stat().st_size
        except OSError as error:
            raise CheckpointError(
                f"{relative} cannot be read ({error.strerror or error}): expected at least "
                f"{end} bytes, the end of {name!r} in the index"
            ) from None
        if size < end:
            raise CheckpointError(
                f"{relative} is truncated: expected at least {end} bytes (the end of {name!r} "
                f"in the index). Received {size} bytes"
            )


def _vet_entry(key: bytes, value: bytes) -> tuple[str, tensor_bundle_pb2.BundleEntryProto]:
    """Raise unless the entry is a tensor TensorFlow can read; return its name and entry."""
    name = key.decode("utf-8", "backslashreplace")[:100]
    try:
        entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
    except DecodeError:
        raise CheckpointError(f"{INDEX}: the entry for {name!r} does not parse") from None
    if entry.dtype not in _VALID_DTYPES:
        raise CheckpointError(
            f"{INDEX}: {name!r} has dtype {entry.dtype}: expected a tensor type of TensorFlow"
        )
    dims = [d.size for d in entry.shape.dim]
    problem = _shape_problem(dims, entry.shape.unknown_rank)
    if problem:
        raise CheckpointError(f"{INDEX}: {name!r} has shape {_shown(dims)}: expected {problem}")
    for piece in entry.slices:
        extents = [(e.start, e.length if e.HasField("length") else None) for e in piece.extent]
        bad = len(extents) != len(dims) or any(
            start < 0 or (length is not None and (length < 0 or start + length > MAX_ELEMENTS))
            for start, length in extents
        )
        if bad:
            raise CheckpointError(
                f"{INDEX}: {name!r} has a slice {extents[:5]}: expected one extent per "
                f"dimension ({len(dims)}), each start and length at least 0"
            )
    return name, entry


def _shape_problem(dims: list[int], unknown_rank: bool) -> str | None:
    if unknown_rank:
        return "a known rank"
    if len(dims) > MAX_DIMENSIONS:
        return f"at most {MAX_DIMENSIONS} dimensions"
    if any(size < 0 for size in dims):
        return "every dimension at least 0"
    elements = 1
    for size in dims:
        elements *= size
        if elements > MAX_ELEMENTS:
            return "at most 2**63 - 1 elements"
    return None


def _shown(dims: list[int]) -> str:
    if len(dims) <= 8:
        return str(dims)
    return f"[{', '.join(map(str, dims[:8]))}, ...] ({len(dims)} dimensions)"
