"""Embed (or classify) every image of a folder or glob with an export, on Apache Beam.

Usage:
    python -m exporter.embed --model=EXPORT --images=GLOB_OR_DIR --out=PREFIX
        [--batch_size=32] [--image_size=N] [--format=parquet|tfrecord|jsonl] [--top_k=K]
        [--max_pixels=100000000] [--runner=FnApiRunner]
        [any Beam pipeline option, e.g. --direct_num_workers=2]

Writes PREFIX-SSSSS-of-NNNNN.FORMAT (one record per image) and
PREFIX-errors-SSSSS-of-NNNNN.jsonl (the files that are not images, or were refused unread:
not regular files, over 1 GiB, or over --max_pixels by their header; with the reason).
Exit status: 0 when the pipeline ran (even if some files were not images), 1 when it
failed, 2 on a usage error (a bad flag, model, glob or output prefix), 130 interrupted.
"""

import contextlib
import logging as std_logging

from absl import flags
from absl import logging as absl_logging

from exporter import choices, command, console, progress

_ENTRY_POINTS = ("pipeline", "run")


def __getattr__(name: str):
    # The Python entry points, from the library (TensorFlow and Beam load on first use).
    if name in _ENTRY_POINTS:
        from exporter.use import embed

        return getattr(embed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MODEL = flags.DEFINE_string("model", None, "The export: a SavedModel directory (or gs://...).")
_IMAGES = flags.DEFINE_string(
    "images", None, "A glob of image files, or a directory (every file under it, recursively)."
)
_OUT = flags.DEFINE_string(
    "out", None, "Output prefix: writes PREFIX-SSSSS-of-NNNNN.FORMAT and PREFIX-errors-*.jsonl."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 32, "Images per model call (fewer only at the end of a bundle)."
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Resize images to this height and width; default: the export's native "
    "size from its metadata, else 224."
)  # fmt: skip
_FORMAT = flags.DEFINE_enum("format", "parquet", list(choices.EMBED_FORMATS), "Output file format.")
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "Classifiers: add the K best (label, score) pairs from assets/labels.txt."
)
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", choices.DEFAULT_MAX_PIXELS, "The most pixels (height x width) an image may have, "
    "read from its header before it is decoded; larger ones are listed in the errors.",
)  # fmt: skip
_RUNNER = flags.DEFINE_string(
    "runner", choices.DEFAULT_RUNNER, "Beam runner: FnApiRunner (local, downloads nothing), "
    "DataflowRunner, FlinkRunner, ... Other Beam pipeline options are passed through."
)  # fmt: skip
_ALLOW_UNSAFE_OPS = flags.DEFINE_bool(
    "allow_unsafe_ops", False, "Run the model even if its graph has ops that touch files, "
    "processes, the network or Python."
)  # fmt: skip

# The library's messages name its arguments (`top_k=0`); here they are these flags.
_FLAG_NAMES = tuple(
    flag.name for flag in (_MODEL, _IMAGES, _OUT, _BATCH_SIZE, _IMAGE_SIZE, _FORMAT, _TOP_K,
                           _MAX_PIXELS, _RUNNER, _ALLOW_UNSAFE_OPS)
)  # fmt: skip


def _parse(argv: list[str]) -> list[str]:
    # Flags we do not define are Beam pipeline options, passed through to Beam.
    return command.parse(argv, known_only=True)


@contextlib.contextmanager
def _beam_quiet():
    """Beam's warnings while it loads ("apitools not found") and parses ("Discarding
    unparseable args"): we report an unknown flag ourselves, in one line."""
    std_logging.disable(std_logging.WARNING)
    try:
        yield
    finally:
        std_logging.disable(std_logging.NOTSET)


def _unknown_options(args: list[str]) -> list[str]:
    with _beam_quiet():
        try:
            from apache_beam.options.pipeline_options import PipelineOptions
        except ImportError:  # The library's import names the extra to install.
            return []
        options = PipelineOptions(args)
        known = options.get_all_options()
        every = options.get_all_options(retain_unknown_options=True)
    return sorted(f"--{name}" for name in set(every) - set(known))


def main(argv: list[str]) -> int:
    beam_args = argv[1:]
    positional = [arg for arg in beam_args if not arg.startswith("-")]
    if positional:
        command.usage_error(f"unexpected arguments {positional}; flags take the form --name=value.")
    command.require(_MODEL, _IMAGES, _OUT)
    unknown = _unknown_options(beam_args) if beam_args else []
    if unknown:
        command.usage_error(f"unknown flags {unknown}: neither ours nor Beam pipeline options.")
    # TensorFlow's and Beam's INFO lines drown the progress and the summary.
    for name in ("tensorflow", "apache_beam"):
        std_logging.getLogger(name).setLevel(std_logging.WARNING)
    absl_logging.set_verbosity(absl_logging.INFO)
    progress.enable_stage_lines()  # Our progress lines and warnings, plain.
    try:
        from exporter.use.embed import EmbedError, run
    except ImportError as error:
        if "tfhub-exporter[beam]" not in str(error):
            raise
        command.fail(str(error))
    try:
        summary = run(
            _MODEL.value,
            _IMAGES.value,
            _OUT.value,
            batch_size=_BATCH_SIZE.value,
            image_size=_IMAGE_SIZE.value,
            format=_FORMAT.value,
            top_k=_TOP_K.value,
            runner=_RUNNER.value,
            beam_args=beam_args,
            allow_unsafe_ops=_ALLOW_UNSAFE_OPS.value,
            max_pixels=_MAX_PIXELS.value,
        )
    except EmbedError as error:
        command.usage_error(console.as_flags(str(error), _FLAG_NAMES))
    except Exception as error:  # The pipeline itself failed: Beam has logged the details.
        absl_logging.exception("pipeline failed")
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        command.fail(f"the pipeline failed: {type(error).__name__}: {first}")
    print(summary.line())
    return command.SUCCESS


if __name__ == "__main__":
    command.start(main, known_only=True)
