"""Full-integer (int8) LiteRT conversion: calibrated on the user's images, verified on others.

``convert(..., quantize="int8", calibration=...)`` hands its LiteRT converter to
``configure``, which feeds it the calibration images (decoded and resized exactly as
``embed`` does, ``image_files.decode``) and asks for integer input and output when ``io`` is
``uint8`` or ``int8``. Nothing here invents pixels: random noise calibrates ranges no real
image has, so without image files the conversion is refused.

``verify`` then runs the int8 file in ``ai_edge_litert`` and the SavedModel on held-out
images (``validation``, or a share of the calibration files that calibration never saw) and
measures what a user feels: for classifiers, top-1 and top-5 agreement; for feature vectors,
the mean and least cosine similarity; for both, the largest error relative to the output's
scale. Below ``min_agreement`` (classifiers) or ``min_cosine`` (feature vectors) it refuses.
``ops`` reads the converted file and says which ops stayed float; with
``require_full_integer`` any such op refuses the file. Flex (SELECT_TF_OPS) is never asked
for, and a file that holds a Flex op is refused.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf

from exporter import choices
from exporter.errors import ExportError
from exporter.use import image_files

IO_TYPES = choices.INT8_IO_TYPES
DEFAULT_CALIBRATION_STEPS = choices.DEFAULT_CALIBRATION_STEPS
HELD_OUT_SHARE = choices.HELD_OUT_SHARE
MAX_VALIDATION_IMAGES = 500
DEFAULT_MIN_AGREEMENT = choices.DEFAULT_MIN_AGREEMENT
DEFAULT_MIN_COSINE = choices.DEFAULT_MIN_COSINE
TOP_K = 5
_BATCH = 16
_SEED = 0
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The int8 arguments of ``convert``, checked before anything slow happens."""

    calibration: str | os.PathLike | None = None
    calibration_steps: int = DEFAULT_CALIBRATION_STEPS
    validation: str | os.PathLike | None = None
    io: str = "float32"
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    min_cosine: float = DEFAULT_MIN_COSINE
    require_full_integer: bool = False

    def check(self, quantize: str) -> None:
        """Refuse int8 arguments given to another mode, and bad values, in one line."""
        if quantize != "int8":
            given = [name for name, default in _NOT_INT8.items() if getattr(self, name) != default]
            if given:
                raise ExportError(
                    f'Expected quantize="int8" with {", ".join(given)}. Received: '
                    f'quantize="{quantize}".'
                )
            return
        if self.io not in IO_TYPES:
            raise ExportError(f"Unknown io {self.io!r}; known: {', '.join(IO_TYPES)}.")
        if self.calibration is None or str(self.calibration) == "":
            raise ExportError(
                'quantize="int8" needs calibration images: pass calibration=DIR or GLOB of '
                "real images like those the model will see (random pixels do not calibrate)."
            )
        if not isinstance(self.calibration_steps, int) or self.calibration_steps < 1:
            raise ExportError(
                f"Expected calibration_steps >= 1. Received: {self.calibration_steps!r}."
            )
        for name in ("min_agreement", "min_cosine"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
                raise ExportError(f"Expected {name} in [-1, 1]. Received: {value!r}.")


_NOT_INT8 = {
    "calibration": None,
    "validation": None,
    "io": "float32",
    "calibration_steps": DEFAULT_CALIBRATION_STEPS,
    "min_agreement": DEFAULT_MIN_AGREEMENT,
    "min_cosine": DEFAULT_MIN_COSINE,
    "require_full_integer": False,
}


@dataclasses.dataclass
class Images:
    """Which files calibrate and which verify, decoded at ``size``; never the same file."""

    size: tuple[int, int]
    calibration: tuple[str, ...]  # The files the converter saw, in order.
    validation: tuple[str, ...]
    held_out: bool  # Validation is a share of the calibration files.
    skipped: list[str]  # "path: reason" for files that are not images.
    flat: list[str]  # Calibration images of one colour.
    calibration_source: str
    validation_source: str


def find(pattern: str | os.PathLike, what: str) -> list[str]:
    """The files of ``pattern``: every file under a directory (recursively), or a glob."""
    text = os.path.expanduser(os.fspath(pattern))
    if "://" in text:
        paths = tf.io.gfile.glob(text.rstrip("/") + "/*") if tf.io.gfile.isdir(text) else None
        paths = paths if paths is not None else tf.io.gfile.glob(text)
    elif os.path.isdir(text):
        paths = glob.glob(os.path.join(glob.escape(text), "**"), recursive=True)
    else:
        paths = glob.glob(text, recursive=True)
    paths = sorted(p for p in paths if "://" in p or os.path.isfile(p))
    if not paths:
        raise ExportError(f"Expected image files for {what}. Received {pattern}, which has none.")
    return paths


def select(settings: Settings, size: tuple[int, int]) -> Images:
    """Split the files: a held-out share of the calibration files (or ``validation``'s files)
    verify; of the others, ``calibration_steps`` calibrate. Decoding happens later."""
    calibration = find(settings.calibration, "calibration")
    rng = np.random.default_rng(_SEED)
    if settings.validation is not None:
        validation = find(settings.validation, "validation")
        named = {os.path.realpath(p) for p in validation}
        calibration = [p for p in calibration if os.path.realpath(p) not in named]
        if not calibration:
            raise ExportError(
                "Expected calibration images other than the validation images. Received the "
                "same files for both; validation images must never calibrate."
            )
    else:
        if len(calibration) < 2:
            raise ExportError(
                f"Expected at least 2 calibration images to hold a share out for verification "
                f"(or pass validation=DIR|GLOB). Received {len(calibration)}."
            )
        order = rng.permutation(len(calibration))
        count = min(max(1, round(HELD_OUT_SHARE * len(calibration))), MAX_VALIDATION_IMAGES)
        validation = sorted(calibration[i] for i in order[:count])
        calibration = [calibration[i] for i in sorted(order[count:])]
    used = [calibration[i] for i in rng.permutation(len(calibration))]
    return Images(
        size=size,
        calibration=tuple(used),
        validation=tuple(validation[:MAX_VALIDATION_IMAGES]),
        held_out=settings.validation is None,
        skipped=[],
        flat=[],
        calibration_source=os.fspath(settings.calibration),
        validation_source=(
            f"{HELD_OUT_SHARE:.0%} of the calibration files, held out"
            if settings.validation is None
            else os.fspath(settings.validation)
        ),
    )


def _decoded(paths, size: tuple[int, int], skipped: list[str]):
    """Yield ``(path, image)`` for each file that decodes; note the others in ``skipped``."""
    for path in paths:
        try:
            image = image_files.decode(image_files.read(path), size, image_files.DEFAULT_MAX_PIXELS)
        except (tf.errors.OpError, OSError, ValueError) as error:
            reason = getattr(error, "message", None) or str(error) or type(error).__name__
            skipped.append(f"{path}: {reason.splitlines()[0][:200]}")
            continue
        yield path, image


def configure(converter, images: Images, settings: Settings, steps: list[str]):
    """Make ``converter`` quantize to int8, calibrated on up to ``calibration_steps`` images.

    ``steps`` receives the path of each image the converter is fed, ``images.skipped`` (a
    list while converting) the files that are not images.
    """
    skipped = images.skipped

    def representative():
        decoded = _decoded(images.calibration, images.size, skipped)
        while len(steps) < settings.calibration_steps:  # Checked before the next decode.
            path, image = next(decoded, (None, None))
            if path is None:
                return
            steps.append(path)
            if float(np.ptp(image)) < 1.0 / 255:  # One colour: it calibrates ranges to a point.
                images.flat.append(path)
            yield [image[np.newaxis]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    # Builtins only, never SELECT_TF_OPS (Flex): the file must run on the plain runtime. An op
    # with no int8 kernel stays float (the op report names it; require_full_integer refuses).
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    if settings.io != "float32":
        converter.inference_input_type = tf.as_dtype(settings.io)
        converter.inference_output_type = tf.as_dtype(settings.io)


def refuse_without_steps(steps: list[str], images: Images) -> None:
    if not steps:
        where = f" ({images.skipped[0]})" if images.skipped else ""
        raise ExportError(
            f"Expected calibration images that decode. Received none in "
            f"{images.calibration_source}{where}. Nothing was written."
        )
    if images.held_out and len(images.flat) == len(steps):  # Its held-out share: flat too.
        raise ExportError(
            f"Expected calibration images like those the model will see. Received "
            f"{len(steps)} images of one colour each in {images.calibration_source} (such "
            "as all black): they calibrate every range to a point. Nothing was written."
        )


# -- what stayed float -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ops:
    """The converted file's operators by kind, each ``{name: count}``."""

    integer: dict[str, int]
    float: dict[str, int]  # Ops that read or write a float tensor inside the graph.
    conversions: dict[str, int]  # (DE)QUANTIZE from or to float: float I/O, or a float op's.
    flex: dict[str, int]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def ops(content: bytes) -> Ops:
    """Read the operators of a LiteRT flatbuffer and sort them by the dtypes they touch."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(content, 0)
    kinds: dict[str, Counter] = {k: Counter() for k in ("integer", "float", "io", "flex")}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)

        def floating(index: int, graph=graph) -> bool:
            tensor = graph.Tensors(index)
            constant = model.Buffers(tensor.Buffer()).DataLength() > 0 or (
                model.Buffers(tensor.Buffer()).Size() > 0
            )
            return types.get(tensor.Type()) in _FLOAT_TYPES and not constant

        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = (code.CustomCode() or b"?").decode()
            inputs = [i for i in op.InputsAsNumpy().tolist() if i >= 0]
            outputs = [i for i in op.OutputsAsNumpy().tolist() if i >= 0]
            if name.startswith("Flex"):
                kinds["flex"][name] += 1
            elif not any(floating(i) for i in inputs + outputs):
                kinds["integer"][name] += 1
            elif name in ("QUANTIZE", "DEQUANTIZE"):  # To or from float: a float op's, or I/O.
                kinds["io"][name] += 1
            else:
                kinds["float"][name] += 1
    as_dict = {k: dict(sorted(v.items())) for k, v in kinds.items()}
    return Ops(as_dict["integer"], as_dict["float"], as_dict["io"], as_dict["flex"])


def refuse_ops(report: Ops, settings: Settings) -> None:
    if report.flex:
        raise ExportError(
            f"The converted model holds Flex ops ({_counts(report.flex)}), which the plain "
            "LiteRT runtime cannot run. Nothing was written."
        )
    if settings.require_full_integer and report.float:
        raise ExportError(
            f"Expected every op in int8 (require_full_integer). Received ops that stayed "
            f"float: {_counts(report.float)}. Nothing was written."
        )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{n}" for name, n in counts.items()) or "none"


# -- verification on held-out images -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Figures:
    """How close the int8 file came to the SavedModel on held-out images."""

    images: int
    max_relative: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float | None = None  # Classifiers only.
    top5_agreement: float | None = None  # The SavedModel's top-1 among the int8 top-5.


class Runner:
    """The int8 file in ``ai_edge_litert``, fed float images: it (de)quantizes integer I/O."""

    def __init__(self, path: Path, input_name: str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.runner = interpreter.get_signature_runner()
        self.input_name = input_name
        self.input = _quantization(self.runner.get_input_details()[input_name])
        self.output_name, details = next(iter(self.runner.get_output_details().items()))
        self.output = _quantization(details)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        feed = images
        if self.input["dtype"] != "float32":
            info = np.iinfo(self.input["dtype"])
            values = np.round(images / self.input["scale"] + self.input["zero_point"])
            feed = np.clip(values, info.min, info.max).astype(self.input["dtype"])
        result = self.runner(**{self.input_name: feed})[self.output_name]
        if self.output["dtype"] != "float32":
            result = (result.astype(np.float32) - self.output["zero_point"]) * self.output["scale"]
        return np.asarray(result, np.float32)


def _quantization(details: dict) -> dict:
    scales, zero_points = (details["quantization_parameters"][k] for k in ("scales", "zero_points"))
    facts = {"dtype": np.dtype(details["dtype"]).name}
    if facts["dtype"] != "float32" and len(scales):
        facts.update(scale=float(scales[0]), zero_point=int(zero_points[0]))
    return facts


def verify(runner: Runner, reference, images: Images, classifier: bool) -> Figures:
    """Run both models on every validation image that decodes; return the figures."""
    skipped = images.skipped
    actual, expected, batch = [], [], []

    def flush():
        stacked = np.stack(batch)
        expected.append(np.asarray(reference(stacked), np.float64))
        actual.append(np.asarray(runner(stacked), np.float64))
        batch.clear()

    for _, image in _decoded(images.validation, images.size, skipped):
        batch.append(image)
        if len(batch) == _BATCH:
            flush()
    if batch:
        flush()
    if not actual:
        raise ExportError(
            f"Expected validation images that decode. Received none in "
            f"{images.validation_source}. Nothing was written."
        )
    return figures(np.concatenate(actual), np.concatenate(expected), classifier)


def figures(actual: np.ndarray, expected: np.ndarray, classifier: bool) -> Figures:
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    norms = np.linalg.norm(actual, axis=-1) * np.linalg.norm(expected, axis=-1)
    cosine = np.sum(actual * expected, axis=-1) / np.maximum(norms, 1e-30)
    top1 = top5 = None
    if classifier:
        best = np.argmax(expected, axis=-1)
        top1 = float(np.mean(np.argmax(actual, axis=-1) == best))
        k = min(TOP_K, actual.shape[-1])
        top = np.argsort(-actual, axis=-1, kind="stable")[:, :k]
        top5 = float(np.mean(np.any(top == best[:, np.newaxis], axis=-1)))
    return Figures(
        images=len(actual),
        max_relative=float(np.max(np.abs(actual - expected)) / scale),
        mean_cosine=float(np.mean(cosine)),
        min_cosine=float(np.min(cosine)),
        top1_agreement=top1,
        top5_agreement=top5,
    )


def bound_of(settings: Settings, classifier: bool) -> dict:
    if classifier:
        return {"top1_agreement": settings.min_agreement}
    return {"mean_cosine": settings.min_cosine}


def refuse_figures(found: Figures, settings: Settings, classifier: bool) -> None:
    """Refuse below the bound: top-1 agreement for classifiers, mean cosine otherwise."""
    ((name, least),) = bound_of(settings, classifier).items()
    value = getattr(found, name)
    if value < least:
        flag = "min_agreement" if classifier else "min_cosine"
        raise ExportError(
            f"The int8 model failed verification on {found.images} held-out images: "
            f"{name.replace('_', ' ')} {value:.4f} < {flag}={least:g} ({lines(found)[0]}). "
            "Calibrate with images like those the model will see. Nothing was written."
        )


def lines(found: Figures) -> list[str]:
    """The figures for a person, most telling first."""
    parts = []
    if found.top1_agreement is not None:
        parts.append(
            f"top-1 agreement {found.top1_agreement:.4f}, top-{TOP_K} agreement "
            f"{found.top5_agreement:.4f}"
        )
    parts.append(f"cosine mean {found.mean_cosine:.4f}, least {found.min_cosine:.4f}")
    parts.append(f"max error {found.max_relative:.3f} of the output scale")
    return ["; ".join(parts)]


# -- what travels with the file --------------------------------------------------------------


def sidecar(
    facts: dict, runner: Runner, images: Images, steps: list[str], found: Figures,
    report: Ops, settings: Settings, classifier: bool, name: str,
) -> dict:  # fmt: skip
    """Add int8's facts to the sidecar ``facts``: I/O quantization, figures, ops, example."""
    facts["input"].update(dtype=runner.input["dtype"])
    if runner.input["dtype"] != "float32":
        facts["input"]["quantization"] = {k: runner.input[k] for k in ("scale", "zero_point")}
        facts["input"]["range"] = [0.0, 1.0]  # What the integers stand for.
    facts["output"] = {**(facts.get("output") or {}), "dtype": runner.output["dtype"]}
    if runner.output["dtype"] != "float32":
        facts["output"]["quantization"] = {k: runner.output[k] for k in ("scale", "zero_point")}
    facts["int8"] = {
        "io": settings.io,
        "calibration": {
            "source": images.calibration_source,
            "images": len(steps),
            "steps": settings.calibration_steps,
            "size": list(images.size),
            "decoded_as": "exporter.use.image_files.decode (as embed does)",
        },
        "validation": {
            "source": images.validation_source,
            "images": found.images,
            "disjoint_from_calibration": True,
        },
        "skipped_files": list(images.skipped)[:20],
        "ops": report.as_dict(),
        "require_full_integer": settings.require_full_integer,
    }
    facts["verification"] = {
        "reference": "the SavedModel's __call__(images, training=False)",
        "on": "held-out images, in ai_edge_litert",
        "bound": bound_of(settings, classifier),
        "figures": dataclasses.asdict(found),
    }
    facts["example"] = example(runner, images.size).replace("MODEL", repr(name))
    return facts


def example(runner: Runner, size: tuple[int, int]) -> str:
    """Runnable Python that feeds one decoded image file to the converted model."""
    feed = "pixels.astype(np.float32) / 255.0  # RGB in [0, 1]"
    dtype = runner.input["dtype"]
    if dtype != "float32":
        scale, zero = runner.input["scale"], runner.input["zero_point"]
        info = np.iinfo(dtype)
        if abs(scale * 255.0 - 1.0) < 1e-6 and zero == info.min:  # Calibrated on 0..255.
            feed = (
                "pixels" if dtype == "uint8" else "(pixels.astype(np.int16) - 128).astype(np.int8)"
            )
        else:
            feed = (
                f"np.clip(np.round(pixels / 255.0 / {scale!r} + {zero}), {info.min}, "
                f"{info.max}).astype(np.{dtype})"
            )
    out = "result"
    if runner.output["dtype"] != "float32":
        scale, zero = runner.output["scale"], runner.output["zero_point"]
        shift = f"- {zero}" if zero >= 0 else f"+ {-zero}"
        out = f"(result.astype(np.float32) {shift}) * {scale!r}"
    height, width = size
    return "\n".join([
        "import numpy as np",
        "from PIL import Image",
        "from ai_edge_litert.interpreter import Interpreter",
        "",
        f"pixels = np.asarray(Image.open('photo.jpg').convert('RGB').resize(({width}, {height}), "
        "Image.BILINEAR))[np.newaxis]  # uint8",
        "runner = Interpreter(model_path=MODEL).get_signature_runner()",
        f"result = runner({runner.input_name}={feed})['{runner.output_name}']",
        f"output = {out}  # float32",
    ])  # fmt: skip


def report_text(path: Path, facts: dict, found: Figures, report: Ops) -> str:
    """The short human report written beside the file (``FILE.report.md``)."""
    int8 = facts["int8"]
    rows = [
        f"# {path.name}: int8 LiteRT conversion",
        "",
        f"- source: {facts['source']['path']}",
        f"- input: {facts['input']['dtype']}"
        + (f" (scale {facts['input']['quantization']['scale']:.8g}, zero point "
           f"{facts['input']['quantization']['zero_point']})"
           if "quantization" in facts["input"] else ""),
        f"- calibration: {int8['calibration']['images']} images from "
        f"{int8['calibration']['source']} at {int8['calibration']['size'][0]}x"
        f"{int8['calibration']['size'][1]}",
        f"- validation: {found.images} images ({int8['validation']['source']}), never "
        "used to calibrate",
        f"- figures: {lines(found)[0]}",
        f"- bound: {facts['verification']['bound']}",
        f"- int8 ops: {_counts(report.integer)}",
        f"- ops that stayed float: {_counts(report.float)}",
        f"- conversions from or to float: {_counts(report.conversions)}",
        "",
        "Feeding it:",
        "",
        "```python",
        facts["example"],
        "```",
        "",
    ]  # fmt: skip
    return "\n".join(rows)


def size_for(source) -> tuple[int, int]:
    """The size images are resized to: the fixed size, else the native one (as embed)."""
    if source.fixed is not None:
        return source.fixed
    native = (source.metadata.get("input") or {}).get("native_size")
    side = native if isinstance(native, int) else 224
    side = max(side, source.min_size)
    return side, side


class Job:
    """One int8 conversion's stages, in the order ``convert`` calls them."""

    def __init__(self, source, settings: Settings):
        self.source, self.settings = source, settings
        facts = source.metadata
        task = facts.get("task")
        output = (facts.get("output") or {}).get("name")
        self.classifier = task == "image_classification" or (task is None and output == "logits")
        self.images = select(settings, size_for(source))
        self.steps: list[str] = []

    def configure(self, converter) -> None:
        configure(converter, self.images, self.settings, self.steps)

    def converted(self) -> None:
        refuse_without_steps(self.steps, self.images)

    def check_ops(self, content: bytes) -> None:
        self.ops = ops(content)
        refuse_ops(self.ops, self.settings)

    def verify(self, path: Path) -> list:
        """Verify on held-out images; the random-image checks of other modes do not apply."""
        self.runner = Runner(path, self.source.input_name)
        self.found = verify(self.runner, self.source.reference, self.images, self.classifier)
        refuse_figures(self.found, self.settings, self.classifier)
        return []

    def sidecar(self, facts: dict, out: Path) -> dict:
        return sidecar(
            facts, self.runner, self.images, self.steps, self.found, self.ops, self.settings,
            self.classifier, out.name,
        )  # fmt: skip

    def warning(self, text: str) -> str:
        """The input-checks warning, for integer input where the pixels are integers."""
        if self.settings.io == "float32":
            return text
        return text.replace(
            "float32 NHWC RGB images in [0, 1]",
            f"{self.settings.io} NHWC RGB images, quantized by input.quantization",
        )

    def report(self, out: Path, facts: dict) -> str:
        return report_text(out, facts, self.found, self.ops)

    def summary(self, facts: dict) -> dict:
        """The sidecar's int8 facts, with the lines ``Conversion.summary`` prints."""
        io = self.runner.input
        where = (
            f" (scale {io['scale']:.8g}, zero point {io['zero_point']})" if "scale" in io else ""
        )
        ((name, least),) = bound_of(self.settings, self.classifier).items()
        size = "x".join(str(s) for s in self.images.size)
        text = [
            f"calibrated on {len(self.steps)} images from {self.images.calibration_source} "
            f"at {size}; input {io['dtype']}{where}, output {self.runner.output['dtype']}",
            f"verified in ai_edge_litert on {self.found.images} held-out images "
            f"({self.images.validation_source}), against the SavedModel's __call__:",
            f"  {lines(self.found)[0]}",
            f"  bound: {name.replace('_', ' ')} >= {least:g}",
            f"ops that stayed float: {_counts(self.ops.float)}",
        ]
        if self.images.skipped:
            text.append(f"skipped {len(self.images.skipped)} files that are not images, e.g. "
                        f"{self.images.skipped[0]}")  # fmt: skip
        return {
            **facts["int8"],
            "figures": dataclasses.asdict(self.found),
            "lines": text,
            "calibration_files": list(self.steps),
            "validation_files": list(self.images.validation),
        }
