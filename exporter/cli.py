"""What the two export CLIs share: their common flags, the run of one export, its errors.

Light on purpose: the flags are parsed and checked (``exporter.command``) before ``run``
imports the library, and with it TensorFlow.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from absl import flags

from exporter import choices, command, console, progress
from exporter.errors import ArgumentError, ExportError

BACKBONE = flags.DEFINE_string(
    "backbone", None, "What to export: a registered name, e.g. resnet50 (see "
    "--list_backbones); a keras-hub preset (a save_to_preset folder, or a handle keras-hub "
    "resolves: a preset name, kaggle://..., hf://...; needs the keras_hub extra); or a "
    ".keras file of a Keras 3 model (then give --preprocessing, and --native_size unless "
    "its input has one size).",
)  # fmt: skip
OUT = flags.DEFINE_string(
    "out", None, "SavedModel directory to write (must not exist, or be empty, unless --overwrite)."
)
WEIGHTS = flags.DEFINE_string("weights", "imagenet", f"Weights: {choices.WEIGHTS_HELP}.")
WEIGHT_DECAY = flags.DEFINE_float(
    "weight_decay", 0.0, "L2 penalty on every kernel, exposed as regularization_losses "
    "(fine-tuning adds them to the loss as they are).", lower_bound=0.0,
)  # fmt: skip
OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing SavedModel at --out (atomically)."
)
SERVING_INPUTS = flags.DEFINE_list(
    "serving_inputs", ["float32"], "Comma-separated inputs to serve: float32 (serving_default, "
    "always exported), uint8 (serving_uint8: uint8 pixels 0..255) and image_bytes "
    "(serving_bytes: encoded JPEG/PNG/GIF/BMP/WebP, for TF Serving's {\"b64\": ...}).",
)  # fmt: skip
SERVING_SIZE = flags.DEFINE_integer(
    "serving_size", None, "Height and width serving_bytes resizes every image to. "
    "Default: the backbone's native size.", lower_bound=1,
)  # fmt: skip
COMPUTE_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "float32", list(choices.COMPUTE_DTYPES), f"{choices.COMPUTE_DTYPE_HELP}."
)
PREPROCESSING = flags.DEFINE_string(
    "preprocessing", None, "For a .keras file (required) or a keras-hub preset (default: its "
    f"image converter): how [0, 1] pixels become the model's input. One of "
    f"{', '.join(choices.PREPROCESSING_MODES)}, or SCALE,OFFSET applied to 0..255 pixels (each a "
    "number, or R:G:B), e.g. 0.00784,-1.",
)  # fmt: skip
NATIVE_SIZE = flags.DEFINE_integer(
    "native_size", None, "For a .keras file or a keras-hub preset: the height and width it "
    "was trained at (default: the preset's image size, or the file's one input size).",
    lower_bound=1,
)  # fmt: skip
MIN_SIZE = flags.DEFINE_integer(
    "min_size", None, "For a .keras file or a keras-hub preset with a free input size: the "
    "smallest height and width the export accepts (default 32).", lower_bound=1,
)  # fmt: skip
# The Python arguments that library messages may name, which both export CLIs have as flags.
_FLAG_NAMES = (
    "out", "weights", "overwrite", "compute_dtype", "preprocessing", "native_size", "min_size",
    "num_classes", "pooling", "serving_size", "serving_inputs", "labels", "dropout_rate",
    "weight_decay", "backbone",
)  # fmt: skip
LIST_BACKBONES = flags.DEFINE_bool(
    "list_backbones", False, "Print every registered backbone with its facts, then exit."
)


def run(export: Callable[[], Path]) -> None:
    """Run one export; print one line and exit (command's statuses) on any failure."""
    console.quiet_python_logs()
    if LIST_BACKBONES.value:
        from exporter.making import registry

        print(registry.table())
        return
    command.require(BACKBONE, OUT)
    before = _identity(OUT.value)
    # The process ends with this export: the ~350,000 objects of its imports are never freed,
    # so Python's full collections need not scan them again and again while graphs are traced
    # and loaded (ResNet50: 0.95 s of collections, 0.26 s once frozen; docs/performance.md).
    gc.freeze()
    try:
        path = export()
        random = str(WEIGHTS.value).lower() == "none"
        note = (
            " (random weights: its outputs carry no meaning; for trying it out)" if random else ""
        )
        progress.logger.info("exported to %s%s", path, note)
        _stop_unwinding()
        _exit_now()
    except BaseException as error:
        if not command.interrupted():  # An interrupt may surface as any error (interrupts).
            if isinstance(error, ArgumentError):
                command.usage_error(console.as_flags(str(error), _FLAG_NAMES))
            if isinstance(error, ExportError):
                command.fail(console.as_flags(str(error), _FLAG_NAMES))
            raise
        if _identity(OUT.value) != before:  # It came while the export was moved into place.
            command.exit_interrupted(
                f"interrupted after the new export was moved into {OUT.value}."
            )
        command.exit_interrupted("interrupted; the output directory was left as it was.")


def _identity(path: str) -> tuple[int, int] | None:
    """The directory at ``path`` (device and inode), None if there is none: an export
    moved into place has another identity than what was there."""
    try:
        info = os.stat(os.path.expanduser(path))
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _stop_unwinding() -> None:
    # The export is in place and reported: nothing is left to undo, so a signal now just
    # ends the process, instead of unwinding through logging or TensorFlow's exit hooks.
    command.stop_unwinding()


def _exit_now() -> None:
    """End the process with status 0 without tearing the interpreter down.

    The export is written, moved into place and reported. A normal exit would then spend
    seconds freeing TensorFlow's graphs and Keras' layers one object at a time, to no one's
    benefit (``BUILD_NOTES.md``, "CLI and console output"). Output is flushed first.
    """
    copies = sys.modules.get("exporter.checking.private_copy")
    if copies is not None:  # The verified copy's assets, which exit handlers would remove.
        copies.remove_kept()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def start(main: Callable[[list[str]], None]) -> None:
    """Run ``main`` as a command (``exporter.command.start``)."""
    command.start(main)


def source_options() -> dict:
    """``--preprocessing``, ``--native_size`` and ``--min_size`` as export_* arguments."""
    mode = PREPROCESSING.value
    if mode is not None:
        from exporter.making import preprocessing

        try:
            mode = preprocessing.parse_mode(mode)
        except ValueError as error:
            raise ArgumentError(str(error).replace("preprocessing", "--preprocessing", 1)) from None
    return dict(preprocessing=mode, native_size=NATIVE_SIZE.value, min_size=MIN_SIZE.value)


def no_positional_arguments(argv: list[str]) -> None:
    """Refuse stray positional arguments (usually a mistyped flag), and missing flags."""
    command.positional_arguments(argv)
    if not LIST_BACKBONES.value:
        command.require(BACKBONE, OUT)
