"""The image API contract as data: what goes in, and how bad input is refused.

Shared by the module that is exported and, later, by the conformance checker. See
``docs/contract.md`` ("Images in") for the contract itself.
"""

from __future__ import annotations

import re

import tensorflow as tf

from exporter.errors import Error

CHANNELS = 3
IMAGE_DTYPE = tf.float32
IMAGE_SPEC = tf.TensorSpec([None, None, None, CHANNELS], IMAGE_DTYPE, name="images")
EXPECTED = "a float32 tensor [batch_size, height, width, 3] (NHWC, RGB, values in [0, 1])"

SAVED_MODEL_FILE = "saved_model.pb"
# The model card and its metadata (in assets.extra/, copied by TensorFlow but never loaded)
# and a classifier's labels asset: written by the making side, read by the checker and users.
METADATA_FILE = "assets.extra/metadata.json"
METADATA_FORMAT = "exporter-metadata/1"  # Its "format": what tells our exports apart.
CARD_FILE = "assets.extra/model_card.md"
LABELS_ASSET = "assets/labels.txt"
# "Publishing layout": names that a .tar.gz for model hubs can carry.
VALID_NAME = re.compile(r"^[A-Za-z0-9_]")
# The sizes to try on a SavedModel that documents no size range (and traces none).
DEFAULT_SIZES = (224, 192)
FEATURE_VECTOR_OUTPUT = "feature_vector"
CLASSIFICATION_OUTPUT = "logits"


class InvalidImagesError(Error, ValueError):
    """Images that do not keep the input contract."""


def check_images(
    images: tf.Tensor, *, min_size: int, fixed_size: int | None = None
) -> list[tf.Operation]:
    """Validate ``images`` against the contract.

    Static facts (dtype, rank, channels, and sizes when known at trace time) raise
    ``InvalidImagesError`` immediately. Sizes only known at run time are checked by graph
    assertions, which are returned so the caller can make its computation depend on them.

    Args:
        images: The input tensor.
        min_size: The smallest height and width the model accepts.
        fixed_size: The one height and width the model accepts, if it is fixed-size.

    Returns:
        Assertion ops for the run-time size checks (empty when everything was static).
    """
    received = f"Received: dtype={images.dtype.name}, shape={images.shape}."
    if images.dtype != IMAGE_DTYPE:
        hint = " Convert with tf.image.convert_image_dtype(images, tf.float32)."
        raise InvalidImagesError(f"Expected {EXPECTED}. {received}{hint}")
    if images.shape.rank != 4:
        hint = " Add a batch dimension with images[tf.newaxis]." if images.shape.rank == 3 else ""
        raise InvalidImagesError(f"Expected {EXPECTED}. {received}{hint}")
    channels = images.shape[-1]
    if channels != CHANNELS:
        if images.shape[1] == CHANNELS:
            layout = _NCHW_HINT
        else:
            layout = f" Got {channels} channels; only RGB is accepted."
        raise InvalidImagesError(f"Expected {EXPECTED}. {received}{layout}")
    # A signature runs as traced: TensorFlow feeds it a tensor of any shape, unchecked, so
    # the layout is checked again at run time, before the sizes (which would misread it).
    layout_checks = check_layout_at_run_time(images)
    with tf.control_dependencies(layout_checks):
        return layout_checks + _check_sizes(images, min_size=min_size, fixed_size=fixed_size)


_NCHW_HINT = " This looks like NCHW (channels first); transpose to NHWC."


def check_layout_at_run_time(images: tf.Tensor) -> list[tf.Operation]:
    """Graph assertions that ``images`` (float32, of any shape) is [batch, height, width, 3].

    For what only shows at run time: a restored signature given another shape, or a trace
    whose rank is unknown. Computed from the run-time shape and element count, which
    TensorFlow cannot fold into constants from the static shape: the channels first (with
    the NCHW hint when the second dimension is 3), then the rank (the element count equals
    ``batch * height * width * 3`` only for a 4-D tensor, once there are 3 channels).
    """
    shape = tf.shape(images, out_type=tf.int64)
    padded = tf.concat([shape, tf.ones([4], tf.int64)], 0)  # Any rank can be indexed.
    last = tf.concat([tf.zeros([1], tf.int64), shape], 0)[-1]  # 0 for a scalar.
    received = tf.strings.format(
        "Expected " + EXPECTED + ". Received: dtype=float32, shape={}.", shape, summarize=-1
    )
    wrong_channels = tf.not_equal(last, CHANNELS)
    nchw = tf.logical_and(wrong_channels, tf.equal(padded[1], CHANNELS))
    channels = [
        tf.debugging.Assert(tf.logical_not(nchw), [received + _NCHW_HINT]),
        tf.debugging.Assert(
            tf.logical_not(tf.logical_and(wrong_channels, tf.logical_not(nchw))),
            [received + tf.strings.format(" Got {} channels; only RGB is accepted.", last)],
        ),
    ]
    with tf.control_dependencies(channels):
        four_d = tf.equal(tf.size(images, out_type=tf.int64), tf.reduce_prod(padded[:3]) * 3)
        rank = tf.debugging.Assert(
            four_d, [received + " It is not 4-D: add a batch dimension with images[tf.newaxis]."]
        )
    return [*channels, rank]


def refuse_at_run_time(images: tf.Tensor) -> list[tf.Operation]:
    """Graph assertions for a trace that takes images of any shape (rank unknown) and dtype.

    Saved beside the real traces, so that a restored ``__call__`` given a uint8, float64 or
    wrongly shaped tensor answers with the contract's message instead of TensorFlow's "Could
    not find matching concrete function". Input that keeps the contract is served by the
    real traces first; should it reach this one, it is refused all the same.
    """
    shape = tf.shape(images, out_type=tf.int64)
    if images.dtype != IMAGE_DTYPE:
        message = tf.strings.format(
            f"Expected {EXPECTED}. Received: dtype={images.dtype.name}, shape={{}}. Convert "
            "with tf.image.convert_image_dtype(images, tf.float32).",
            shape,
            summarize=-1,
        )
        return [tf.debugging.Assert(False, [message])]
    layout = check_layout_at_run_time(images)
    with tf.control_dependencies(layout):
        message = tf.strings.format(
            f"Expected {EXPECTED}, to a trace of a known rank. Received: shape={{}}.", shape
        )
        return [*layout, tf.debugging.Assert(False, [message])]


# The dtypes whose images a restored __call__ refuses with the contract's message, each in a
# trace of unknown rank (float32 for the wrong shapes).
REFUSED_DTYPES = (tf.float32, tf.uint8, tf.float64)


def check_training_images(images: tf.Tensor) -> list[tf.Operation]:
    """Run-time checks for a ``training=True`` batch: at least one image, every pixel finite.

    Batch norm writes the batch's statistics into its moving averages. An empty batch has
    NaN statistics, and one NaN or Inf pixel makes every channel's statistics NaN: from then
    on every inference would return NaN. Inference needs neither check: an empty batch gives
    an empty output, and a NaN or Inf pixel affects only its own image's output.
    """
    return [
        tf.debugging.assert_positive(
            tf.shape(images)[0],
            message="Expected at least one image with training=True (batch norm would set "
            "its moving averages to NaN from an empty batch). Received batch size:",
        ),
        tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(images)),
            [
                "Expected finite pixel values with training=True (a NaN or Inf pixel would set "
                "every batch norm's moving averages to NaN). Received NaN or Inf pixels."
            ],
        ),  # fmt: skip
    ]


def size_requirement(min_size: int, fixed_size: int | None) -> str:
    """Describe the admissible height and width in words."""
    if fixed_size is not None:
        return f"height and width of exactly {fixed_size}"
    return f"height and width of at least {min_size}"


def probe_sizes(min_size: int, native_size: int, fixed_size: bool) -> tuple[int, ...]:
    """Two cheap, distinct sizes inside the admissible range (one, for a fixed-size model).

    Any two sizes in range prove that the output width does not depend on the size; small
    ones keep checks of large backbones (EfficientNetB7 is native at 600) quick. A model
    whose native size is its minimum still gets a second, larger size: one that claims
    dynamic sizes but works at one size only must be caught.
    """
    if fixed_size:
        return (native_size,)
    larger = min(native_size, 2 * min_size)
    return (larger if larger > min_size else 2 * max(min_size, 1)), min_size


def _check_sizes(images: tf.Tensor, *, min_size: int, fixed_size: int | None):
    requirement = size_requirement(min_size, fixed_size)
    height, width = images.shape[1], images.shape[2]
    if height is not None and width is not None:
        too_small = height < min_size or width < min_size
        wrong = fixed_size is not None and (height, width) != (fixed_size, fixed_size)
        if too_small or wrong:
            raise InvalidImagesError(
                f"Expected images with {requirement} pixels. "
                f"Received: height={height}, width={width}."
            )
        return []
    size = tf.shape(images)[1:3]
    message = f"Expected images with {requirement} pixels. Received [height, width]:"
    if fixed_size is not None:
        check = tf.debugging.assert_equal(size, fixed_size, message=message, summarize=2)
    else:
        check = tf.debugging.assert_greater_equal(size, min_size, message=message, summarize=2)
    return [check]


# Serving signatures (docs/contract.md, "The loaded object"):
# --serving_inputs value -> (signature, input name).
# They never take `training`, and each has the same one output as serving_default.
SERVING_SIGNATURES = {
    "float32": ("serving_default", "images"),
    "uint8": ("serving_uint8", "images"),
    "image_bytes": ("serving_bytes", "image_bytes"),
}
UINT8_SPEC = tf.TensorSpec([None, None, None, CHANNELS], tf.uint8, name="images")
BYTES_SPEC = tf.TensorSpec([None], tf.string, name="image_bytes")
IMAGE_FORMATS = "JPEG, PNG, GIF, BMP or WebP"
