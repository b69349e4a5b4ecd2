"""Read and write the table format of ``variables/variables.index``, checksums included.

TensorFlow's checkpoint index is a LevelDB-style table: data blocks of sorted key/value
entries, each block followed by a type byte and a masked CRC32C; a metaindex block, an index
block naming each data block, and a 48-byte footer. Bit flips alone mostly stop at a
checksum; these helpers make mutants whose checksums are right, so the entries themselves
(``BundleHeaderProto``, ``BundleEntryProto``) reach TensorFlow's parser.
"""

from __future__ import annotations

import struct

MAGIC = 0xDB4775248B80FB57
FOOTER = 48
TRAILER = 5  # A type byte (0: not compressed) and a masked CRC32C.


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _handle(data: bytes, at: int) -> tuple[tuple[int, int], int]:
    offset, at = _varint(data, at)
    size, at = _varint(data, at)
    return (offset, size), at


def _entries(block: bytes) -> list[tuple[bytes, bytes]]:
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end, at, key, found = len(block) - 4 - 4 * restarts, 0, b"", []
    while at < end:
        shared, at = _varint(block, at)
        unshared, at = _varint(block, at)
        length, at = _varint(block, at)
        key = key[:shared] + block[at : at + unshared]
        at += unshared
        found.append((key, block[at : at + length]))
        at += length
    return found


def data_blocks(table: bytes) -> list[tuple[int, int]]:
    """``(offset, size)`` of each data block's contents (its trailer follows)."""
    footer = table[-FOOTER:]
    if struct.unpack("<Q", footer[-8:])[0] != MAGIC:
        raise ValueError("not a table: bad magic number")
    _, at = _handle(footer, 0)
    (index_offset, index_size), _ = _handle(footer, at)
    index = table[index_offset : index_offset + index_size]
    return [_handle(value, 0)[0] for _, value in _entries(index)]


def read(table: bytes) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of the table, in order."""
    return [
        entry
        for offset, size in data_blocks(table)
        for entry in _entries(table[offset : offset + size])
    ]


def reseal(table: bytearray, offset: int, size: int) -> None:
    """Recompute the checksum of the block at ``offset`` after its contents were edited."""
    contents = table[offset : offset + size + 1]  # With the type byte.
    struct.pack_into("<I", table, offset + size + 1, masked_crc(bytes(contents)))


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        _put_varint(0) + _put_varint(len(key)) + _put_varint(len(value)) + key + value
        for key, value in entries
    )
    return body + struct.pack("<II", 0, 1)  # One restart point, at the first entry.


def write(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A table of ``entries`` (kept in the given order, sorted or not) in one data block."""
    out = bytearray()

    def add(contents: bytes) -> bytes:
        handle = _put_varint(len(out)) + _put_varint(len(contents))
        out.extend(contents + b"\0" + struct.pack("<I", masked_crc(contents + b"\0")))
        return handle

    data = add(_block(entries))
    metaindex = add(_block([]))
    last = entries[-1][0] if entries else b""
    index = add(_block([(last, data)]))
    handles = metaindex + index
    out.extend(handles + b"\0" * (FOOTER - 8 - len(handles)) + struct.pack("<Q", MAGIC))
    return bytes(out)
