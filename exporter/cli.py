"""What the two export CLIs share: common flags, signal handling, one-line errors."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from absl import app, flags

from exporter import console, progress
from exporter.errors import ExportError
from exporter.making import build, precision, preprocessing, registry

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
WEIGHTS = flags.DEFINE_string("weights", "imagenet", f"Weights: {build.WEIGHTS_HELP}.")
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
    "compute_dtype", "float32", list(precision.COMPUTE_DTYPES), f"{precision.HELP}."
)
PREPROCESSING = flags.DEFINE_string(
    "preprocessing", None, "For a .keras file (required) or a keras-hub preset (default: its "
    f"image converter): how [0, 1] pixels become the model's input. One of "
    f"{', '.join(preprocessing.MODES)}, or SCALE,OFFSET applied to 0..255 pixels (each a "
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
    "num_classes",
)  # fmt: skip
LIST_BACKBONES = flags.DEFINE_bool(
    "list_backbones", False, "Print every registered backbone with its facts, then exit."
)


_interrupted = []


def _interrupt(signum, frame):
    # SIGINT and SIGTERM unwind like Ctrl-C, so the export cleans up after itself. The
    # interrupt can land inside a C extension's callback, which then fails with another
    # exception type (seen: SystemError); the record says it was an interrupt all the same.
    _interrupted.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def run(export: Callable[[], Path]) -> None:
    """Run one export; print one line and exit non-zero on any user-facing failure."""
    console.quiet_python_logs()
    if LIST_BACKBONES.value:
        print(registry.table())
        return
    missing = [f"--{flag.name}" for flag in (BACKBONE, OUT) if not flag.value]
    if missing:
        sys.exit(f"error: {' and '.join(missing)} required; see --help.")
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
    except ExportError as error:
        sys.exit(f"error: {console.as_flags(str(error), _FLAG_NAMES)}")
    except BaseException:
        if not _interrupted:
            raise
        if _identity(OUT.value) != before:  # It came while the export was moved into place.
            sys.exit(f"error: interrupted after the new export was moved into {OUT.value}.")
        sys.exit("error: interrupted; the output directory was left as it was.")


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
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is _interrupt:
            signal.signal(signum, signal.SIG_DFL)


def _exit_now() -> None:
    """End the process with status 0 without tearing the interpreter down.

    The export is written, moved into place and reported. A normal exit would then spend
    seconds freeing TensorFlow's graphs and Keras' layers one object at a time, to no one's
    benefit (``BUILD_NOTES.md``, "CLI and console output"). Output is flushed first.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def start(main: Callable[[list[str]], None]) -> None:
    """Run ``main`` under absl with SIGINT and SIGTERM unwinding cleanly."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    app.run(main)


def source_options() -> dict:
    """``--preprocessing``, ``--native_size`` and ``--min_size`` as export_* arguments."""
    mode = PREPROCESSING.value
    if mode is not None:
        try:
            mode = preprocessing.parse_mode(mode)
        except ValueError as error:
            raise ExportError(str(error).replace("preprocessing", "--preprocessing", 1)) from None
    return dict(preprocessing=mode, native_size=NATIVE_SIZE.value, min_size=MIN_SIZE.value)


def no_positional_arguments(argv: list[str]) -> None:
    """Refuse stray positional arguments (usually a mistyped flag)."""
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; flags take the form --name=value.")
