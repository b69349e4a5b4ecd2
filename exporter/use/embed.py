"""Embed (or classify) a corpus of images with an export on Apache Beam.

``pipeline(...)`` is a Beam transform for users who build their own pipelines; ``run(...)``
builds, runs and summarizes a whole pipeline (what ``python -m exporter.embed`` does). The
matching, batching and inference are Beam's (``MatchFiles``, ``RunInference``); what is ours
is reading each file with care (``image_files``: regular files only, at most 1 GiB, at most
``max_pixels`` by the header, before anything is decoded), the preprocessing, the handler
and the records.

Each image is preprocessed exactly like this (see ``decode_image``)::

    image_files.check_pixels(data, max_pixels)                              # by its header
    image = tf.io.decode_image(data, channels=3, expand_animations=False)   # uint8 RGB
    image = tf.image.convert_image_dtype(image, tf.float32)                 # [0, 1]
    image = tf.image.resize(image, [image_size, image_size])                # bilinear

Example:
    >>> import apache_beam as beam
    >>> with beam.Pipeline(runner="FnApiRunner") as p:
    ...     p | pipeline("exports/mobilenet_v2", "photos/", "out/photos")
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from exporter import choices
from exporter.checking import checkpoint_index, savedmodel
from exporter.errors import Error, UnsafeOpsError
from exporter.use import image_files

# First: when Beam is missing, beam_handler's ImportError names the extra to install.
from exporter.use.beam_handler import METRICS_NAMESPACE, OPT_IN, SavedModelHandler

# isort: split
import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

logger = logging.getLogger("exporter")

FORMATS = choices.EMBED_FORMATS
DEFAULT_RUNNER = choices.DEFAULT_RUNNER
DEFAULT_SIZE = 224  # For SavedModels whose metadata states no native size.
ERRORS_SUFFIX = "-errors"
_PROGRESS_SECONDS = 10.0


class EmbedError(Error):
    """Bad input to an embedding run; the message says what was expected and received."""


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the records need to know about the export, read once when the pipeline is built."""

    path: str
    task: str | None
    output: str  # The record field: "embedding" or "logits".
    native_size: int | None
    min_size: int | None
    fixed_size: bool
    labels: tuple[str, ...] | None
    activation: str | None
    fingerprint: str


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _fingerprint(path: str) -> str:
    """TensorFlow's fingerprint of the SavedModel, or (before TF 2.12) its graph's SHA-256."""
    facts = savedmodel.identity(path)
    return facts["singleprint"] or f"sha256:{facts['saved_model_pb_sha256']}"


def describe_model(model: str, *, allow_unsafe_ops: bool = False) -> ModelFacts:
    """Scan the export at ``model`` and read its facts (metadata, labels, fingerprint).

    Raises:
        EmbedError: If it is not a readable SavedModel, or has unsafe ops.
    """
    path = _absolute(str(model))
    try:
        proto = savedmodel.read(path)
        if not allow_unsafe_ops:
            savedmodel.refuse_unsafe(path, proto, OPT_IN)
        if "://" not in path:  # Files the workers' load would refuse: refused here, in one line.
            checkpoint_index.vet(Path(path))
        labels = savedmodel.labels(path)
        fingerprint = _fingerprint(path)
    except (savedmodel.UnreadableError, UnsafeOpsError, OSError, ValueError) as error:
        raise EmbedError(f"model={model}: {error}") from None  # CheckpointError: a ValueError.
    facts = savedmodel.metadata(path)[0] or {}
    size = facts.get("input") or {}
    task = facts.get("task")
    classifier = task == "image_classification"
    return ModelFacts(
        path=path,
        task=task,
        output="logits" if classifier else "embedding",
        native_size=size.get("native_size"),
        min_size=size.get("min_size"),
        fixed_size=bool(size.get("fixed_size")),
        labels=labels,
        activation=(facts.get("classes") or {}).get("activation") if classifier else None,
        fingerprint=fingerprint,
    )


def decode_image(
    data: bytes, image_size: int, max_pixels: int = image_files.DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode one encoded image and resize it: the exact preprocessing of every record.

    JPEG, PNG (grayscale, palette and RGBA become RGB; alpha is dropped), GIF (first frame),
    BMP and WebP, of at most ``max_pixels`` (read from the header before decoding). The
    image is stretched to ``image_size`` x ``image_size`` (no crop; the aspect ratio is not
    kept).

    Returns:
        float32 ``[image_size, image_size, 3]`` RGB in ``[0, 1]``.

    Raises:
        image_files.ImageFileError: If the header declares more than ``max_pixels``.
        tf.errors.InvalidArgumentError: If ``data`` is not a decodable image.
    """
    return image_files.decode(data, image_size, max_pixels)  # Shared with convert.


def _reason(error: Exception) -> str:
    """TensorFlow's op error without its ``{{function_node ...}}`` and ``[Op:...]`` wrapping."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    if message.startswith("{{"):
        message = message.split("}} ", 1)[-1]
    return message.split(" [Op:", 1)[0].strip()


class _Progress:
    """Log one worker's counts every few seconds while the pipeline runs."""

    def __init__(self, template: str):
        self.template, self.counts = template, {"images": 0, "failed": 0}
        self.start = self.last = time.monotonic()

    def add(self, what: str) -> None:
        self.counts[what] += 1
        now = time.monotonic()
        if now - self.last >= _PROGRESS_SECONDS:
            self.last = now
            rate = self.counts["images"] / (now - self.start)
            line = self.template.format(**self.counts)
            logger.info("%s on this worker so far (%.1f images/s)", line, rate)


class _DecodeImages(beam.DoFn):
    """``FileMetadata`` -> ``(path, image)``, or ``{"path", "error"}`` on the ``errors`` tag."""

    ERRORS = "errors"

    def __init__(self, image_size: int, max_pixels: int):
        self.image_size, self.max_pixels = image_size, max_pixels
        self.read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_read")
        self.failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_failed")

    def setup(self):
        self.progress = _Progress("read {images} images, {failed} failed")

    def process(self, path: str):
        if path.endswith(("/", "\\")):  # A remote filesystem's folder marker.
            return
        try:  # Refused files (ImageFileError is a ValueError) are errors like broken ones.
            image = decode_image(image_files.read(path), self.image_size, self.max_pixels)
        except (tf.errors.OpError, OSError, ValueError) as error:
            self.failed.inc()
            self.progress.add("failed")
            logger.warning("not an image, skipped: %s: %s", path, _reason(error))
            yield beam.pvalue.TaggedOutput(self.ERRORS, {"path": path, "error": _reason(error)})
            return
        self.read.inc()
        self.progress.add("images")
        yield path, image


class ReadImages(beam.PTransform):
    """Match a glob (or every file under a directory), read and decode each file.

    Applied to a pipeline root, gives ``{"images": (path, image), "errors": {path, error}}``.
    Files that are not images, are truncated or cannot be read, and files refused unread
    (not regular files: devices, FIFOs, links to them; over 1 GiB; images of more than
    ``max_pixels`` by their header) go to ``errors``; they never fail the pipeline.
    """

    def __init__(
        self, images: str, image_size: int, max_pixels: int = image_files.DEFAULT_MAX_PIXELS
    ):
        super().__init__()
        self.patterns = image_patterns(images)
        self.image_size, self.max_pixels = image_size, max_pixels

    def expand(self, root):
        decoded = (
            root
            | "Patterns" >> beam.Create(self.patterns)
            | "Match" >> fileio.MatchAll()
            # A file two patterns match is read once (only "a/**/**/b" makes such pairs).
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Once" >> beam.Distinct()
            # Few patterns are few elements: spread the files over workers before reading.
            | "Spread" >> beam.Reshuffle()
            | "Decode"
            >> beam.ParDo(_DecodeImages(self.image_size, self.max_pixels)).with_outputs(
                _DecodeImages.ERRORS, main="images"
            )
        )
        return {"images": decoded.images, "errors": decoded[_DecodeImages.ERRORS]}


def _scores(logits: np.ndarray, activation: str | None) -> np.ndarray:
    if activation == "softmax":
        shifted = np.exp(logits - logits.max())
        return shifted / shifted.sum()
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits  # Undocumented activation: rank by the logits themselves.


class _ToRecords(beam.DoFn):
    """``(path, PredictionResult)`` -> one record; logs progress while the pipeline runs."""

    def __init__(self, facts: ModelFacts, top_k: int | None):
        self.facts, self.top_k = facts, top_k
        self.embedded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_embedded")

    def setup(self):
        self.progress = _Progress("embedded {images} images")

    def process(self, keyed):
        path, result = keyed
        vector = np.asarray(result.inference, dtype=np.float32)
        record = {"path": path, self.facts.output: vector.tolist()}
        if self.top_k:
            scores = _scores(vector, self.facts.activation)
            best = np.argsort(-scores, kind="stable")[: self.top_k]
            labels = self.facts.labels
            record["top_k"] = [
                {"label": labels[i] if labels else str(i), "score": float(scores[i])} for i in best
            ]
        record["model"] = self.facts.fingerprint
        self.embedded.inc()
        self.progress.add("images")
        yield record


def _parquet_schema(facts: ModelFacts, top_k: int | None):
    try:
        import pyarrow as pa
    except ImportError:
        raise EmbedError(
            "format=\"parquet\" needs pyarrow: pip install 'tfhub-exporter[beam]'"
        ) from None
    fields = [("path", pa.string()), (facts.output, pa.list_(pa.float32()))]
    if top_k:
        pair = pa.struct([("label", pa.string()), ("score", pa.float32())])
        fields.append(("top_k", pa.list_(pair)))
    fields.append(("model", pa.string()))
    return pa.schema(fields)


def _example(record: dict, output: str) -> bytes:
    feature = tf.train.Feature
    features = {
        "path": feature(bytes_list=tf.train.BytesList(value=[record["path"].encode()])),
        output: feature(float_list=tf.train.FloatList(value=record[output])),
        "model": feature(bytes_list=tf.train.BytesList(value=[record["model"].encode()])),
    }
    if "top_k" in record:
        labels = [pair["label"].encode() for pair in record["top_k"]]
        scores = [pair["score"] for pair in record["top_k"]]
        features["top_k_labels"] = feature(bytes_list=tf.train.BytesList(value=labels))
        features["top_k_scores"] = feature(float_list=tf.train.FloatList(value=scores))
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString()


class WriteRecords(beam.PTransform):
    """Write records as ``{out}-SSSSS-of-NNNNN.{format}``."""

    def __init__(self, out: str, format: str, facts: ModelFacts, top_k: int | None):
        super().__init__()
        self.out, self.format, self.facts, self.top_k = out, format, facts, top_k
        if format == "parquet":
            self.schema = _parquet_schema(facts, top_k)

    def expand(self, records):
        suffix = f".{self.format}"
        if self.format == "parquet":
            return records | beam.io.WriteToParquet(self.out, self.schema, file_name_suffix=suffix)
        if self.format == "tfrecord":
            output = self.facts.output
            return (
                records
                | "Example" >> beam.Map(_example, output)
                | beam.io.WriteToTFRecord(self.out, file_name_suffix=suffix)
            )
        return (
            records
            | "Json" >> beam.Map(json.dumps)
            | beam.io.WriteToText(self.out, file_name_suffix=suffix)
        )


class Embed(beam.PTransform):
    """The whole job as one transform; see ``pipeline``."""

    def __init__(
        self,
        facts: ModelFacts,
        images: str,
        out: str | None,
        image_size: int,
        format: str,
        top_k: int | None,
        handler: SavedModelHandler,
        max_pixels: int = image_files.DEFAULT_MAX_PIXELS,
    ):
        super().__init__()
        self.facts, self.images, self.out = facts, images, out
        self.image_size, self.format, self.top_k, self.handler = image_size, format, top_k, handler
        self.max_pixels = max_pixels

    def expand(self, root):
        read = root | "ReadImages" >> ReadImages(self.images, self.image_size, self.max_pixels)
        records = (
            read["images"]
            | "RunInference" >> RunInference(KeyedModelHandler(self.handler))
            | "Records" >> beam.ParDo(_ToRecords(self.facts, self.top_k))
        )
        if self.out:
            records | "Write" >> WriteRecords(self.out, self.format, self.facts, self.top_k)
            (
                read["errors"]
                | "ErrorsJson" >> beam.Map(json.dumps)
                | "WriteErrors"
                >> beam.io.WriteToText(self.out + ERRORS_SUFFIX, file_name_suffix=".jsonl")
            )
        return {"records": records, "errors": read["errors"]}


def image_pattern(images: str) -> str:
    """The glob for ``images``: itself, or every file under it when it is a directory."""
    images = _absolute(str(images))
    if "://" not in images and os.path.isdir(images):
        return os.path.join(images, "**")
    return images


def image_patterns(images: str) -> list[str]:
    """Beam globs that together match what ``image_pattern(images)`` means in a shell.

    ``**/`` matches zero or more folders, as in shells and ``glob.glob(recursive=True)``;
    Beam's ``**`` is any text, so ``photos/**/*.jpg`` would need at least one folder and
    skip ``photos/a.jpg``. Each ``**/`` is therefore also tried as nothing.

    Example:
        >>> image_patterns("/data/photos/**/*.jpg")
        ['/data/photos/**/*.jpg', '/data/photos/*.jpg']
    """
    parts = image_pattern(images).split("**/")
    variants = []
    for keep in itertools.product(("**/", ""), repeat=len(parts) - 1):
        pairs = zip(keep, parts[1:], strict=True)
        variants.append(parts[0] + "".join(star + part for star, part in pairs))
    return list(dict.fromkeys(variants))


def _image_size(facts: ModelFacts, image_size: int | None) -> int:
    if image_size is None:
        return facts.native_size or DEFAULT_SIZE
    if image_size < 1:
        raise EmbedError(f"image_size={image_size}: expected a positive number of pixels.")
    if facts.fixed_size and facts.native_size and image_size != facts.native_size:
        raise EmbedError(
            f"image_size={image_size}: the model takes exactly "
            f"{facts.native_size}x{facts.native_size} images."
        )
    if facts.min_size and image_size < facts.min_size:
        raise EmbedError(
            f"image_size={image_size}: the model needs at least "
            f"{facts.min_size}x{facts.min_size} images."
        )
    return image_size


def _check_top_k(facts: ModelFacts, top_k: int | None) -> None:
    if top_k is None:
        return
    if top_k < 1:
        raise EmbedError(f"top_k={top_k}: expected at least 1.")
    if facts.task == "image_feature_vector":
        raise EmbedError(
            f"top_k={top_k} needs a classifier; {facts.path} is an image feature vector "
            "(its records hold the embedding)."
        )
    if facts.labels is not None and top_k > len(facts.labels):
        raise EmbedError(f"top_k={top_k}, but the model has {len(facts.labels)} classes.")


# Long: its docstring documents the public API.
def pipeline(
    model: str,
    images: str,
    out: str | None = None,
    *,
    batch_size: int = 32,
    image_size: int | None = None,
    format: str = "parquet",
    top_k: int | None = None,
    allow_unsafe_ops: bool = False,
    max_pixels: int = image_files.DEFAULT_MAX_PIXELS,
) -> Embed:
    """Make the Beam transform that embeds every image matched by ``images`` with ``model``.

    Apply it to a pipeline root. It returns ``{"records": ..., "errors": ...}``: one record
    per image, ``{"path", "embedding" (or "logits" and, with ``top_k``, "top_k": [{"label",
    "score"}]), "model"}`` (``model`` is the export's fingerprint), and ``{"path", "error"}``
    per file that is not an image. With ``out`` it also writes them, as
    ``{out}-SSSSS-of-NNNNN.{format}`` and ``{out}-errors-SSSSS-of-NNNNN.jsonl``.

    Args:
        model: The export (a SavedModel directory; local or any filesystem TF reads).
        images: A glob, or a directory (every file under it, recursively).
        out: The output prefix; None writes nothing.
        batch_size: Images per model call (Beam's ``BatchElements`` min and max).
        image_size: Height and width the images are resized to; default: the export's native
            size from its metadata, else 224.
        format: ``parquet``, ``tfrecord`` or ``jsonl``.
        top_k: Classifiers: add the ``top_k`` best ``(label, score)`` pairs; scores are the
            softmax or sigmoid the model card states, else the logits.
        allow_unsafe_ops: Run the model even if its graph has unsafe ops.
        max_pixels: The most pixels (height x width, read from the header before decoding)
            an image may have; larger ones go to the errors (default 100 megapixels).

    Raises:
        EmbedError: For a model that cannot be used, or a bad argument.

    Example:
        >>> with beam.Pipeline(runner="FnApiRunner") as p:
        ...     result = p | pipeline("exports/classifier", "photos/*.jpg", top_k=5)
        ...     result["records"] | beam.Map(print)
    """
    if format not in FORMATS:
        raise EmbedError(f'format="{format}": expected one of {", ".join(FORMATS)}.')
    if batch_size < 1:
        raise EmbedError(f"batch_size={batch_size}: expected at least 1.")
    if max_pixels < 1:
        raise EmbedError(f"max_pixels={max_pixels}: expected at least 1.")
    facts = describe_model(model, allow_unsafe_ops=allow_unsafe_ops)
    size = _image_size(facts, image_size)
    _check_top_k(facts, top_k)
    if top_k and facts.task is None:  # No metadata, but asked for classes: logits it is.
        facts = dataclasses.replace(facts, output="logits")
    handler = SavedModelHandler(
        facts.path,
        min_batch_size=batch_size,
        max_batch_size=batch_size,
        allow_unsafe_ops=allow_unsafe_ops,
    )
    out = _absolute(str(out)) if out else None
    return Embed(facts, images, out, size, format, top_k, handler, max_pixels)


@dataclasses.dataclass
class Summary:
    """What a run did, from Beam's metrics counters."""

    images_read: int
    images_embedded: int
    images_failed: int
    batches: int
    seconds: float
    records: list[str]
    errors: list[str]
    model_load_seconds: float = 0.0  # Summed over workers, from RunInference's metrics.

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        where = ", ".join(self.records) or "no record files"
        failed = f" (listed in {', '.join(self.errors)})" if self.images_failed else ""
        return (
            f"embedded {self.images_embedded} images, {self.images_failed} failed{failed}, "
            f"in {self.batches} batches, {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} images/s; records: {where}"
        )


def _check_images(images: str) -> str:
    pattern = image_pattern(images)
    try:
        results = FileSystems.match(image_patterns(images))
    except Exception as error:  # Beam raises BeamIOError, or the filesystem's own errors.
        raise EmbedError(f"images={images}: cannot list it: {error}") from None
    found = [metadata for result in results for metadata in result.metadata_list]
    if not found:
        raise EmbedError(f"images={images}: no files match (searched {pattern}).")
    return pattern


def _check_out(out: str) -> None:
    if "://" in out:
        return  # Remote filesystems: Beam reports its own errors.
    directory = os.path.dirname(out) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".exporter-probe-"):
            pass
    except OSError as error:
        raise EmbedError(
            f"out={out}: cannot write into {directory}: {error.strerror or error}."
        ) from None


def _counters(result) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.result or 0)
    return totals


def _model_load_seconds(result) -> float:
    query = result.metrics().query(MetricsFilter().with_name("load_model_latency_milli_secs"))
    return sum(d.result.sum for d in query["distributions"] if d.result) / 1000.0


def run(
    model: str,
    images: str,
    out: str,
    *,
    batch_size: int = 32,
    image_size: int | None = None,
    format: str = "parquet",
    top_k: int | None = None,
    runner: str = DEFAULT_RUNNER,
    beam_args: Sequence[str] = (),
    allow_unsafe_ops: bool = False,
    max_pixels: int = image_files.DEFAULT_MAX_PIXELS,
) -> Summary:
    """Build and run the whole pipeline; return what it did.

    Args:
        model, images, out, batch_size, image_size, format, top_k, allow_unsafe_ops,
            max_pixels: As in ``pipeline``; ``out`` is required here.
        runner: The Beam runner; default ``FnApiRunner`` (local, downloads nothing).
        beam_args: Any other Beam pipeline options, e.g. ``["--direct_num_workers=2",
            "--direct_running_mode=multi_processing"]`` or Dataflow's ``--project=...``.

    Raises:
        EmbedError: For a bad argument, before anything runs.
        Exception: Whatever failed the pipeline; the temporary folders of its writes
            (``beam-temp-*`` beside ``out``) are removed first.

    Example:
        >>> run("exports/mobilenet_v2", "photos/", "out/photos").line()
        'embedded 118 images, 2 failed (...), in 4 batches, 9.1 s, 13.0 images/s; ...'
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    transform = pipeline(
        model, images, out, batch_size=batch_size, image_size=image_size, format=format,
        top_k=top_k, allow_unsafe_ops=allow_unsafe_ops, max_pixels=max_pixels,
    )  # fmt: skip
    _check_images(images)
    _check_out(transform.out)
    options = PipelineOptions(list(beam_args), runner=runner)
    start = time.perf_counter()
    p = beam.Pipeline(options=options)
    p | "Embed" >> transform
    result = _run_to_the_end(p, transform.out)
    seconds = time.perf_counter() - start
    counts = _counters(result)
    errors = f"{transform.out}{ERRORS_SUFFIX}-*.jsonl"
    return Summary(
        images_read=counts.get("images_read", 0),
        images_embedded=counts.get("images_embedded", 0),
        images_failed=counts.get("images_failed", 0),
        batches=counts.get("batches", 0),
        seconds=seconds,
        records=_files(f"{transform.out}-[0-9]*-of-*.{format}"),
        errors=_files(errors),
        model_load_seconds=_model_load_seconds(result),
    )


def _run_to_the_end(p: beam.Pipeline, out: str):
    """Run ``p`` and wait for it; if it fails, remove the temporary folders its writes left."""
    before = _write_temporaries(out)
    try:
        result = p.run()
        result.wait_until_finish()
    except BaseException:
        for path in _write_temporaries(out) - before:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return result


def _write_temporaries(out: str) -> set[str]:
    """The folders Beam's file sinks write into before they finalize, for ``out`` and its
    errors (``beam-temp-NAME-UUID`` beside it); a failed pipeline leaves them behind."""
    if "://" in out:
        return set()  # Remote filesystems: left to Beam and the bucket's lifecycle.
    directory, name = os.path.split(out)
    pattern = re.compile(rf"beam-temp-{re.escape(name)}(?:{ERRORS_SUFFIX})?-[0-9a-f]{{32}}")
    try:
        entries = os.listdir(directory)
    except OSError:
        return set()
    return {os.path.join(directory, e) for e in entries if pattern.fullmatch(e)}


def _files(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
