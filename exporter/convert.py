"""Convert an export to LiteRT or ONNX, verified in the target's runtime before it is written.

Usage:
    python -m exporter.convert EXPORT --to=litert|onnx --out=FILE
        [--quantize=none|float16|dynamic_int8] [--size=H[,W]] [--overwrite]
        [--allow_unsafe_ops]

Converts serving_default, runs the result in ai_edge_litert or onnxruntime at two sizes and
batch sizes 1 and 3 against the SavedModel, prints the measured parity, and writes FILE and
FILE.json (admissible sizes, preprocessing, labels, the export's fingerprint) only if it is
within the mode's tolerance. The graph is scanned for ops that touch files, processes, the
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
    "(float16 weights, half the size) or dynamic_int8 (dynamic-range int8 weights).",
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
_FLAG_NAMES = ("out", "overwrite", "allow_unsafe_ops", "size", "quantize", "to")


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
