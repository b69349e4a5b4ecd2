"""Convert an export to LiteRT or ONNX, verified in the target's runtime before it is written.

Usage:
    python -m exporter.convert EXPORT --to=litert|onnx --out=FILE
        [--quantize=none|float16|dynamic_int8|int8] [--size=H[,W]] [--overwrite]
        [--allow_unsafe_ops] [--calibration=DIR|GLOB] [--calibration_steps=N]
        [--validation=DIR|GLOB] [--io=float32|uint8|int8] [--min_agreement=X]
        [--min_cosine=X] [--require_full_integer]

Converts serving_default, runs the result in ai_edge_litert or onnxruntime at two sizes and
batch sizes 1 and 3 against the SavedModel, prints the measured parity, and writes FILE and
FILE.json (admissible sizes, preprocessing, labels, the export's fingerprint) only if it is
within the mode's tolerance. --quantize=int8 (full integer) is calibrated on --calibration's
image files and verified on held-out ones (top-1/top-5 agreement or cosine similarity,
written to FILE.json and FILE.report.md), and refused below --min_agreement or --min_cosine.
The graph is scanned for ops that touch files, processes, the
network or Python before anything is loaded; such a model is refused unless
--allow_unsafe_ops is given. Needs: pip install 'tfhub-exporter[convert]'.

Exit status: 0 converted, 1 the conversion failed, 2 a usage error, 130 interrupted.
"""

import logging as std_logging

from absl import flags

from exporter import choices, command, console
from exporter.errors import ArgumentError, Error

_TO = flags.DEFINE_enum("to", None, list(choices.RUNTIMES), "The target runtime.")
_OUT = flags.DEFINE_string(
    "out", None, "The file to write (.tflite or .onnx); FILE.json is written beside it."
)
_QUANTIZE = flags.DEFINE_enum(
    "quantize", "none", list(choices.QUANTIZATIONS), "LiteRT only: none (float32), float16 "
    "(float16 weights, half the size), dynamic_int8 (dynamic-range int8 weights) or int8 "
    "(full integer, calibrated on --calibration).",
)  # fmt: skip
_CALIBRATION = flags.DEFINE_string(
    "calibration", None, "--quantize=int8: a directory (every file under it) or glob of real "
    "image files like those the model will see; decoded and resized as embed does.",
)  # fmt: skip
_CALIBRATION_STEPS = flags.DEFINE_integer(
    "calibration_steps", choices.DEFAULT_CALIBRATION_STEPS,
    "--quantize=int8: how many calibration images the converter sees.",
)  # fmt: skip
_VALIDATION = flags.DEFINE_string(
    "validation", None, "--quantize=int8: a directory or glob of held-out images to verify "
    f"on. Default: {choices.HELD_OUT_SHARE:.0%} of the calibration files, never used to calibrate.",
)  # fmt: skip
_IO = flags.DEFINE_enum(
    "io", "float32", list(choices.INT8_IO_TYPES), "--quantize=int8: the input and output "
    "dtype; the input's scale and zero point are written to FILE.json.",
)  # fmt: skip
_MIN_AGREEMENT = flags.DEFINE_float(
    "min_agreement", choices.DEFAULT_MIN_AGREEMENT,
    "--quantize=int8, classifiers: the least top-1 agreement with the SavedModel.",
)  # fmt: skip
_MIN_COSINE = flags.DEFINE_float(
    "min_cosine", choices.DEFAULT_MIN_COSINE,
    "--quantize=int8, feature vectors: the least mean cosine similarity to the SavedModel.",
)  # fmt: skip
_REQUIRE_FULL_INTEGER = flags.DEFINE_bool(
    "require_full_integer", False, "--quantize=int8: refuse if any op stayed float.",
)  # fmt: skip
_SIZE = flags.DEFINE_string(
    "size", None, "A fixed input size H or H,W, which mobile runtimes prefer. Default: the "
    "export's own (dynamic height and width, or its one size).",
)  # fmt: skip
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace FILE and FILE.json if they exist.")
_ALLOW_UNSAFE_OPS = flags.DEFINE_bool(
    "allow_unsafe_ops", False, "Load and run the model even if its graph has ops that touch "
    "files, processes, the network or Python.",
)  # fmt: skip


# The Python arguments of convert() that its messages may name: flags of the same name here.
_FLAG_NAMES = (
    "out", "overwrite", "allow_unsafe_ops", "size", "quantize", "to", "calibration_steps",
    "calibration", "validation", "io", "min_agreement", "min_cosine", "require_full_integer",
)  # fmt: skip


def main(argv: list[str]) -> int:
    (export,) = command.positional_arguments(argv, 1, "one SavedModel directory (EXPORT)")
    command.require(_TO, _OUT)
    console.quiet_python_logs()
    # TensorFlow's and the converters' own INFO lines drown the stages and the figures.
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    # After the flags are parsed and checked: the library, and with it TensorFlow.
    from exporter.use import convert

    try:
        result = convert.convert(
            export,
            _OUT.value,
            to=_TO.value,
            quantize=_QUANTIZE.value,
            size=_SIZE.value,
            overwrite=_OVERWRITE.value,
            allow_unsafe_ops=_ALLOW_UNSAFE_OPS.value,
            calibration=_CALIBRATION.value,
            calibration_steps=_CALIBRATION_STEPS.value,
            validation=_VALIDATION.value,
            io=_IO.value,
            min_agreement=_MIN_AGREEMENT.value,
            min_cosine=_MIN_COSINE.value,
            require_full_integer=_REQUIRE_FULL_INTEGER.value,
        )
    except ArgumentError as error:
        command.usage_error(console.as_flags(str(error), _FLAG_NAMES))
    except Error as error:
        command.fail(console.as_flags(str(error), _FLAG_NAMES))
    print(result.summary())
    print(f"warning: {result.warning}")
    return command.SUCCESS


if __name__ == "__main__":
    command.start(main)
