"""Read image files from a stranger's corpus: regular files, bounded bytes, bounded pixels.

A corpus may hold a link to ``/dev/zero`` (read without end), a FIFO (blocks whoever opens
it) or a pixel bomb: a small PNG whose header declares 23000 x 23000 pixels, which a
decoder allocates gigabytes for. ``read`` opens regular files only (a link to one is
fine), without blocking, and reads at most ``MAX_FILE_BYTES``. ``check_pixels`` reads the
width and height from the header of a JPEG, PNG, GIF, BMP or WebP, as the decoder will
see them, and refuses more than ``max_pixels`` before anything is decoded.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tensorflow as tf

from exporter import choices
from exporter.checking import files
from exporter.errors import Error

# An image of DEFAULT_MAX_PIXELS is at most 400 MB even as an uncompressed 32-bit BMP.
MAX_FILE_BYTES = 1 << 30
# 100 megapixels (10000 x 10000): decoding and resizing one takes about 1.6 GB of memory.
DEFAULT_MAX_PIXELS = choices.DEFAULT_MAX_PIXELS


class ImageFileError(Error, ValueError):
    """A file refused before it is decoded: not a regular file, too large, or too many pixels."""


def read(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the image file at ``path`` (local, or any filesystem Beam reads).

    Raises:
        ImageFileError: If it is not a regular file, or holds more than ``limit`` bytes.
        OSError: If it cannot be read.
    """
    if "://" in path:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        # Never decompressed by its name (Beam's default): a .gz could be a bomb too.
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
            data = file.read(limit + 1)
    else:
        try:
            file, size = files.open_regular(Path(path))
        except files.UnsafeFileError as error:
            raise ImageFileError(str(error)) from None
        with file:
            if size > limit:
                raise _too_large(limit, size)
            data = file.read(limit + 1)
    if len(data) > limit:
        raise _too_large(limit, f"more than {limit}")
    return data


def _too_large(limit: int, received) -> ImageFileError:
    return ImageFileError(
        f"Expected an image file of at most {limit} bytes. Received {received} bytes."
    )


def check_pixels(data: bytes, max_pixels: int) -> None:
    """Raise if the header of the encoded image ``data`` declares more than ``max_pixels``.

    Data in no format of ``tf.io.decode_image`` passes: decoding it fails with the reason.

    Raises:
        ImageFileError: If the image has more pixels than ``max_pixels``.
        tf.errors.InvalidArgumentError: If a JPEG's header cannot be read.
    """
    found = dimensions(data)
    if found is None:
        return
    kind, width, height = found
    if width * height > max_pixels:
        raise ImageFileError(
            f"Expected at most max_pixels={max_pixels} pixels. Received a {kind} of "
            f"{width}x{height} ({width * height} pixels), refused before decoding."
        )


def decode(data: bytes, image_size: int | tuple[int, int], max_pixels: int) -> np.ndarray:
    """Decode one encoded image and resize it bilinearly: what ``embed`` does to each file.

    ``image_size`` is a side (a square) or ``(height, width)``. Returns float32
    ``[height, width, 3]`` RGB in ``[0, 1]`` (the aspect ratio is not kept; no crop).

    Raises:
        ImageFileError: If the header declares more than ``max_pixels``.
        tf.errors.InvalidArgumentError: If ``data`` is not a decodable image.
    """
    check_pixels(data, max_pixels)
    size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    return tf.image.resize(image, size).numpy()


def dimensions(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from the header of an encoded image, as TensorFlow's
    decoders read it; None where the format is not one of theirs or the header is cut short.

    Raises:
        tf.errors.InvalidArgumentError: If a JPEG's header cannot be read (libjpeg's reason).
    """
    try:
        if data[:3] == b"\xff\xd8\xff":
            height, width = (int(v) for v in tf.image.extract_jpeg_shape(data)[:2])
            return "JPEG", width, height
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
            return "PNG", width, height
        if data[:4] == b"GIF8":  # The logical screen: the size TensorFlow decodes to.
            width, height = struct.unpack_from("<HH", data, 6)
            return "GIF", width, height
        if data[:2] == b"BM":  # TensorFlow reads both as int32, whatever the header's size.
            width, height = struct.unpack_from("<ii", data, 18)
            return "BMP", abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except struct.error:  # Cut short: the decoder will say so.
        return None
    return None


def _webp(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # Extended: the canvas, 24-bit sizes minus one.
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    elif chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # Lossy: 14-bit sizes.
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    elif chunk == b"VP8L" and data[20:21] == b"\x2f":  # Lossless: 14-bit sizes minus one.
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        return None
    return "WebP", width, height
