"""Convert an export to LiteRT or ONNX, verified in the target's own runtime.

Always from ``serving_default`` (``__call__`` cannot convert: its hparam
``PlaceholderWithDefault``; ``serving_bytes`` neither: ``DecodeImage`` is no LiteRT or ONNX
op). The converted model is written to a hidden temporary sibling of ``out``, run in
``ai_edge_litert`` or ``onnxruntime`` on random images at two sizes and batch sizes 1 and 3,
compared with the SavedModel's ``__call__``, and only then renamed into place, with a
sidecar ``out + '.json'`` that carries what the converted model no longer checks.

Tolerance per mode, relative to the largest absolute value of the SavedModel's output:
float32 (``quantize='none'``) agrees within ``3e-4``; ``float16`` and ``dynamic_int8``
report their error and cosine similarity and fail only past ``BOUNDS``. ``int8`` (full
integer) is calibrated on the user's images and verified on held-out ones instead; see
``exporter.use.quantize``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from exporter import choices, siblings, spec
from exporter.checking import savedmodel
from exporter.console import native_logs_filtered
from exporter.errors import ExportError, UnsafeOpsError, first_line
from exporter.progress import stage
from exporter.use import quantize as int8

RUNTIMES = choices.RUNTIMES
QUANTIZATIONS = choices.QUANTIZATIONS
ONNX_OPSET = 17
INSTALL = "pip install 'tfhub-exporter[convert]'"
OPT_IN = "If you trust it, pass allow_unsafe_ops=True."
SIDECAR_FORMAT = "exporter-conversion/1"
_BATCHES = (1, 3)


@dataclasses.dataclass(frozen=True)
class Bound:
    """How far a converted model may be from the SavedModel before conversion fails."""

    max_relative: float  # Largest absolute difference over the reference output's scale.
    min_cosine: float  # Least cosine similarity of an output row to the reference row.


# float32 is exact up to reassociation; float16 weights and dynamic-range int8 change the
# numbers by design: their bounds catch a broken conversion, not the quantization itself.
# What each mode gives, and why float32's bound is 3e-4: BUILD_NOTES.md, "Deploying".
BOUNDS = {
    "none": Bound(max_relative=3e-4, min_cosine=0.99999),
    "float16": Bound(max_relative=0.1, min_cosine=0.999),
    "dynamic_int8": Bound(max_relative=1.0, min_cosine=0.9),
}
INPUT_CHECKS_WARNING = (
    "The converted model does not check its input: {runtime} drops the SavedModel's in-graph "
    "checks, so they are now the caller's. Pass float32 NHWC RGB images in [0, 1] with "
    "{requirement} pixels; see {sidecar}."
)


@dataclasses.dataclass(frozen=True)
class Check:
    """One verification call: the converted model against the SavedModel."""

    height: int
    width: int
    batch: int
    max_relative: float
    min_cosine: float


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A verified conversion: where it went and how close it came."""

    path: Path
    sidecar: Path
    to: str
    quantize: str
    size_bytes: int
    bound: Bound
    checks: tuple[Check, ...]
    warning: str
    int8: dict | None = None  # quantize="int8": FILE.json's int8 facts, figures and report.

    def summary(self) -> str:
        """Lines for a person: the file, then each check's error and cosine similarity."""
        lines = [
            f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, {self.to}, "
            f"quantize={self.quantize}) and {self.sidecar.name}",
        ]
        if self.int8 is not None:
            return "\n".join(lines + self.int8["lines"])
        lines += [
            f"parity with the SavedModel's __call__ (bound: max difference <= "
            f"{self.bound.max_relative:g} of the output scale, cosine >= {self.bound.min_cosine}):",
        ]
        lines += [
            f"  {c.height}x{c.width} batch {c.batch}: max difference {c.max_relative:.2e} of "
            f"the scale, cosine {c.min_cosine:.6f}"
            for c in self.checks
        ]
        return "\n".join(lines)


def parse_size(size: int | str | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """Return ``(height, width)`` from ``H``, ``'H,W'`` or a pair; None stays None (dynamic)."""
    if size is None or size == "":
        return None
    try:
        if isinstance(size, str):
            size = [int(part) for part in size.split(",")]
        elif isinstance(size, int):
            size = [size]
        values = [int(v) for v in size]
    except (TypeError, ValueError):
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise ExportError(f"Expected size as H or H,W (positive ints). Received: {size!r}.")
    return values[0], values[1]


# Long: its docstring documents the public API; the body is 35 lines of stages in order.
@native_logs_filtered  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" (exporter.console).
def convert(
    export: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str,
    quantize: str = "none",
    size: int | str | tuple[int, int] | None = None,
    overwrite: bool = False,
    allow_unsafe_ops: bool = False,
    calibration: str | os.PathLike | None = None,
    calibration_steps: int = int8.DEFAULT_CALIBRATION_STEPS,
    validation: str | os.PathLike | None = None,
    io: str = "float32",
    min_agreement: float = int8.DEFAULT_MIN_AGREEMENT,
    min_cosine: float = int8.DEFAULT_MIN_COSINE,
    require_full_integer: bool = False,
) -> Conversion:
    """Convert the SavedModel ``export`` to ``to`` at ``out``, verified, or write nothing.

    Args:
        export: A SavedModel directory with a ``serving_default`` signature that takes float32
            images [batch, height, width, 3]; ours, or anyone's.
        out: The file to write (``.tflite`` or ``.onnx``); ``out + '.json'`` is the sidecar.
        to: ``litert`` or ``onnx``.
        quantize: ``none``, ``float16`` (weights), ``dynamic_int8`` (dynamic-range) or
            ``int8`` (full integer, calibrated on ``calibration``); LiteRT only.
        size: A fixed input size, ``H`` or ``(H, W)``, which mobile runtimes prefer; default
            dynamic height and width. The batch size stays free.
        overwrite: Replace existing files at ``out`` and its sidecar.
        allow_unsafe_ops: Load and run the SavedModel even if its graph holds ops that touch
            files, processes, the network or Python. By default such a model is refused
            before anything of it is loaded or written.
        calibration: ``int8``: a directory (every file under it) or glob of real image
            files, decoded and resized as ``embed`` does; required.
        calibration_steps: ``int8``: how many calibration images the converter sees.
        validation: ``int8``: a directory or glob of held-out images to verify on; default
            a share of the calibration files, which then never calibrate.
        io: ``int8``: ``float32``, ``uint8`` or ``int8`` input and output; the input's scale
            and zero point go to the sidecar, with an example of feeding pixels.
        min_agreement: ``int8`` classifiers: the least top-1 agreement with the SavedModel
            on the validation images.
        min_cosine: ``int8`` feature vectors: the least mean cosine similarity.
        require_full_integer: ``int8``: refuse if any op stayed float.

    Returns:
        The conversion, with the verification figures (``summary()`` prints them).

    Raises:
        ExportError: On bad arguments, a missing extra, an unreadable SavedModel, a failed
            conversion, or a converted model past its tolerance; nothing is written then.
        UnsafeOpsError: If the SavedModel holds unsafe ops and they are not allowed; it was
            not loaded, and nothing is written.

    Example:
        >>> convert("exports/mobilenet_v2", "mobilenet_v2.tflite", to="litert").summary()
    """
    if to not in RUNTIMES:
        raise ExportError(f"Unknown runtime {to!r}; known: {', '.join(RUNTIMES)}.")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"Unknown quantize {quantize!r}; known: {', '.join(QUANTIZATIONS)}.")
    if to == "onnx" and quantize != "none":
        raise ExportError(f"Expected quantize=none for ONNX. Received: quantize={quantize!r}.")
    settings = int8.Settings(
        calibration, calibration_steps, validation, io, min_agreement, min_cosine,
        require_full_integer,
    )  # fmt: skip
    settings.check(quantize)
    fixed = parse_size(size)
    out = Path(os.path.abspath(os.path.expanduser(out)))
    export = Path(os.path.abspath(os.path.expanduser(export)))
    sidecar = out.with_name(out.name + ".json")
    report = out.with_name(out.name + ".report.md")  # int8's short report.
    _check_out(out, sidecar, export, overwrite, *([report] if quantize == "int8" else []))
    runtime = _Runtime.for_target(to)
    source = _Source(export, fixed, allow_unsafe_ops)
    quantized = int8.Job(source, settings) if quantize == "int8" else None
    with stage(f"convert {source.path.name} to {to} (quantize={quantize})"):
        content = runtime.convert(source, quantize, quantized)
    if quantized is not None:
        quantized.check_ops(content)
    temporaries, created, finals = [], [], [out, sidecar]
    try:
        created = siblings.make_parents(out.parent)
        model_tmp = siblings.file(out, content)
        temporaries.append(model_tmp)
        with stage(f"verify in {runtime.name}"):
            if quantized is None:
                checks = _verify(runtime, model_tmp, source, BOUNDS[quantize])
            else:
                checks = quantized.verify(model_tmp)
        warning = INPUT_CHECKS_WARNING.format(
            runtime=runtime.name, requirement=source.requirement, sidecar=sidecar.name
        )
        if quantized is not None:
            warning = quantized.warning(warning)
        facts = _sidecar(source, runtime, quantize, checks, warning)
        if quantized is not None:
            facts = quantized.sidecar(facts, out)
            finals.append(report)
        temporaries.append(siblings.file(sidecar, (json.dumps(facts, indent=2) + "\n").encode()))
        if quantized is not None:
            temporaries.append(siblings.file(report, quantized.report(out, facts).encode()))
        for temporary, final in zip(temporaries, finals, strict=True):
            os.replace(temporary, final)
        created = []  # Written: the folders made for it stay.
    finally:
        for path in temporaries:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for directory in created:  # Deepest first.
            with contextlib.suppress(OSError):
                directory.rmdir()
    return Conversion(
        out, sidecar, to, quantize, len(content), BOUNDS.get(quantize), tuple(checks), warning,
        None if quantized is None else quantized.summary(facts),
    )  # fmt: skip


def _check_out(out: Path, sidecar: Path, export: Path, overwrite: bool, *others: Path) -> None:
    """Refuse an ``out`` that is a directory, exists (without ``overwrite``), lies under a
    file, or lies inside a SavedModel: the source's files, or any other's, are never replaced."""
    for path in (out, sidecar, *others):
        if path.is_dir():
            raise ExportError(f"Expected out to be a file path. Received a directory: out={path}.")
        if path.exists() and not overwrite:
            raise ExportError(f"{path} exists; pass overwrite=True to replace it.")
    saved_model = _saved_model_around(out, export)
    if saved_model is not None:
        raise ExportError(
            f"Expected out outside any SavedModel directory. Received: out={out}, inside the "
            f"SavedModel {saved_model}. Nothing was written; choose a path outside it."
        )
    ancestor = next(parent for parent in out.parents if parent.exists())
    if not ancestor.is_dir():
        raise ExportError(f"Expected out={out} inside a directory, but {ancestor} is a file.")


def _saved_model_around(out: Path, export: Path) -> Path | None:
    """The SavedModel directory ``out`` lies in (``export``, or any folder above ``out`` that
    holds a saved_model.pb), links followed or not; None if there is none."""
    source = export.resolve()
    for path in (out, out.resolve()):  # The link itself, and what it points to.
        for parent in path.parents:
            if parent.resolve() == source or (parent / spec.SAVED_MODEL_FILE).exists():
                return parent
    return None


class _Source:
    """The export: its serving_default, its reference __call__ and its documented facts."""

    def __init__(self, path: Path, fixed: tuple[int, int] | None, allow_unsafe_ops: bool):
        self.path = path
        try:  # Scanned before anything of it is loaded, let alone run.
            self.loaded = savedmodel.load(path, allow_unsafe_ops=allow_unsafe_ops, opt_in=OPT_IN)
        except UnsafeOpsError as error:
            raise UnsafeOpsError(f"{error} Nothing was written.", error.ops) from None
        except savedmodel.UnreadableError as error:
            raise ExportError(str(error)) from None
        self.signature = self.loaded.signatures.get("serving_default")
        if self.signature is None:
            raise ExportError(f"{path} has no serving_default signature to convert.")
        arguments = self.signature.structured_input_signature[1]
        if len(arguments) != 1 or next(iter(arguments.values())).dtype != tf.float32:
            raise ExportError(
                f"Expected serving_default to take one float32 images input. "
                f"Received: {sorted(arguments)}."
            )
        self.input_name = next(iter(arguments))
        self.metadata = savedmodel.metadata(path)[0] or {}
        facts = self.metadata.get("input") or {}
        self.min_size = facts.get("min_size") if isinstance(facts.get("min_size"), int) else 1
        native = facts.get("native_size")
        fixed_size = native if facts.get("fixed_size") and isinstance(native, int) else None
        if fixed is not None:
            _check_fixed(fixed, self.min_size, fixed_size)
        elif fixed_size is not None:
            fixed = (fixed_size, fixed_size)
        self.fixed = fixed
        if fixed is not None:
            self.sizes = (fixed,)
            self.requirement = f"height {fixed[0]} and width {fixed[1]}"
        elif isinstance(native, int) and self.min_size > 1:
            self.sizes = tuple((s, s) for s in spec.probe_sizes(self.min_size, native, False))
            self.requirement = spec.size_requirement(self.min_size, None)
        else:
            self.sizes = tuple((s, s) for s in spec.DEFAULT_SIZES)
            self.requirement = "the height and width the model's documentation states"

    def function(self) -> tf.types.experimental.PolymorphicFunction:
        """serving_default, with the fixed size where one is asked for."""
        height, width = self.fixed or (None, None)
        shape = [None, height, width, spec.CHANNELS]
        signature, name = self.signature, self.input_name

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name)])
        def serve(images):
            return signature(**{name: images})

        return serve

    def reference(self, images: np.ndarray) -> np.ndarray:
        """The SavedModel's own answer: __call__ in inference, else serving_default."""
        images = tf.constant(images)
        if callable(self.loaded):
            with contextlib.suppress(TypeError, ValueError):
                return np.asarray(self.loaded(images, training=False))
        return np.asarray(next(iter(self.signature(**{self.input_name: images}).values())))


def _check_fixed(fixed, min_size: int, fixed_size: int | None) -> None:
    if fixed_size is not None and fixed != (fixed_size, fixed_size):
        raise ExportError(
            f"Expected size {fixed_size} (the export is fixed-size). Received: {fixed}."
        )
    if min(fixed) < min_size:
        raise ExportError(
            f"Expected a size of at least {min_size} (the export's min_size). Received: {fixed}."
        )


def _verify(runtime, model: Path, source: _Source, bound: Bound) -> list[Check]:
    try:
        run = runtime.load(model, source.input_name)
    except Exception as error:
        raise _cannot_run(runtime, model, "load the converted model", error) from error
    checks, problems = [], []
    rng = np.random.default_rng(0)
    for height, width in source.sizes:
        for batch in _BATCHES:
            images = rng.random((batch, height, width, spec.CHANNELS), dtype=np.float32)
            expected = source.reference(images)
            try:
                actual = np.asarray(run(images))
            except Exception as error:
                what = f"run the converted model on {height}x{width} batch {batch}"
                raise _cannot_run(runtime, model, what, error) from error
            if actual.shape != expected.shape:
                problems.append(
                    f"{height}x{width} batch {batch}: shape {actual.shape}, expected "
                    f"{expected.shape}"
                )
                continue
            check = Check(height, width, batch, *_difference(actual, expected))
            checks.append(check)
            if check.max_relative > bound.max_relative or check.min_cosine < bound.min_cosine:
                problems.append(
                    f"{height}x{width} batch {batch}: max difference {check.max_relative:.2e} "
                    f"of the scale, cosine {check.min_cosine:.6f}"
                )
    if problems:
        raise ExportError(
            f"The {runtime.name} model failed verification against the SavedModel (bound: "
            f"max difference <= {bound.max_relative:g}, cosine >= {bound.min_cosine}): "
            f"{'; '.join(problems)}. Nothing was written."
        )
    return checks


def _cannot_run(runtime, model: Path, what: str, error: Exception) -> ExportError:
    """A converted model its own runtime refuses: one line, without the temporary's path."""
    text = str(error).strip().replace(str(model), "the model")
    line = text.splitlines()[0][:600] if text else type(error).__name__  # ORT: cause at the end.
    return ExportError(f"{runtime.name} could not {what}: {line.rstrip('.')}. Nothing was written.")


def _difference(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    norms = np.linalg.norm(actual, axis=-1) * np.linalg.norm(expected, axis=-1)
    cosine = np.sum(actual * expected, axis=-1) / np.maximum(norms, 1e-30)
    return float(np.max(np.abs(actual - expected)) / scale), float(np.min(cosine))


def _sidecar(source: _Source, runtime, quantize: str, checks, warning: str) -> dict:
    facts = source.metadata
    labels = savedmodel.labels(source.path)
    labels = list(labels) if labels is not None else None
    height, width = source.fixed or (None, None)
    return {
        "format": SIDECAR_FORMAT,
        "runtime": runtime.name,
        "runtime_versions": runtime.versions(),
        "quantize": quantize,
        "source": {"path": str(source.path), "fingerprint": _identity(source.path)},
        "task": facts.get("task"),
        "input": {
            "name": source.input_name,
            "dtype": "float32",
            "shape": [None, height, width, spec.CHANNELS],
            "layout": "NHWC",
            "color": "RGB",
            "range": [0.0, 1.0],
            "admissible": source.requirement,
            "checked_by_the_model": False,
        },
        "input_checks": warning,
        "preprocessing": facts.get("preprocessing"),
        "output": facts.get("output"),
        "classes": facts.get("classes"),
        "labels": labels,
        "verification": {
            "reference": "the SavedModel's __call__(images, training=False)",
            "bound": dataclasses.asdict(BOUNDS[quantize]) if quantize in BOUNDS else None,
            "checks": [dataclasses.asdict(check) for check in checks],
        },
    }


def _identity(path: Path) -> dict:
    """The source's identity (``savedmodel.identity``), without the facts it does not have."""
    return {k: v for k, v in savedmodel.identity(path).items() if v is not None}


def _require(module: str, runtime: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ExportError(
            f"Converting to {runtime} needs {module.split('.')[0]}: {INSTALL}"
        ) from None


class _Runtime:
    """A target runtime: how to convert for it, load a converted file, and run it."""

    name = ""

    @staticmethod
    def for_target(to: str) -> _Runtime:
        return _LiteRT() if to == "litert" else _ONNX()


class _LiteRT(_Runtime):
    name = "ai_edge_litert"

    def __init__(self):
        self.interpreter = _require("ai_edge_litert.interpreter", "litert").Interpreter

    def convert(self, source: _Source, quantize: str, quantized: int8.Job | None = None) -> bytes:
        # From the object already loaded (and scanned), never from the directory again:
        # from_saved_model would read the files a second time, unscanned.
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [source.function().get_concrete_function()], source.loaded
        )
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantized is not None:
            quantized.configure(converter)
        try:
            content = converter.convert()
        except Exception as error:
            if quantized is not None:  # First: no calibration image decoded, in one line.
                quantized.converted()
            raise ExportError(f"LiteRT conversion failed: {_first_line(error)}") from error
        if quantized is not None:
            quantized.converted()
        return content

    def load(self, path: Path, input_name: str):
        interpreter = self.interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner()  # The only one: serving_default.
        return lambda images: next(iter(runner(**{input_name: images}).values()))

    def versions(self) -> dict:
        import ai_edge_litert

        return {"tensorflow": tf.__version__, "ai_edge_litert": _version(ai_edge_litert)}


class _ONNX(_Runtime):
    name = "onnxruntime"

    def __init__(self):
        self.tf2onnx = _require("tf2onnx", "onnx")
        self.onnxruntime = _require("onnxruntime", "onnx")
        self.numpy_helper = _require("onnx.numpy_helper", "onnx")

    def convert(self, source: _Source, quantize: str, quantized=None) -> bytes:
        function = source.function()
        try:
            proto, _ = self.tf2onnx.convert.from_function(
                function, input_signature=function.input_signature, opset=ONNX_OPSET
            )
        except Exception as error:
            raise ExportError(f"ONNX conversion failed: {_first_line(error)}") from error
        self._captured_constants_as_initializers(proto, function.get_concrete_function())
        return proto.SerializeToString()

    def _captured_constants_as_initializers(self, proto, concrete) -> None:
        """Turn the graph inputs tf2onnx made of captured constant tensors into initializers.

        ``from_function`` makes every non-resource input of the concrete function a graph
        input, captures included (its SavedModel path leaves captures out). A restored
        function captures constant tensors, e.g. Keras 3 ``Normalization``'s mean and variance
        in EfficientNet, so the model would demand them from every caller. Each becomes an
        initializer with the captured value, or goes where nothing reads it.
        """
        captured = {
            internal.name: tf.get_static_value(external)
            for external, internal in concrete.graph.captures
            if external.dtype != tf.resource
        }
        read = _names_read(proto.graph)
        inputs = []
        for graph_input in proto.graph.input:
            value = captured.get(graph_input.name)
            if value is None:  # The image input, or anything else left to fail verification.
                inputs.append(graph_input)
            elif graph_input.name in read:
                proto.graph.initializer.append(
                    self.numpy_helper.from_array(np.asarray(value), graph_input.name)
                )
        del proto.graph.input[:]
        proto.graph.input.extend(inputs)

    def load(self, path: Path, input_name: str):
        session = self.onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: images})[0]

    def versions(self) -> dict:
        return {
            "tensorflow": tf.__version__,
            "tf2onnx": _version(self.tf2onnx),
            "onnxruntime": _version(self.onnxruntime),
            "opset": ONNX_OPSET,
        }


def _names_read(graph) -> set[str]:
    """Every value name that ``graph`` outputs or that a node in it or its subgraphs reads."""
    names = {output.name for output in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs)
            if attribute.HasField("g"):
                subgraphs.append(attribute.g)
            for subgraph in subgraphs:
                names |= _names_read(subgraph)
    return names


def _version(module) -> str:
    return str(getattr(module, "__version__", "unknown"))


def _first_line(error: BaseException) -> str:
    return first_line(error)[:300]
