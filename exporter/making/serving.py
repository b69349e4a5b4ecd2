"""Extra serving signatures for TF Serving clients: uint8 pixels and encoded image bytes.

Each one is built on the module's static-shape serving path (``ImageModule.serve``), never
on ``__call__``: the converters cannot lower ``__call__``'s ``PlaceholderWithDefault``, and
a signature must run as traced. Each has the same single output as ``serving_default``.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

from exporter import spec
from exporter.errors import ArgumentError

DEFAULT_INPUTS = ("float32",)
# Leading bytes of each format tf.io.decode_image reads: (offset, bytes) pairs, all must match.
_MAGIC = (
    ((0, b"\xff\xd8\xff"),),  # JPEG
    ((0, b"\x89PNG"),),
    ((0, b"GIF8"),),
    ((0, b"BM"),),
    ((0, b"RIFF"), (8, b"WEBP")),
)


def parse_inputs(serving_inputs: str | Iterable[str] | None) -> tuple[str, ...]:
    """Return the serving input kinds, ``float32`` (``serving_default``) always first.

    Args:
        serving_inputs: A comma-separated string or a list of ``float32``, ``uint8``,
            ``image_bytes``. ``float32`` is added when missing: ``serving_default`` is part
            of the contract.

    Raises:
        ExportError: On an unknown kind.
    """
    if serving_inputs is None:
        return DEFAULT_INPUTS
    if isinstance(serving_inputs, str):
        serving_inputs = serving_inputs.split(",")
    kinds = [str(kind).strip() for kind in serving_inputs if str(kind).strip()]
    unknown = [kind for kind in kinds if kind not in spec.SERVING_SIGNATURES]
    if unknown:
        raise ArgumentError(
            f"Unknown serving input {unknown[0]!r}; known: {', '.join(spec.SERVING_SIGNATURES)}."
        )
    return tuple(kind for kind in spec.SERVING_SIGNATURES if kind == "float32" or kind in kinds)


def check_size(module, serving_size: int | None) -> int:
    """Return the size ``serving_bytes`` resizes to: ``serving_size`` or the native size.

    Raises:
        ExportError: If the size is outside the module's admissible range.
    """
    size = module.native_size if serving_size is None else serving_size
    check_size_range(size, module.min_size, module.fixed_size)
    return size


def check_size_applies(kinds: tuple[str, ...], serving_size: int | None) -> None:
    """Refuse a ``serving_size`` without the ``image_bytes`` signature it is for."""
    if serving_size is not None and "image_bytes" not in kinds:
        raise ArgumentError(
            "serving_size is the size serving_bytes resizes to; add image_bytes to "
            f"serving_inputs. Received: serving_inputs={list(kinds)}, serving_size={serving_size}."
        )


def check_size_range(size, min_size: int, fixed_size: int | None, name: str = "") -> None:
    """Refuse a serving size the model (``name``, if given) cannot take."""
    model = f"{name}'s" if name else "the model's"
    if not isinstance(size, int) or size < min_size:
        raise ArgumentError(
            f"Expected serving_size to be an int of at least {min_size} ({model} "
            f"min_size). Received: {size!r}."
        )
    if fixed_size is not None and size != fixed_size:
        raise ArgumentError(
            f"Expected serving_size {fixed_size}: {name or 'the model'} is fixed-size. "
            f"Received: {size!r}."
        )


def signatures(module, serving_inputs=DEFAULT_INPUTS, serving_size: int | None = None) -> dict:
    """Return the concrete function of each serving signature, by signature name.

    Args:
        module: An ``ImageModule``.
        serving_inputs: Input kinds, see ``parse_inputs``.
        serving_size: Height and width that ``serving_bytes`` resizes every image to;
            default the module's native size.
    """
    kinds = parse_inputs(serving_inputs)
    output = module.output_name
    functions = {"serving_default": module.serve.get_concrete_function()}
    if "uint8" in kinds:

        @tf.function(input_signature=[spec.UINT8_SPEC], autograph=False)
        def serve_uint8(images):
            return {output: module.serve(tf.image.convert_image_dtype(images, tf.float32))[output]}

        functions["serving_uint8"] = serve_uint8.get_concrete_function()
    if "image_bytes" in kinds:
        size = check_size(module, serving_size)

        @tf.function(input_signature=[spec.BYTES_SPEC], autograph=False)
        def serve_bytes(image_bytes):
            return {output: module.serve(decode_batch(image_bytes, size))[output]}

        functions["serving_bytes"] = serve_bytes.get_concrete_function()
    return functions


def decode_batch(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """Decode a [batch] string tensor of encoded images to float32 RGB [batch, size, size, 3].

    Grayscale, palette and RGBA images become RGB (alpha is dropped), values go to [0, 1],
    and every image is resized bilinearly to ``size`` x ``size``. An element that is not an
    image of a known format fails the whole call with an error naming its index.
    """

    def decode(index):
        encoded = image_bytes[index]
        known = tf.reduce_any([_starts_with(encoded, pairs) for pairs in _MAGIC])
        check = tf.debugging.Assert(
            known,
            [
                f"Expected image_bytes to hold encoded {spec.IMAGE_FORMATS} images. "
                "Received an element that is none of them, at index",
                index,
                "of length",
                tf.strings.length(encoded),
            ],
        )
        with tf.control_dependencies([check]):
            image = tf.io.decode_image(
                encoded, channels=spec.CHANNELS, dtype=tf.float32, expand_animations=False
            )
        image.set_shape([None, None, spec.CHANNELS])
        return tf.image.resize(image, [size, size], method="bilinear")

    count = tf.shape(image_bytes)[0]
    shape = tf.TensorSpec([size, size, spec.CHANNELS], tf.float32)
    return tf.map_fn(decode, tf.range(count), fn_output_signature=shape)


def _starts_with(encoded: tf.Tensor, pairs) -> tf.Tensor:
    # substr fails past the end of a string, so each slice is bounded by the length first.
    length = tf.strings.length(encoded)
    matches = []
    for offset, magic in pairs:
        long_enough = length >= offset + len(magic)
        start = tf.minimum(offset, length)
        piece = tf.strings.substr(encoded, start, len(magic))
        matches.append(tf.logical_and(long_enough, tf.equal(piece, magic)))
    return tf.reduce_all(matches)
