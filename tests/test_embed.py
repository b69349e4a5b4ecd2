"""Batch embedding on Apache Beam: `python -m exporter.embed` and `exporter.embed.pipeline`.

Beam and TensorFlow start slowly, so the pipeline runs are few and shared: one CLI run over
the whole corpus (parquet), the same run with two worker processes (jsonl), and one
in-process run of the Python entry point with a classifier (tfrecord, top-k).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, run_cli
from test_unsafe_models import _Reducer, _save, _Writer  # _Writer: the hostile model.

pytest.importorskip("apache_beam", reason="pip install 'tfhub-exporter[beam]'")
pa_parquet = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")

import apache_beam as beam  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult  # noqa: E402

import exporter  # noqa: E402
from exporter.use import embed, image_files  # noqa: E402
from exporter.use.beam_handler import SavedModelHandler, UnsafeModelError  # noqa: E402

SIZE = 48  # Small images keep the runs fast; MobileNetV2 takes 32 and up.
LABELS = ["apple", "banana", "cherry", "date", "elderberry"]
# A closed local port as proxy: anything that tries the network fails fast, online or not.
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": ""}  # fmt: skip
MODES = ("RGB", "L", "P", "RGBA")


def _encode(image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, with 16 rows of data:
    a pixel bomb of 1 KB that a decoder allocates ``3 * width * height`` bytes for."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 16)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# Files a stranger's corpus may hold, each refused unread (issue 32): name -> reason.
HOSTILE = {
    "zero.jpg": "to be a regular file. Received a character device.",
    "pipe.png": "to be a regular file. Received a FIFO (named pipe).",
    "bomb.png": "Expected at most max_pixels=100000000 pixels. Received a PNG of 23000x23000 "
    "(529000000 pixels), refused before decoding.",
}


def _hostile_files(folder: Path) -> list[str]:
    """Make ``HOSTILE``'s files in ``folder``; return their paths."""
    folder.mkdir()
    (folder / "zero.jpg").symlink_to("/dev/zero")  # Read without end: a MemoryError once.
    os.mkfifo(folder / "pipe.png")  # Blocked the pipeline forever once.
    (folder / "bomb.png").write_bytes(_png_declaring(23000, 23000))  # 8.6 GB once.
    return [str(folder / name) for name in HOSTILE]


def _good_file(index: int, rng: np.random.Generator) -> tuple[str, bytes]:
    height, width = (int(v) for v in rng.integers(16, 90, size=2))
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    kind = index % 8
    if kind == 0:
        return "jpg", _encode(image, "JPEG")
    if kind == 1:
        return "jpeg", _encode(image.convert("L"), "JPEG")
    if kind in (2, 3, 4, 5):
        return "png", _encode(image.convert(MODES[kind - 2]), "PNG")
    if kind == 6:
        frames = [image.convert("P"), image.rotate(90).convert("P")]
        return "gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    return "bmp", _encode(image, "BMP")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """123 files in nested folders: 115 images of mixed formats and sizes, 5 broken files,
    and in hostile/ 3 files refused unread (``_hostile_files``)."""
    root = tmp_path_factory.mktemp("corpus")
    folders = [root, root / "a", root / "a" / "b", root / "c" / "d" / "e"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    good = []
    for index in range(115):
        suffix, data = _good_file(index, rng)
        path = folders[index % len(folders)] / f"image_{index:03d}.{suffix}"
        path.write_bytes(data)
        good.append(str(path))
    jpeg, png = _good_file(0, rng)[1], _good_file(2, rng)[1]
    broken = {
        root / "notes.txt": b"not an image at all\n",
        root / "a" / "truncated.jpg": jpeg[: len(jpeg) // 2],
        root / "a" / "b" / "truncated.png": png[: len(png) // 2],
        root / "c" / "empty.png": b"",
        root / "c" / "d" / "noise.gif": rng.bytes(700),
    }
    for path, data in broken.items():
        path.write_bytes(data)
    hostile = _hostile_files(root / "hostile")
    return root, sorted(good), sorted([*map(str, broken), *hostile])


def reference_images(paths: list[str], size: int = SIZE) -> np.ndarray:
    """The README's preprocessing, written out here independently of the code under test."""
    images = []
    for path in paths:
        image = tf.io.decode_image(Path(path).read_bytes(), channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        images.append(tf.image.resize(image, [size, size], method="bilinear", antialias=False))
    return np.stack(images)


@pytest.fixture(scope="module")
def feature_vector(export) -> Path:
    return Path(export("feature_vector", "mobilenet_v2", "calibrated"))


@pytest.fixture(scope="module")
def loaded(feature_vector):
    return tf.saved_model.load(str(feature_vector))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A small classifier export with labels (a MobileNetV2 one costs a minute on 2 cores)."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    backbone = keras.Model(inputs, keras.layers.Conv2D(32, 3, activation="relu")(features))
    module = exporter.ClassifierModule(
        backbone, preprocessing="identity", num_classes=len(LABELS), labels=LABELS,
        native_size=SIZE,
    )  # fmt: skip
    return exporter.save(module, tmp_path_factory.mktemp("classifier") / "export")


@pytest.fixture(scope="module")
def reference(loaded, corpus) -> dict[str, np.ndarray]:
    """``tf.saved_model.load(export)(decoded_and_resized)`` for every good image."""
    _, good, _ = corpus
    outputs = loaded(reference_images(good), training=False)
    outputs = np.asarray(outputs)
    assert np.abs(outputs).mean() > 1e-2  # Calibrated: a parity check that can fail.
    return dict(zip(good, outputs, strict=True))


def _beam_home(tmp_path: Path) -> dict:
    return {**OFFLINE, "HOME": str(tmp_path / "home")}


@pytest.fixture(scope="module")
def cli_run(feature_vector, corpus, tmp_path_factory):
    """One CLI run over the corpus directory, offline, default runner and format."""
    root, _, _ = corpus
    work = tmp_path_factory.mktemp("cli")
    out = work / "out" / "corpus"
    done = run_cli(
        "embed", f"--model={feature_vector}", f"--images={root}", f"--out={out}",
        f"--image_size={SIZE}", "--batch_size=16",
        env=_beam_home(work), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done, out, work


def _parquet_records(out: Path) -> list[dict]:
    files = sorted(out.parent.glob(f"{out.name}-[0-9]*-of-*.parquet"))
    assert files
    return [row for file in files for row in pa_parquet.read_table(file).to_pylist()]


def _error_records(out: Path) -> list[dict]:
    files = sorted(out.parent.glob(f"{out.name}-errors-*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_cli_records_match_the_export_per_image(cli_run, corpus, reference, feature_vector):
    _, good, _ = corpus
    records = _parquet_records(cli_run[1])
    paths = [r["path"] for r in records]
    assert sorted(paths) == good  # Every good image exactly once, by its absolute path.
    fingerprint = tf.saved_model.experimental.read_fingerprint(str(feature_vector))
    for record in records:
        assert set(record) == {"path", "embedding", "model"}
        assert record["model"] == fingerprint.singleprint()
        np.testing.assert_allclose(record["embedding"], reference[record["path"]], atol=1e-5)


def test_cli_lists_broken_files_counts_them_and_exits_0(cli_run, corpus):
    done, out, _ = cli_run
    _, good, broken = corpus
    errors = _error_records(out)
    assert sorted(e["path"] for e in errors) == broken
    reasons = {Path(e["path"]).name: e["error"] for e in errors}
    assert "Unknown image file format" in reasons["notes.txt"]
    assert "Invalid JPEG data" in reasons["truncated.jpg"]
    assert "Input is empty" in reasons["empty.png"]
    for name, reason in HOSTILE.items():  # Refused unread, each with its reason.
        assert reasons[name].endswith(reason), reasons[name]
    assert not list(out.parent.glob("beam-temp-*"))  # The sinks' folders, gone once written.
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"embedded {len(good)} images, {len(broken)} failed (listed in ")
    assert "in 8 batches" in summary and "images/s; records: " in summary
    for path in broken:
        assert f"not an image, skipped: {path}" in done.stderr


def test_readme_reads_the_output_with_pandas(cli_run, corpus):
    pytest.importorskip("pandas")
    section = (REPO / "README.md").read_text().split("## Batch embedding at scale", 1)[1]
    snippet = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)[1]
    assert "pd.read_parquet" in snippet and "errors" in snippet
    out = cli_run[1]
    scope: dict = {}
    exec(snippet.replace("embeddings/photos", str(out)), scope)
    _, good, broken = corpus
    assert sorted(scope["vectors"]["path"]) == good
    assert len(scope["vectors"]["embedding"].iloc[0]) == 1280
    assert sorted(scope["not_images"]["path"]) == broken


def test_default_runner_downloads_nothing(cli_run):
    done, _, work = cli_run
    assert "Prism" not in done.stderr
    assert not (work / "home" / ".apache_beam").exists()  # Prism's binary cache.


@pytest.mark.slow  # A second pipeline run, with two worker processes (each imports TF).
def test_two_worker_processes_give_the_same_records(cli_run, feature_vector, corpus, tmp_path):
    root, _, _ = corpus
    out = tmp_path / "mp"
    done = run_cli(
        "embed", f"--model={feature_vector}", f"--images={root}", f"--out={out}",
        f"--image_size={SIZE}", "--batch_size=16", "--format=jsonl",
        "--direct_num_workers=2", "--direct_running_mode=multi_processing",
        env=_beam_home(tmp_path), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = sorted(tmp_path.glob("mp-[0-9]*-of-*.jsonl"))
    records = {}
    for file in files:
        for line in file.read_text().splitlines():
            record = json.loads(line)
            assert record["path"] not in records
            records[record["path"]] = record
    single = {r["path"]: r for r in _parquet_records(cli_run[1])}
    assert records.keys() == single.keys()
    for path, record in records.items():
        np.testing.assert_allclose(record["embedding"], single[path]["embedding"], atol=1e-5)
    assert sorted(e["path"] for e in _error_records(out)) == corpus[2]


@pytest.fixture(scope="module")
def classifier_run(classifier, corpus, tmp_path_factory):
    """The Python entry point in a pipeline of our own: a classifier, tfrecord, top-3."""
    root, good, _ = corpus
    out = tmp_path_factory.mktemp("classifier") / "labels"
    transform = embed.pipeline(
        str(classifier), str(root / "a" / "*.*"), str(out), batch_size=4, image_size=SIZE,
        format="tfrecord", top_k=3,
    )  # fmt: skip
    lines = _ListHandler()
    logger = logging.getLogger("exporter")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    interval, embed._PROGRESS_SECONDS = embed._PROGRESS_SECONDS, 0.0  # Log every image.
    try:
        with beam.Pipeline(runner="FnApiRunner") as p:
            result = p | transform
            assert set(result) == {"records", "errors"}
    finally:
        embed._PROGRESS_SECONDS = interval
        logger.setLevel(level)
        logger.removeHandler(lines)
    expected = [path for path in good if Path(path).parent == root / "a"]
    return p.result, out, expected, lines.messages


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _parse_examples(out: Path, output: str) -> dict[str, dict]:
    spec = {
        "path": tf.io.FixedLenFeature([], tf.string),
        output: tf.io.VarLenFeature(tf.float32),
        "model": tf.io.FixedLenFeature([], tf.string),
        "top_k_labels": tf.io.VarLenFeature(tf.string),
        "top_k_scores": tf.io.VarLenFeature(tf.float32),
    }
    files = [str(f) for f in sorted(out.parent.glob(f"{out.name}-[0-9]*-of-*.tfrecord"))]
    parsed = {}
    for serialized in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(serialized, spec)
        dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
                 for k, v in example.items()}  # fmt: skip
        parsed[dense["path"].numpy().decode()] = dense
    return parsed


def test_classifier_gives_top_k_labels_in_tfrecord(classifier_run, classifier):
    _, out, expected, _ = classifier_run
    records = _parse_examples(out, "logits")
    assert sorted(records) == expected
    logits = np.asarray(tf.saved_model.load(str(classifier))(reference_images(expected)))
    assert np.abs(logits).mean() > 1e-2
    for path, row in zip(expected, logits, strict=True):
        record = records[path]
        np.testing.assert_allclose(record["logits"].numpy(), row, atol=1e-5)
        probabilities = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        best = np.argsort(-probabilities)[:3]
        assert [b.decode() for b in record["top_k_labels"].numpy()] == [LABELS[i] for i in best]
        np.testing.assert_allclose(record["top_k_scores"].numpy(), probabilities[best], atol=1e-5)


def test_model_loads_once_per_worker_and_counters_add_up(classifier_run):
    result, _, expected, messages = classifier_run
    metrics = result.metrics().query(MetricsFilter())
    loads = [d for d in metrics["distributions"]
             if d.key.metric.name.endswith("load_model_latency_milli_secs")]  # fmt: skip
    assert sum(d.result.count for d in loads) == 1
    counters = {c.key.metric.name: c.result for c in metrics["counters"]
                if c.key.metric.namespace == embed.METRICS_NAMESPACE}  # fmt: skip
    assert counters["images_read"] == counters["images_embedded"] == len(expected)
    assert counters["batches"] >= len(expected) // 4 > 1
    assert counters.get("images_failed", 0) == 1  # a/truncated.jpg
    # Progress while it runs (every 10 s by default; here after every image).
    count = len(expected)
    assert any(f"read {count} images, 1 failed on this worker so far" in m
               for m in messages), messages[-5:]  # fmt: skip
    assert any(f"embedded {count} images on this worker so far" in m for m in messages)


# -- the handler on its own ----------------------------------------------------------------


def test_handler_calls_the_export_and_keeps_keys(feature_vector, loaded):
    handler = SavedModelHandler(
        str(feature_vector), min_batch_size=2, max_batch_size=8, max_batch_duration_secs=5
    )
    assert handler.batch_elements_kwargs() == {
        "min_batch_size": 2, "max_batch_size": 8, "max_batch_duration_secs": 5,
    }  # fmt: skip
    keyed = KeyedModelHandler(handler)
    model = keyed.load_model()
    images = np.random.default_rng(3).random((3, SIZE, SIZE, 3), dtype=np.float32)
    results = list(keyed.run_inference([(f"k{i}", x) for i, x in enumerate(images)], model))
    expected = np.asarray(loaded(images, training=False))
    assert [key for key, _ in results] == ["k0", "k1", "k2"]
    assert all(isinstance(r, PredictionResult) for _, r in results)
    np.testing.assert_allclose(np.stack([r.inference for _, r in results]), expected, atol=1e-5)


def test_unsafe_model_is_refused_before_it_loads(tmp_path, corpus):
    target = tmp_path / "written-by-model.txt"
    path = tmp_path / "model"
    tf.saved_model.save(_Writer(str(target)), str(path))
    with pytest.raises(UnsafeModelError, match="WriteFile"):
        SavedModelHandler(str(path)).load_model()
    with pytest.raises(embed.EmbedError, match=r"^model=.*: Refusing to load .*WriteFile"):
        embed.pipeline(str(path), str(corpus[0]))
    model = SavedModelHandler(str(path), allow_unsafe_ops=True).load_model()
    model(tf.zeros([1, 8, 8, 3]))
    assert target.read_text() == "pwned"  # The scan is what stood between us and the write.


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "GIF", "BMP", "WEBP"])
def test_decode_image_gives_rgb_in_0_1(mode):
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    if mode == "GIF":
        first, second = image.convert("P"), image.rotate(90).convert("P")
        data = _encode(first, "GIF", save_all=True, append_images=[second])
        expected = first.convert("RGB")
    elif mode in ("BMP", "WEBP"):
        data, expected = (
            _encode(image, mode, **({"lossless": True} if mode == "WEBP" else {})),
            image,
        )
    else:
        converted = image.convert(mode)
        data, expected = _encode(converted, "PNG"), converted.convert("RGB")
    decoded = embed.decode_image(data, 20)  # Same size: bilinear resizing is the identity.
    assert decoded.dtype == np.float32 and decoded.shape == (20, 20, 3)
    np.testing.assert_allclose(decoded, np.asarray(expected) / 255.0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "WEBP lossless"])
def test_the_header_gives_the_size_the_decoder_sees(fmt):
    image = Image.fromarray(np.zeros((20, 37, 3), np.uint8))
    kind, _, lossless = fmt.partition(" ")
    data = _encode(image, kind, **({"lossless": True} if lossless else {}))
    assert image_files.dimensions(data)[1:] == (37, 20)
    assert embed.decode_image(data, 8, max_pixels=20 * 37).shape == (8, 8, 3)
    with pytest.raises(image_files.ImageFileError, match="Expected at most max_pixels=739 "):
        embed.decode_image(data, 8, max_pixels=20 * 37 - 1)
    if kind == "JPEG":  # Cut short: libjpeg's reason, or None where decoding will say.
        with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid JPEG data"):
            image_files.dimensions(data[:5])
    else:
        assert image_files.dimensions(data[:5]) is None


def test_a_failed_pipeline_leaves_no_temporary_folders(tmp_path):
    """A model without ``training`` fails every batch: the sinks' folders must go too."""
    model = _save(_Reducer(), tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.zeros((8, 8, 3), np.uint8)
    (images / "a.png").write_bytes(tf.io.encode_png(pixels).numpy())
    out = tmp_path / "out"
    out.mkdir()
    (out / "beam-temp-records-0123456789abcdef0123456789abcdef").mkdir()  # Not this run's.
    with pytest.raises(Exception, match="training"):  # noqa: PT011 - whatever Beam raises.
        embed.run(str(model), str(images), str(out / "records"), image_size=8, format="jsonl")
    assert os.listdir(out) == ["beam-temp-records-0123456789abcdef0123456789abcdef"]


# -- bad input -------------------------------------------------------------------------------


def test_library_refuses_bad_arguments(feature_vector, classifier, corpus, tmp_path):
    root = str(corpus[0])
    fv, cls = str(feature_vector), str(classifier)
    cases = {  # The library names its arguments (issue 25); the CLI's flags are below.
        'format="csv": expected one of parquet, tfrecord, jsonl':
            lambda: embed.pipeline(fv, root, format="csv"),
        "batch_size=0: expected at least 1": lambda: embed.pipeline(fv, root, batch_size=0),
        "image_size=16: the model needs at least 32x32 images":
            lambda: embed.pipeline(fv, root, image_size=16),
        "image_size=-3: expected a positive number of pixels":
            lambda: embed.pipeline(fv, root, image_size=-3),
        "top_k=3 needs a classifier": lambda: embed.pipeline(fv, root, top_k=3),
        "top_k=6, but the model has 5 classes": lambda: embed.pipeline(cls, root, top_k=6),
        "top_k=0: expected at least 1": lambda: embed.pipeline(cls, root, top_k=0),
        "max_pixels=0: expected at least 1": lambda: embed.pipeline(fv, root, max_pixels=0),
        f"model={tmp_path / 'nothing'}: No such path":
            lambda: embed.pipeline(str(tmp_path / "nothing"), root),
        f"model={root}: Not a SavedModel": lambda: embed.pipeline(root, root),
        f"images={tmp_path / '*.jpg'}: no files match":
            lambda: embed.run(fv, str(tmp_path / "*.jpg"), "o"),
        f"out={corpus[1][0]}/sub/out: cannot write into":
            lambda: embed.run(fv, root, f"{corpus[1][0]}/sub/out"),
    }  # fmt: skip
    for message, call in cases.items():
        with pytest.raises(embed.EmbedError) as error:
            call()
        assert message in str(error.value)
        assert "--" not in str(error.value).split(":")[0], str(error.value)


def test_pipeline_default_size_is_the_native_size(feature_vector, corpus):
    assert embed.pipeline(str(feature_vector), str(corpus[0])).image_size == 224


@pytest.mark.slow  # 10 s or more in a full run (docs/development.md).
def test_cli_bad_flags_fail_with_one_line(feature_vector, corpus, tmp_path):
    root, good, _ = corpus
    model, images, out = f"--model={feature_vector}", f"--images={root}", f"--out={tmp_path}/o"
    cases = {
        "bad model": ([f"--model={root}", images, out], 2,
                      f"error: --model={root}: Not a SavedModel"),
        "empty glob": ([model, f"--images={tmp_path}/*.png", out], 2,
                       f"error: --images={tmp_path}/*.png: no files match"),
        "unwritable out": ([model, images, f"--out={good[0]}/out"], 2,
                           f"error: --out={good[0]}/out: cannot write into"),
        "bad format": ([model, images, out, "--format=csv"], 2, "error: flag --format=csv"),
        "bad max_pixels": ([model, images, out, "--max_pixels=0"], 2,
                           "error: --max_pixels=0: expected at least 1."),
        "missing flags": ([images], 2, "error: --model and --out required; see --help."),
        "unknown flag": ([model, images, out, "--direct_num_worker=2"], 2,
                         "error: unknown flags ['--direct_num_worker']"),
    }  # fmt: skip
    # One process runs every case through absl's app.run as `python -m` does: a process per
    # case would pay TensorFlow's and Beam's imports six times.
    driver = (
        "import contextlib, io, json, sys\n"
        "from absl import app, flags\n"
        "from exporter import embed\n"
        "from exporter.use import embed as library\n"
        "assert embed.pipeline is library.pipeline  # The Python entry point.\n"
        "results = {}\n"
        "for name, argv in json.loads(sys.argv[1]).items():\n"
        "    flags.FLAGS.unparse_flags()\n"
        "    sys.argv, stderr = ['exporter.embed', *argv], io.StringIO()\n"
        "    with contextlib.redirect_stderr(stderr):\n"
        "        try:\n"
        "            app.run(embed.main, flags_parser=embed._parse)\n"
        "        except SystemExit as exit:\n"
        "            results[name] = [exit.code, stderr.getvalue()]\n"
        "print(json.dumps(results))\n"
    )
    argvs = json.dumps({name: flags for name, (flags, _, _) in cases.items()})
    done = subprocess.run(
        [sys.executable, "-c", driver, argvs], cwd=REPO, capture_output=True, text=True,
        timeout=180, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                          "HOME": str(tmp_path), **OFFLINE},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, code, message) in cases.items():
        returncode, stderr = results[name]
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert returncode == code, (name, stderr)
        assert len(lines) == 1 and lines[0].startswith(message), (name, stderr)
        assert "Traceback" not in stderr, name
    assert not list(tmp_path.glob("o-*"))


def test_core_never_imports_beam_and_the_cli_names_the_extra_without_it():
    script = (
        "import sys, runpy\n"
        "import exporter, exporter.making.build, exporter.checking.conformance, exporter.use\n"
        "assert 'apache_beam' not in sys.modules, 'the core imported Beam'\n"
        "sys.modules['apache_beam'] = None  # As if it were not installed.\n"
        "sys.argv = ['exporter.embed', '--model=m', '--images=i', '--out=o', '--batch_size=2']\n"
        "runpy.run_module('exporter.embed', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert "the core imported Beam" not in done.stderr
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: Batch embedding needs Apache Beam: pip install 'tfhub-exporter[beam]'"
    )


def test_double_star_matches_zero_or_more_folders_as_a_shell_does(tmp_path):
    """``photos/**/*.jpg`` takes the JPEGs directly in ``photos/`` too (issue 35)."""
    import glob

    from apache_beam.io.filesystems import FileSystems

    for name in ("a.jpg", "x/b.jpg", "x/y/c.jpg", "x/d.png"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(b"")
    for pattern in ("photos/**/*.jpg", "photos/**/y/*.jpg", "photos/**/**/*.jpg"):
        full = str(tmp_path / pattern)
        found = [m.path for r in FileSystems.match(embed.image_patterns(full)) for m in
                 r.metadata_list]  # fmt: skip
        assert sorted(set(found)) == sorted(set(glob.glob(full, recursive=True))), pattern
    assert str(tmp_path / "photos" / "a.jpg") in found
    assert embed.image_patterns("/p/**/*.jpg") == ["/p/**/*.jpg", "/p/*.jpg"]
