"""Check that any SavedModel keeps the reusable image API: one rule per line of SPEC.md.

Shares the contract (``exporter.spec``) with the builder but none of its code paths, so it
judges SavedModels we did not make as strictly as our own. The graph is scanned for unsafe
ops before anything is loaded or run.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import weakref
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from exporter import spec
from exporter.checking import checkpoint_index, files, fingerprint, unsafe_ops

RULES = {
    "no_tfhub_module_pb": "There is no tfhub_module.pb (the deprecated TF1 Hub format).",
    "file_names": "Every file and folder name starts with a letter, digit or underscore.",
    "fingerprint": "The content fingerprint in the metadata matches saved_model.pb and every "
    "file under variables/: nothing changed since the export.",
    "safe_ops": "No op touches files, processes, the network or Python (scanned before loading).",
    "loads": "tf.saved_model.load reads the directory.",
    "callable": "The root object has a traced __call__.",
    "training_argument": "__call__ takes `training` as a named argument.",
    "training_traced": "`training` is traced for both values, for every combination of the "
    "other arguments.",
    "hparams": "Every other argument of __call__ (an hparam) is traced as a float scalar tensor "
    "and has a Python default.",
    "input_dtype": "The images input is float32.",
    "input_layout": "The images input is rank 4, channels last, with 3 channels (NHWC).",
    "input_batch": "The batch dimension of the images input is free.",
    "output_dtype": "The output is float32.",
    "output_shape": "The output is rank 2 and keeps the batch size.",
    "size_independent": "The output width is the same at two input sizes inside the range.",
    "batch_independent": "In inference, an example's output does not depend on the rest of "
    "the batch.",
    "deterministic": "Two inference calls on the same images give the same output.",
    "variables": "`variables` and `trainable_variables` exist; the trainable ones are a subset.",
    "trainable_flags": "Every variable in `trainable_variables` has trainable=True.",
    "regularization_losses": "`regularization_losses` is a list of zero-argument callables "
    "returning float scalars.",
    "serving_default": "serving_default exists, takes float32 images and agrees with __call__.",
    "serving_uint8": "serving_uint8, where exported, takes uint8 images 0..255 and agrees with "
    "__call__ on the same pixels, with serving_default's one output name.",
    "serving_bytes": "serving_bytes, where exported, takes encoded images as strings, makes "
    "grayscale and RGBA ones RGB, and agrees with __call__ on the same pixels, with "
    "serving_default's one output name.",
    "labels": "A classifier's labels asset has one line per class.",
    "metadata": "The model card and metadata are present and agree with the model.",
    "training_call": "__call__(images, training=True) runs and keeps the output shape.",
}  # fmt: skip

TASKS = ("image_feature_vector", "image_classification")
PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
_RTOL = 1e-4  # Batch composition and separate graphs may reassociate float sums.
# A model that computes in a lower precision reassociates in that precision: float16 kernels
# chosen per batch size differ by about 1e-3 of the scale (MobileNetV2, TF 2.21 on CPU).
# A batch leak (such as subtracting the batch mean) still differs by order 1.
_LOW_PRECISION_RTOL = {"float16": 1e-2, "bfloat16": 5e-2}
_REPEAT_RTOL = 1e-6  # The same call twice should agree almost to the bit.
# batch_independent warns instead of failing when sharing the batch moves an output at most
# this many times as far as moving every pixel by one part in a million does (see the rule).
_ROUNDING_MARGIN = 10.0
_DEFAULT_SIZES = (224, 192)  # For SavedModels that document no size range.
_MAX_PB_BYTES = (2 << 30) - 1  # Protocol buffers cannot be larger: refuse before reading.
_MAX_TEXT_BYTES = 64 << 20  # metadata.json and a labels file are kilobytes.


class UnreadableError(Exception):
    """The path is not a readable SavedModel (missing, empty, corrupt or truncated)."""


@dataclasses.dataclass
class Result:
    """The verdict of one rule."""

    rule: str
    status: str
    message: str


@dataclasses.dataclass
class Report:
    """Every rule's verdict for one SavedModel."""

    path: str
    task: str | None
    results: list[Result]

    @property
    def ok(self) -> bool:
        return all(r.status != FAIL for r in self.results)

    def failed(self) -> list[str]:
        return [r.rule for r in self.results if r.status == FAIL]

    def to_json(self) -> str:
        return json.dumps(
            {
                "path": self.path,
                "task": self.task,
                "ok": self.ok,
                "rules": [dataclasses.asdict(r) for r in self.results],
            },
            indent=2,
        )

    def to_text(self) -> str:
        width = max(len(rule) for rule in RULES)
        lines = [f"{self.path} (task: {self.task or 'unknown'})"]
        lines += [f"  {r.status.upper():4}  {r.rule:{width}}  {r.message}" for r in self.results]
        counts = {s: sum(r.status == s for r in self.results) for s in (PASS, FAIL, WARN, SKIP)}
        lines.append(
            f"{'OK' if self.ok else 'NOT CONFORMING'}: {counts[PASS]} pass, {counts[FAIL]} fail, "
            f"{counts[WARN]} warn, {counts[SKIP]} skip"
        )
        return "\n".join(lines)


def read_saved_model(path: Path) -> saved_model_pb2.SavedModel:
    """Parse ``saved_model.pb`` without running anything; UnreadableError if impossible."""
    if not path.exists():
        raise UnreadableError(f"No such path: {path}.")
    if not path.is_dir():
        raise UnreadableError(f"Expected a SavedModel directory. Received a file: {path}.")
    pb = path / spec.SAVED_MODEL_FILE
    if not pb.exists():
        raise UnreadableError(f"Not a SavedModel: no {spec.SAVED_MODEL_FILE} in {path}.")
    try:
        data = files.read_regular(pb, _MAX_PB_BYTES, "the protocol buffer limit")
    except files.UnsafeFileError as error:
        raise UnreadableError(f"Not a SavedModel: {error}") from None
    except OSError as error:
        raise UnreadableError(f"Cannot read {pb}: {error.strerror or error}.") from None
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise UnreadableError(
            f"Corrupt {pb}: expected a serialized SavedModel protocol buffer, received "
            f"{len(data)} bytes that do not parse ({error or 'no reason given'})."
        ) from None
    if not proto.meta_graphs:
        raise UnreadableError(f"Corrupt {pb}: it holds no MetaGraph.")
    return proto


def check(
    path: str | Path,
    *,
    task: str | None = None,
    allow_unsafe_ops: bool = False,
    strict_metadata: bool = False,
    loaded=None,
) -> Report:
    """Run every rule on the SavedModel at ``path``.

    Args:
        path: The SavedModel directory.
        task: ``image_feature_vector`` or ``image_classification``; read from the metadata
            when not given.
        allow_unsafe_ops: Load and run the model even if the scan finds unsafe ops.
        strict_metadata: Missing card or metadata fails instead of warning (for our exports).
        loaded: The already loaded object, to skip a second load.

    Raises:
        UnreadableError: If ``path`` is not a readable SavedModel.

    Example:
        >>> check("exports/mobilenet_v2").ok
        True
    """
    path = Path(path)
    proto = read_saved_model(path)
    return _Checker(path, proto, task, allow_unsafe_ops, strict_metadata, loaded).run()


_SHAPE_FREE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shape_free_call(obj, training: bool | None):
    """``obj(images, training=training)`` (no ``training`` if None) for images of any shape.

    Called eagerly, a restored function is instantiated again, graph optimization and all,
    for every new input shape: a reloaded ResNet50 took seconds per shape (BUILD_NOTES).
    Inside one traced function whose images input is free in every dimension but the last,
    it is instantiated once, and the rules' batches and sizes all reuse it. A model whose
    traced input does not fit that (NCHW, a fixed batch) fails as a direct call would.
    """
    functions = _SHAPE_FREE.setdefault(obj, {})

    def call(images: tf.Tensor) -> tf.Tensor:
        key = (training, images.dtype, images.shape.rank, images.shape[-1])
        if key not in functions:
            spec_ = tf.TensorSpec([None] * (images.shape.rank - 1) + [images.shape[-1]],
                                  images.dtype)  # fmt: skip

            def inference(x):
                return obj(x) if training is None else obj(x, training=training)

            functions[key] = tf.function(inference, input_signature=[spec_], autograph=False)
        return functions[key](images)

    return call


def close(actual, expected, rtol: float = _RTOL) -> bool:
    """Whether ``actual`` equals ``expected`` within ``rtol`` of the expected output's scale."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    return actual.shape == expected.shape and _gap(actual, expected) <= rtol


def _gap(actual, expected) -> float:
    """The largest difference, relative to the expected output's largest magnitude."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1e-6)
    return float(np.max(np.abs(actual - expected))) / scale if actual.size else 0.0


def _images(batch: int, size: int) -> tf.Tensor:
    rng = np.random.default_rng(size)
    return tf.constant(rng.random((batch, size, size, spec.CHANNELS), dtype=np.float32))


class _Checker:
    """Runs the rules in order; later rules skip when what they need already failed."""

    def __init__(self, path, proto, task, allow_unsafe_ops, strict_metadata, loaded):
        self.path, self.proto = path, proto
        self.allow_unsafe_ops, self.strict_metadata = allow_unsafe_ops, strict_metadata
        self.obj = loaded
        self.metadata, self.metadata_error = _read_metadata(path)
        from_metadata = (self.metadata or {}).get("task")
        self.task = task or (from_metadata if from_metadata in TASKS else None)
        self.results: dict[str, Result] = {}
        self.rtol = _reassociation_rtol(proto)
        self.outputs: dict[tuple, np.ndarray] = {}
        self.functions = []

    # -- running -------------------------------------------------------------------------

    def run(self) -> Report:
        for rule in RULES:
            self.results[rule] = self._run_rule(rule)
        return Report(str(self.path), self.task, list(self.results.values()))

    def _run_rule(self, rule: str) -> Result:
        missing = [need for need in _NEEDS.get(rule, ()) if self.results[need].status == FAIL]
        missing += [need for need in _NEEDS.get(rule, ()) if self.results[need].status == SKIP]
        if missing:
            return Result(rule, SKIP, f"not run: {', '.join(sorted(set(missing)))} did not pass")
        try:
            status, message = getattr(self, f"_{rule}")()
        except Exception as error:  # A rule's own call into the model failed: that is its verdict.
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            status, message = FAIL, f"{type(error).__name__}: {first[:300]}"
        return Result(rule, status, message)

    def _call(self, batch: int, size: int, training: bool = False) -> np.ndarray:
        key = (batch, size, training)
        if key not in self.outputs:
            self.outputs[key] = self._invoke(_images(batch, size), training)
        return self.outputs[key]

    def _invoke(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        # Inference as a consumer would call it, also when `training` is (wrongly) missing.
        takes_training = all("training" in names for _, _, names in self.functions)
        return shape_free_call(self.obj, training if takes_training else None)(images)

    @property
    def sizes(self) -> tuple[int, ...]:
        facts = (self.metadata or {}).get("input") or {}
        if isinstance(facts.get("native_size"), int) and isinstance(facts.get("min_size"), int):
            return spec.probe_sizes(
                facts["min_size"], facts["native_size"], bool(facts.get("fixed_size"))
            )
        shapes = {tuple(s.shape.as_list()[1:3]) for s in self._input_specs()}
        if len(shapes) == 1 and None not in next(iter(shapes)):
            return (next(iter(shapes))[0],)
        return _DEFAULT_SIZES

    def _input_specs(self) -> list[tf.TensorSpec]:
        return [bound[0] for bound in self.functions]

    # -- layout and safety ---------------------------------------------------------------

    def _no_tfhub_module_pb(self):
        if (self.path / "tfhub_module.pb").exists():
            return FAIL, "tfhub_module.pb present: consumers treat this as the TF1 Hub format"
        return PASS, "no tfhub_module.pb"

    def _file_names(self):
        bad = [
            str(p.relative_to(self.path))
            for p in sorted(self.path.rglob("*"))
            if not spec.VALID_NAME.match(p.name)
        ]
        if bad:
            return FAIL, f"names that cannot be packed for model hubs: {', '.join(bad[:5])}"
        return PASS, "all names start with a letter, digit or underscore"

    def _fingerprint(self):
        severity = FAIL if self.strict_metadata else WARN
        if self.metadata is None:  # The metadata rule reports that.
            return (FAIL if self.strict_metadata else SKIP), f"not run: {self.metadata_error}"
        recorded = self.metadata.get("fingerprint")
        if recorded is None:
            return severity, "the metadata records no content fingerprint: changes are undetectable"
        try:
            problems = fingerprint.mismatches(recorded, self.path)
        except fingerprint.FingerprintError as error:
            return FAIL, str(error)
        if problems:
            return FAIL, f"the files changed since the export: {'; '.join(problems)}"
        files = len(recorded["files"])
        return PASS, f"{files} files match the recorded {fingerprint.ALGORITHM} digests"

    def _safe_ops(self):
        found = unsafe_ops.scan(self.proto)
        if not found:
            return PASS, "no unsafe ops in any graph or function"
        listed = ", ".join(f"{op} ({where})" for op, where in found[:5])
        if self.allow_unsafe_ops:
            return WARN, f"unsafe ops allowed by --allow_unsafe_ops: {listed}"
        return FAIL, f"refusing to run: {listed}; pass --allow_unsafe_ops to run it anyway"

    def _loads(self):
        if self.obj is None:
            try:  # TensorFlow aborts or blocks on some files: vet them first.
                checkpoint_index.vet(self.path)
            except checkpoint_index.CheckpointError as error:
                return FAIL, f"refusing to load: {error}"
            try:
                self.obj = tf.saved_model.load(str(self.path))
            except Exception as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                return FAIL, f"{type(error).__name__}: {first[:300]}"
        return PASS, "loaded"

    # -- __call__ and its traces ---------------------------------------------------------

    def _callable(self):
        function = self.obj.__call__ if callable(self.obj) else None
        concrete = list(getattr(function, "concrete_functions", []) or [])
        if not concrete:
            return FAIL, "the root object has no traced __call__"
        for cf in concrete:
            names = list(cf.function_type.parameters)
            args, kwargs = cf.structured_input_signature
            bound = dict(zip(names, args, strict=False)) | dict(kwargs)
            first = bound.get(names[0]) if names else None
            if not isinstance(first, tf.TensorSpec):
                return FAIL, f"the first argument of __call__ is not a tensor: {first!r}"
            self.functions.append((first, bound, names))
        return PASS, f"{len(concrete)} traced signatures"

    def _training_argument(self):
        without = [names for _, _, names in self.functions if "training" not in names]
        if without:
            return FAIL, f"__call__ arguments are {without[0]}; `training` is missing"
        return PASS, "`training` is a named argument"

    def _training_traced(self):
        groups: dict[str, set] = {}
        for _, bound, _ in self.functions:
            others = {k: v for k, v in bound.items() if k != "training"}
            groups.setdefault(repr(sorted(others.items())), set()).add(bound.get("training"))
        incomplete = [values for values in groups.values() if values != {True, False}]
        if incomplete:
            return (
                FAIL,
                f"`training` traced only as {sorted(incomplete[0], key=str)} for some inputs",
            )
        return PASS, f"both values traced for {len(groups)} argument combination(s)"

    def _hparams(self):
        defaults = self._hparam_defaults()
        problems = []
        for _, bound, names in self.functions:
            for name in names[1:]:
                value = bound.get(name)
                if name in ("training", *self._unused) or (
                    name in defaults and _is_float_scalar(value)
                ):
                    continue
                problems.append(f"{name} traced as {value!r}")
        missing = sorted(k for k, v in defaults.items() if not isinstance(v, (int, float)))
        problems += [f"{name} has no numeric Python default" for name in missing]
        if problems:
            return FAIL, "; ".join(sorted(set(problems))[:3]) + " (expected a float scalar tensor)"
        listed = ", ".join(f"{k}={v}" for k, v in defaults.items()) or "none"
        if self._unused:
            # tf-keras' model.save traces Keras' own `mask` argument this way (issue 9).
            unused = ", ".join(self._unused)
            return WARN, f"{listed}; {unused} traced only as None with default None: not an hparam"
        return PASS, listed

    @property
    def _unused(self) -> tuple[str, ...]:
        """Arguments traced only as None whose default is None: they take nothing, so no hparam."""
        parameters = list(inspect.signature(self.obj.__call__).parameters.values())[1:]
        return tuple(
            p.name
            for p in parameters
            if p.name != "training"
            and p.default is None
            and all(bound.get(p.name) is None for _, bound, _ in self.functions)
        )

    def _hparam_defaults(self) -> dict:
        """Each hparam's Python default, read from the restored __call__'s signature."""
        parameters = list(inspect.signature(self.obj.__call__).parameters.values())[1:]
        ignored = ("training", *self._unused)
        return {p.name: p.default for p in parameters if p.name not in ignored}

    def _input_dtype(self):
        bad = {s.dtype.name for s in self._input_specs() if s.dtype != spec.IMAGE_DTYPE}
        if bad:
            return FAIL, f"images traced as {', '.join(sorted(bad))}; expected float32"
        return PASS, "float32"

    def _input_layout(self):
        for s in self._input_specs():
            shape = s.shape.as_list() if s.shape.rank is not None else None
            if shape is None or len(shape) != 4:
                return FAIL, f"images traced with shape {s.shape}; expected rank 4 (NHWC)"
            if shape[-1] != spec.CHANNELS:
                nchw = " (looks like NCHW, channels first)" if shape[1] == spec.CHANNELS else ""
                return FAIL, f"images traced with shape {s.shape}{nchw}; expected [B, H, W, 3]"
        return PASS, "[batch, height, width, 3]"

    def _input_batch(self):
        fixed = [s.shape for s in self._input_specs() if s.shape[0] is not None]
        if fixed:
            return FAIL, f"images traced with a fixed batch size: {fixed[0]}"
        return PASS, "any batch size"

    # -- outputs -------------------------------------------------------------------------

    def _output_dtype(self):
        output = self._call(3, self.sizes[0])
        if output.dtype != tf.float32:
            return FAIL, f"output is {output.dtype.name}; expected float32"
        return PASS, "float32"

    def _output_shape(self):
        shapes = {batch: self._call(batch, self.sizes[0]).shape for batch in (1, 3)}
        for batch, shape in shapes.items():
            if shape.rank != 2 or shape[0] != batch:
                return FAIL, f"output shape {shape} for a batch of {batch}; expected [{batch}, N]"
        return PASS, f"[batch, {shapes[3][1]}]"

    def _training_call(self):
        # Training mode updates batch-norm statistics (and dropout seeds): put them back, so
        # checking leaves the model as it was. A forward pass does not change the weights,
        # so only the other variables are copied (a copy of every variable held the weights
        # a third time during an export's verify: +94 MB for ResNet50). A weight is a
        # variable both listed in trainable_variables and flagged trainable. This rule also
        # runs last for models that hide their variables.
        expected = self._call(3, self.sizes[0]).shape
        weights = {v.ref() for v in getattr(self.obj, "trainable_variables", []) if v.trainable}
        saved = [
            (v, v.numpy()) for v in getattr(self.obj, "variables", []) if v.ref() not in weights
        ]
        try:
            output = self.obj(_images(3, self.sizes[0]), training=True)
        finally:
            for variable, value in saved:
                variable.assign(value)
        if output.shape != expected or output.dtype != tf.float32:
            return (
                FAIL,
                f"training=True gave {output.dtype.name} {output.shape}, expected {expected}",
            )
        return PASS, "runs, same shape"

    def _size_independent(self):
        if len(self.sizes) < 2:
            return PASS, f"fixed-size model ({self.sizes[0]}x{self.sizes[0]})"
        widths = {size: self._call(1, size).shape[-1] for size in self.sizes}
        if len(set(widths.values())) > 1:
            listed = ", ".join(f"{w} at {s}x{s}" for s, w in widths.items())
            return FAIL, f"output width depends on the input size: {listed}"
        return PASS, f"width {widths[self.sizes[0]]} at sizes {', '.join(map(str, self.sizes))}"

    def _batch_independent(self):
        alone = self._call(1, self.sizes[0])
        # _images(3, size) starts with the same first image as _images(1, size).
        in_batch = self._call(3, self.sizes[0])[:1]
        if close(in_batch, alone, rtol=self.rtol):
            return PASS, "the same alone and in a batch"
        # Kernels chosen per batch size round differently. A network that amplifies rounding
        # without bound (deep ones with random, uncalibrated weights) then differs alone and
        # in a batch by as much as through any other tiny change: no leak shows through
        # that. Moving every pixel by up to one part in a million (a few float32 steps)
        # measures it; a leak in a model that does not amplify rounding stays a failure.
        image = _images(1, self.sizes[0])
        jitter = 1.0 - 1e-6 * np.random.default_rng(0).random(image.shape, np.float32)
        nudged = np.asarray(self._invoke(image * jitter, False))
        moved, rounding = _gap(in_batch, alone), _gap(nudged, alone)
        if moved <= _ROUNDING_MARGIN * rounding:
            return WARN, (
                f"cannot tell: sharing the batch moves the first image's output by {moved:.2g} "
                f"of its scale, and moving each pixel by one part in a million moves it by "
                f"{rounding:.2g}; the model amplifies rounding (random, uncalibrated weights do)"
            )
        return FAIL, (
            f"the first image's output changes when other images share its batch "
            f"(by {moved:.2g} of its scale)"
        )

    def _deterministic(self):
        first = self._call(3, self.sizes[0])
        again = self._invoke(_images(3, self.sizes[0]), training=False)
        if not close(again, first, rtol=_REPEAT_RTOL):
            return FAIL, "two inference calls on the same images differ"
        return PASS, "repeatable"

    # -- variables and losses ------------------------------------------------------------

    def _variables(self):
        missing = [a for a in ("variables", "trainable_variables") if not hasattr(self.obj, a)]
        if missing:
            return FAIL, f"missing attribute(s): {', '.join(missing)}"
        variables, trainable = list(self.obj.variables), list(self.obj.trainable_variables)
        if not all(isinstance(v, tf.Variable) for v in variables + trainable):
            return (
                FAIL,
                "`variables` / `trainable_variables` hold something other than tf.Variables",
            )
        outside = {v.ref() for v in trainable} - {v.ref() for v in variables}
        if outside:
            return FAIL, f"{len(outside)} trainable variable(s) are missing from `variables`"
        return PASS, f"{len(variables)} variables, {len(trainable)} trainable"

    def _trainable_flags(self):
        frozen = [v.name for v in self.obj.trainable_variables if not v.trainable]
        if frozen:
            return FAIL, f"in trainable_variables with trainable=False: {', '.join(frozen[:3])}"
        return PASS, "all trainable=True"

    def _regularization_losses(self):
        losses = getattr(self.obj, "regularization_losses", None)
        if losses is None:
            return FAIL, "no `regularization_losses` attribute"
        for index, loss in enumerate(losses):
            if not callable(loss):
                return FAIL, f"regularization_losses[{index}] is not callable"
            value = tf.convert_to_tensor(loss())
            if value.shape.rank != 0 or not value.dtype.is_floating:
                return (
                    FAIL,
                    f"regularization_losses[{index}]() gave {value.dtype.name} {value.shape}",
                )
        return PASS, f"{len(losses)} loss function(s)"

    # -- signatures and documentation ----------------------------------------------------

    def _serving_default(self):
        signature = self.obj.signatures.get("serving_default")
        if signature is None:
            return FAIL, "no serving_default signature"
        inputs = signature.structured_input_signature[1]
        if len(inputs) != 1:
            return FAIL, f"serving_default takes {sorted(inputs)}; expected one images input"
        ((name, input_spec),) = inputs.items()
        if input_spec.dtype != spec.IMAGE_DTYPE:
            return FAIL, f"serving_default input {name!r} is {input_spec.dtype.name}"
        outputs = signature(**{name: _images(3, self.sizes[0])})
        if len(outputs) != 1:
            return FAIL, f"serving_default has outputs {sorted(outputs)}; expected one"
        ((output_name, output),) = outputs.items()
        if not close(output, self._call(3, self.sizes[0])):
            return FAIL, f"serving_default output {output_name!r} differs from __call__"
        return PASS, f"{name!r} -> {output_name!r}, agrees with __call__"

    def _serving_uint8(self):
        pixels = _pixels(3, self.sizes[0], seed=3)
        return self._extra_signature("serving_uint8", tf.uint8, tf.constant(pixels), pixels)

    def _serving_bytes(self):
        if "serving_bytes" not in self.obj.signatures:
            return PASS, "not exported (optional)"
        # At the size it resizes to (when documented), so the resize is the identity.
        size = ((self.metadata or {}).get("serving") or {}).get("serving_bytes", {})
        size = size.get("size") if isinstance(size.get("size"), int) else self.sizes[0]
        pixels = _pixels(3, size, seed=4)
        pixels[1] = pixels[1, ..., :1]  # Gray: the same value in every channel.
        encoded = [
            tf.io.encode_png(pixels[0]),
            tf.io.encode_png(pixels[1, ..., :1]),  # A grayscale PNG.
            tf.io.encode_png(tf.concat([pixels[2], pixels[2, ..., :1]], -1)),  # An RGBA PNG.
        ]
        return self._extra_signature("serving_bytes", tf.string, tf.stack(encoded), pixels)

    def _extra_signature(self, name: str, dtype: tf.DType, inputs: tf.Tensor, pixels):
        """Check an extra serving signature against __call__ on the same pixels."""
        signature = self.obj.signatures.get(name)
        if signature is None:
            return PASS, "not exported (optional)"
        arguments = signature.structured_input_signature[1]
        if len(arguments) != 1:
            return FAIL, f"{name} takes {sorted(arguments)}; expected one input"
        ((argument, input_spec),) = arguments.items()
        if input_spec.dtype != dtype:
            return FAIL, f"{name} input {argument!r} is {input_spec.dtype.name}, not {dtype.name}"
        outputs = signature(**{argument: inputs})
        default = self.obj.signatures.get("serving_default")
        names = sorted(default.structured_outputs) if default is not None else None
        if len(outputs) != 1 or (names is not None and sorted(outputs) != names):
            return FAIL, f"{name} has outputs {sorted(outputs)}; serving_default has {names}"
        ((output_name, output),) = outputs.items()
        expected = self._invoke(tf.constant(pixels, tf.float32) / 255.0, training=False)
        if not close(output, expected, rtol=self.rtol):
            return FAIL, f"{name} output {output_name!r} differs from __call__ on the same pixels"
        return PASS, f"{argument!r} -> {output_name!r}, agrees with __call__"

    def _labels(self):
        asset = getattr(self.obj, "labels_file", None)
        if self.task != "image_classification":
            return PASS, "not a classifier"
        width = self._call(1, self.sizes[0]).shape[-1]
        if asset is None:
            return WARN, "no labels asset: class indices are not defined"
        labels = files.read_regular(Path(asset.asset_path.numpy().decode()), _MAX_TEXT_BYTES)
        lines = labels.decode("utf-8").splitlines()
        if len(lines) != width:
            return FAIL, f"{len(lines)} labels for {width} classes"
        return PASS, f"{len(lines)} labels"

    def _metadata(self):
        if self.metadata is None:
            severity = FAIL if self.strict_metadata else WARN
            return severity, self.metadata_error
        problems = self._metadata_problems(self.metadata)
        if not (self.path / spec.CARD_FILE).is_file():
            problems.append(f"no {spec.CARD_FILE}")
        if problems:
            return FAIL, "; ".join(problems)
        return PASS, f"{spec.METADATA_FILE} and {spec.CARD_FILE} agree with the model"

    def _metadata_problems(self, facts: dict) -> list[str]:
        problems = []
        width = int(self._call(1, self.sizes[0]).shape[-1])
        key = "num_classes" if self.task == "image_classification" else "num_features"
        if facts.get("task") not in TASKS:
            problems.append(f"task {facts.get('task')!r} is not one of {', '.join(TASKS)}")
        elif self.task and facts["task"] != self.task:
            problems.append(f"metadata says task {facts['task']}, checked as {self.task}")
        if facts.get(key) != width:
            problems.append(f"{key} is {facts.get(key)}, the model outputs {width}")
        hparams = facts.get("hparams") or {}
        arguments = {n for _, _, names in self.functions for n in names[1:]}
        arguments -= {"training", *self._unused}
        if set(hparams) != arguments:
            problems.append(f"hparams {sorted(hparams)} but __call__ takes {sorted(arguments)}")
        for name, default in self._hparam_defaults().items():
            about = hparams.get(name, {"default": default})
            stated = about.get("default") if isinstance(about, dict) else about
            if stated != default:
                problems.append(f"hparam {name} defaults to {default}, metadata says {stated}")
        labels_file = (facts.get("classes") or {}).get("labels_file")
        if labels_file and getattr(self.obj, "labels_file", None) is None:
            problems.append(f"metadata names {labels_file}, but no labels asset is reachable")
        if sorted(facts.get("signatures") or []) != sorted(self.obj.signatures):
            problems.append(
                f"signatures {facts.get('signatures')} but has {sorted(self.obj.signatures)}"
            )
        size = facts.get("input") or {}
        minimum = size.get("min_size")
        checkable = not size.get("fixed_size") and isinstance(minimum, int) and minimum > 1
        if checkable and _accepts(self.obj, minimum - 1):
            problems.append(f"min_size is {minimum}, but {minimum - 1}x{minimum - 1} is accepted")
        return problems


def _reassociation_rtol(proto: saved_model_pb2.SavedModel) -> float:
    """The tolerance for reassociated sums: looser where convolutions compute in 16 bits."""
    found = {
        tf.as_dtype(node.attr["T"].type).name
        for graph in proto.meta_graphs
        for function in graph.graph_def.library.function
        for node in function.node_def
        if node.op.startswith("Conv2D") and "T" in node.attr
    }
    return max([_RTOL] + [_LOW_PRECISION_RTOL[d] for d in found if d in _LOW_PRECISION_RTOL])


def _pixels(batch: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, size, size, spec.CHANNELS), dtype=np.uint8)


def _is_float_scalar(value) -> bool:
    return isinstance(value, tf.TensorSpec) and value.shape.rank == 0 and value.dtype.is_floating


def _accepts(obj, size: int) -> bool:
    try:
        shape_free_call(obj, False)(_images(1, size))
    except (tf.errors.InvalidArgumentError, ValueError):
        return False
    return True


def _read_metadata(path: Path) -> tuple[dict | None, str]:
    file = path / spec.METADATA_FILE
    if not file.is_file():
        return None, f"no {spec.METADATA_FILE}: the model's facts are undocumented"
    try:
        facts = json.loads(files.read_regular(file, _MAX_TEXT_BYTES).decode("utf-8"))
    except files.UnsafeFileError as error:
        return None, f"{spec.METADATA_FILE} cannot be read: {error}"
    except OSError as error:
        return None, f"{spec.METADATA_FILE} cannot be read: {error.strerror or error}"
    except (ValueError, UnicodeDecodeError) as error:
        return None, f"{spec.METADATA_FILE} is not valid JSON: {error}"
    if not isinstance(facts, dict):
        return None, f"{spec.METADATA_FILE} is not a JSON object"
    return facts, ""


# What each rule needs to have passed first; a rule whose needs failed is skipped.
_CALLS = ("callable", "input_dtype", "input_layout", "input_batch")
_NEEDS: dict[str, tuple[str, ...]] = {
    "loads": ("safe_ops",),
    "callable": ("loads",),
    "training_argument": ("callable",),
    "training_traced": ("training_argument",),
    "hparams": ("training_argument",),
    "input_dtype": ("callable",),
    "input_layout": ("callable",),
    "input_batch": ("input_layout",),
    "output_dtype": _CALLS,
    "output_shape": _CALLS,
    "training_call": (*_CALLS, "training_traced", "output_dtype", "output_shape"),
    "size_independent": (*_CALLS, "output_shape"),
    "batch_independent": (*_CALLS, "output_shape"),
    "deterministic": (*_CALLS, "output_shape"),
    "variables": ("loads",),
    "trainable_flags": ("variables",),
    "regularization_losses": ("loads",),
    "serving_default": (*_CALLS, "output_shape"),
    "serving_uint8": (*_CALLS, "output_shape"),
    "serving_bytes": (*_CALLS, "output_shape"),
    "labels": (*_CALLS, "output_shape"),
    "metadata": (*_CALLS, "output_shape", "hparams"),
}
