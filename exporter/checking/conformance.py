"""Check that any SavedModel keeps the reusable image API: one rule per line of the contract
(``docs/contract.md``).

Shares the contract (``exporter.spec``) with the builder but none of its code paths, so it
judges SavedModels we did not make as strictly as our own. The graph is scanned for unsafe
ops before anything is loaded or run.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from exporter import spec
from exporter.checking import files, fingerprint, input_range, numeric, savedmodel, unsafe_ops
from exporter.checking.numeric import close, shape_free_call

TASKS = ("image_feature_vector", "image_classification")


class Status(str, enum.Enum):  # noqa: UP042 - enum.StrEnum needs Python 3.11
    """A rule's verdict. A ``str``: it compares equal to, and serializes as, its value."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


PASS, FAIL, WARN, SKIP = Status.PASS, Status.FAIL, Status.WARN, Status.SKIP


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule: its name, the line of the contract it checks, and what must pass first."""

    name: str
    contract: str
    needs: tuple[str, ...]
    check: Callable[[_Checker], tuple[Status, str]]


_REGISTRY: dict[str, Rule] = {}


def rule(name: str, contract: str, needs: tuple[str, ...] = ()):
    """Declare the method below as the rule ``name``; rules run in declaration order.

    A rule whose ``needs`` failed or were skipped is skipped. ``needs`` must be declared
    before it, so the order of declaration is an order in which every rule can run.
    """

    def register(check: Callable[[_Checker], tuple[Status, str]]):
        if name in _REGISTRY:
            raise ValueError(f"Rule {name!r} is declared twice.")
        unknown = [need for need in needs if need not in _REGISTRY]
        if unknown:
            raise ValueError(f"Rule {name!r} needs {unknown}, which are not declared before it.")
        _REGISTRY[name] = Rule(name, contract, tuple(needs), check)
        return check

    return register


# What calling __call__ at all needs: later rules that call it list these.
_CALLS = ("callable", "input_dtype", "input_layout", "input_batch")
_RTOL = numeric.RTOL
# A model that computes in a lower precision reassociates in that precision: float16 kernels
# chosen per batch size differ by about 1e-3 of the scale (MobileNetV2, TF 2.21 on CPU).
# A batch leak (such as subtracting the batch mean) still differs by order 1.
_LOW_PRECISION_RTOL = {"float16": 1e-2, "bfloat16": 5e-2}
_REPEAT_RTOL = 1e-6  # The same call twice should agree almost to the bit.
# batch_independent warns instead of failing when sharing the batch moves an output at most
# this many times as far as moving every pixel by one part in a million does (see the rule).
_ROUNDING_MARGIN = 10.0
_MAX_TEXT_BYTES = 64 << 20  # A labels file is kilobytes.


# Where the checker opens a SavedModel: the package's one way in (re-exported for callers).
UnreadableError = savedmodel.UnreadableError
read_saved_model = savedmodel.read


@dataclasses.dataclass
class Result:
    """The verdict of one rule."""

    rule: str
    status: Status
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
        width = max(len(name) for name in RULES)
        lines = [f"{self.path} (task: {self.task or 'unknown'})"]
        lines += [f"  {r.status.upper():4}  {r.rule:{width}}  {r.message}" for r in self.results]
        counts = {s: sum(r.status == s for r in self.results) for s in (PASS, FAIL, WARN, SKIP)}
        lines.append(
            f"{'OK' if self.ok else 'NOT CONFORMING'}: {counts[PASS]} pass, {counts[FAIL]} fail, "
            f"{counts[WARN]} warn, {counts[SKIP]} skip"
        )
        return "\n".join(lines)


def check(
    path: str | Path,
    *,
    task: str | None = None,
    allow_unsafe_ops: bool = False,
    strict_metadata: bool = False,
    loaded=None,
    proto: saved_model_pb2.SavedModel | None = None,
) -> Report:
    """Run every rule on the SavedModel at ``path``.

    Args:
        path: The SavedModel directory.
        task: ``image_feature_vector`` or ``image_classification``; read from the metadata
            when not given.
        allow_unsafe_ops: Load and run the model even if the scan finds unsafe ops.
        strict_metadata: Missing card or metadata fails instead of warning (for our exports).
        loaded: The already loaded object, to skip a second load.
        proto: The already parsed ``saved_model.pb`` (``savedmodel.read``), to skip a
            second read.

    Raises:
        UnreadableError: If ``path`` is not a readable SavedModel.

    Example:
        >>> check("exports/mobilenet_v2").ok
        True
    """
    path = Path(path)
    proto = savedmodel.read(path) if proto is None else proto
    return _Checker(path, proto, task, allow_unsafe_ops, strict_metadata, loaded).run()


def _bad_images(size: int) -> dict[str, np.ndarray]:
    """One tensor of each kind the contract says is refused, ``size`` pixels a side."""
    pixels = np.full((1, size, size, 3), 0.5, np.float32)
    return {
        "NCHW": pixels.transpose(0, 3, 1, 2).copy(),
        "1 channel": pixels[..., :1].copy(),
        "4 channels": np.concatenate([pixels, pixels[..., :1]], -1),
        "uint8": (pixels * 255).astype(np.uint8),
        "float64": pixels.astype(np.float64),
        "rank 3": pixels[0].copy(),
    }


def _images(batch: int, size: int) -> tf.Tensor:
    rng = np.random.default_rng(size)
    return tf.constant(rng.random((batch, size, size, spec.CHANNELS), dtype=np.float32))


class _Checker:
    """Runs the rules in order; later rules skip when what they need already failed."""

    def __init__(self, path, proto, task, allow_unsafe_ops, strict_metadata, loaded):
        self.path, self.proto = path, proto
        self.allow_unsafe_ops, self.strict_metadata = allow_unsafe_ops, strict_metadata
        self.obj = loaded
        self.metadata, self.metadata_error = savedmodel.metadata(path)
        from_metadata = (self.metadata or {}).get("task")
        self.task = task or (from_metadata if from_metadata in TASKS else None)
        # Made by exporter: held to what our exports promise beyond the API.
        self.ours = strict_metadata or str((self.metadata or {}).get("format", "")).startswith(
            spec.METADATA_FORMAT.split("/")[0] + "/"
        )
        self.results: dict[str, Result] = {}
        self.rtol = _reassociation_rtol(proto)
        self.outputs: dict[tuple, np.ndarray] = {}
        self.functions = []

    # -- running -------------------------------------------------------------------------

    def run(self) -> Report:
        for declared in _REGISTRY.values():
            self.results[declared.name] = self._run_rule(declared)
        return Report(str(self.path), self.task, list(self.results.values()))

    def _run_rule(self, declared: Rule) -> Result:
        missing = [n for n in declared.needs if self.results[n].status in (FAIL, SKIP)]
        if missing:
            message = f"not run: {', '.join(sorted(set(missing)))} did not pass"
            return Result(declared.name, SKIP, message)
        try:
            status, message = declared.check(self)
        except Exception as error:  # A rule's own call into the model failed: that is its verdict.
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            status, message = FAIL, f"{type(error).__name__}: {first[:300]}"
        return Result(declared.name, Status(status), message)

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
        return spec.DEFAULT_SIZES

    def _input_specs(self) -> list[tf.TensorSpec]:
        return [bound[0] for bound in self.functions]

    # -- layout and safety ---------------------------------------------------------------

    @rule("no_tfhub_module_pb", "There is no tfhub_module.pb (the deprecated TF1 Hub format).")
    def _no_tfhub_module_pb(self):
        if (self.path / "tfhub_module.pb").exists():
            return FAIL, "tfhub_module.pb present: consumers treat this as the TF1 Hub format"
        return PASS, "no tfhub_module.pb"

    @rule("file_names", "Every file and folder name starts with a letter, digit or underscore.")
    def _file_names(self):
        bad = [
            str(p.relative_to(self.path))
            for p in sorted(self.path.rglob("*"))
            if not spec.VALID_NAME.match(p.name)
        ]
        if bad:
            return FAIL, f"names that cannot be packed for model hubs: {', '.join(bad[:5])}"
        return PASS, "all names start with a letter, digit or underscore"

    @rule(
        "fingerprint",
        "The content fingerprint in the metadata matches saved_model.pb and every file under "
        "variables/: nothing changed since the export.",
    )
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

    @rule(
        "safe_ops",
        "No op touches files, processes, the network or Python (scanned before loading).",
    )
    def _safe_ops(self):
        found = unsafe_ops.scan(self.proto)
        if not found:
            return PASS, "no unsafe ops in any graph or function"
        listed = ", ".join(f"{op} ({where})" for op, where in found[:5])
        if self.allow_unsafe_ops:
            return WARN, f"unsafe ops allowed (allow_unsafe_ops=True): {listed}"
        return FAIL, f"refusing to run: {listed}; pass allow_unsafe_ops=True to run it anyway"

    @rule("loads", "tf.saved_model.load reads the directory.", needs=("safe_ops",))
    def _loads(self):
        if self.obj is None:
            try:  # safe_ops has passed, or warned because unsafe ops are allowed.
                self.obj = savedmodel.load(self.path, proto=self.proto, allow_unsafe_ops=True)
            except savedmodel.UnsafeFilesError as error:
                return FAIL, f"refusing to load: {error.reason}"
            except Exception as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                return FAIL, f"{type(error).__name__}: {first[:300]}"
        return PASS, "loaded"

    # -- __call__ and its traces ---------------------------------------------------------

    @rule("callable", "The root object has a traced __call__.", needs=("loads",))
    def _callable(self):
        function = self.obj.__call__ if callable(self.obj) else None
        concrete = list(getattr(function, "concrete_functions", []) or [])
        if not concrete:
            return FAIL, "the root object has no traced __call__"
        traces = []
        for cf in concrete:
            names = list(cf.function_type.parameters)
            args, kwargs = cf.structured_input_signature
            bound = dict(zip(names, args, strict=False)) | dict(kwargs)
            first = bound.get(names[0]) if names else None
            if not isinstance(first, tf.TensorSpec):
                return FAIL, f"the first argument of __call__ is not a tensor: {first!r}"
            traces.append((first, bound, names))
        # Traces of unknown rank beside ones of known rank are there to refuse bad images
        # (ours are: exporter.spec.refuse_at_run_time); the rule bad_images_refused runs them.
        known = [trace for trace in traces if trace[0].shape.rank is not None]
        self.functions = known or traces
        refusing = len(traces) - len(self.functions)
        more = f", and {refusing} of unknown rank (for bad images)" if refusing else ""
        return PASS, f"{len(self.functions)} traced signatures{more}"

    @rule(
        "training_argument", "__call__ takes `training` as a named argument.", needs=("callable",)
    )
    def _training_argument(self):
        without = [names for _, _, names in self.functions if "training" not in names]
        if without:
            return FAIL, f"__call__ arguments are {without[0]}; `training` is missing"
        return PASS, "`training` is a named argument"

    @rule(
        "training_traced",
        "`training` is traced for both values, for every combination of the other arguments.",
        needs=("training_argument",),
    )
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

    @rule(
        "hparams",
        "Every other argument of __call__ (an hparam) is traced as a float scalar tensor and has a"
        " Python default.",
        needs=("training_argument",),
    )
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
            # tf-keras' model.save traces Keras' own `mask` argument this way.
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

    @rule("input_dtype", "The images input is float32.", needs=("callable",))
    def _input_dtype(self):
        bad = {s.dtype.name for s in self._input_specs() if s.dtype != spec.IMAGE_DTYPE}
        if bad:
            return FAIL, f"images traced as {', '.join(sorted(bad))}; expected float32"
        return PASS, "float32"

    @rule(
        "input_layout",
        "The images input is rank 4, channels last, with 3 channels (NHWC).",
        needs=("callable",),
    )
    def _input_layout(self):
        for s in self._input_specs():
            shape = s.shape.as_list() if s.shape.rank is not None else None
            if shape is None or len(shape) != 4:
                return FAIL, f"images traced with shape {s.shape}; expected rank 4 (NHWC)"
            if shape[-1] != spec.CHANNELS:
                nchw = " (looks like NCHW, channels first)" if shape[1] == spec.CHANNELS else ""
                return FAIL, f"images traced with shape {s.shape}{nchw}; expected [B, H, W, 3]"
        return PASS, "[batch, height, width, 3]"

    @rule(
        "bad_images_refused",
        "Anything else (NCHW, 1 or 4 channels, uint8, float64, rank 3) is refused with an error, "
        "never silently converted or misread (a warning where the error is not the contract's "
        "own, which says what was expected).",
        needs=("input_dtype", "input_layout"),
    )
    def _bad_images_refused(self):
        takes_training = all("training" in names for _, _, names in self.functions)
        call = shape_free_call(self.obj, False if takes_training else None)
        size = self.sizes[0]
        accepted, unexplained = [], []
        for name, images in _bad_images(size).items():
            try:
                call(tf.constant(images))
            except Exception as error:  # Refused: how clearly is the warning's business.
                if "Expected" not in str(error):
                    unexplained.append(name)
                continue
            accepted.append(name)
        if accepted:
            return FAIL, f"accepted instead of refused: {', '.join(accepted)}"
        if unexplained:
            return WARN, (
                f"refused, but not with a message that says what was expected: "
                f"{', '.join(unexplained)}"
            )
        return PASS, f"each of {len(_bad_images(size))} refused, saying what was expected"

    @rule(
        "input_batch", "The batch dimension of the images input is free.", needs=("input_layout",)
    )
    def _input_batch(self):
        fixed = [s.shape for s in self._input_specs() if s.shape[0] is not None]
        if fixed:
            return FAIL, f"images traced with a fixed batch size: {fixed[0]}"
        return PASS, "any batch size"

    @rule(
        "input_range",
        "Something between the images input and the first convolution or matmul rescales or "
        "normalizes the pixels, as RGB in [0, 1] needs (a warning: read from the graph).",
        needs=("callable",),
    )
    def _input_range(self):
        verdict = input_range.first_layer_input(self.proto)
        if verdict is None:
            return PASS, "no convolution or matmul reached from the images: nothing to judge"
        if verdict.rescaled:
            return PASS, "rescaled before the first convolution or matmul"
        mode = ((self.metadata or {}).get("preprocessing") or {}).get("mode")
        if self.ours and mode == "identity":
            return PASS, (
                "nothing rescales before the first layer, as the metadata declares: "
                "preprocessing 'identity' (the backbone takes [0, 1] as is)"
            )
        return WARN, (
            f"nothing rescales or normalizes the images before the first {verdict.first_layer_op} "
            f"({verdict.function}): the model may expect pre-normalized pixels (such as an "
            "ImageNet mean and standard deviation) rather than RGB in [0, 1]"
        )

    # -- outputs -------------------------------------------------------------------------

    @rule("output_dtype", "The output is float32.", needs=_CALLS)
    def _output_dtype(self):
        output = self._call(3, self.sizes[0])
        if output.dtype != tf.float32:
            return FAIL, f"output is {output.dtype.name}; expected float32"
        return PASS, "float32"

    @rule("output_shape", "The output is rank 2 and keeps the batch size.", needs=_CALLS)
    def _output_shape(self):
        shapes = {batch: self._call(batch, self.sizes[0]).shape for batch in (1, 3)}
        for batch, shape in shapes.items():
            if shape.rank != 2 or shape[0] != batch:
                return FAIL, f"output shape {shape} for a batch of {batch}; expected [{batch}, N]"
        return PASS, f"[batch, {shapes[3][1]}]"

    @rule(
        "size_independent",
        "The output width is the same at two input sizes inside the range.",
        needs=(*_CALLS, "output_shape"),
    )
    def _size_independent(self):
        if len(self.sizes) < 2:
            return PASS, f"fixed-size model ({self.sizes[0]}x{self.sizes[0]})"
        widths = {size: self._call(1, size).shape[-1] for size in self.sizes}
        if len(set(widths.values())) > 1:
            listed = ", ".join(f"{w} at {s}x{s}" for s, w in widths.items())
            return FAIL, f"output width depends on the input size: {listed}"
        return PASS, f"width {widths[self.sizes[0]]} at sizes {', '.join(map(str, self.sizes))}"

    @rule(
        "batch_independent",
        "In inference, an example's output does not depend on the rest of the batch.",
        needs=(*_CALLS, "output_shape"),
    )
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
        moved, rounding = numeric.gap(in_batch, alone), numeric.gap(nudged, alone)
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

    @rule(
        "deterministic",
        "Two inference calls on the same images give the same output.",
        needs=(*_CALLS, "output_shape"),
    )
    def _deterministic(self):
        first = self._call(3, self.sizes[0])
        again = self._invoke(_images(3, self.sizes[0]), training=False)
        if not close(again, first, rtol=_REPEAT_RTOL):
            return FAIL, "two inference calls on the same images differ"
        return PASS, "repeatable"

    # -- variables and losses ------------------------------------------------------------

    def _captured(self) -> list[tf.Variable]:
        """Every variable a traced ``__call__`` reads or writes (empty when it has none)."""
        call = self.obj.__call__ if callable(self.obj) else None
        concrete = getattr(call, "concrete_functions", None) or []
        seen = {}
        for function in concrete:
            for variable in function.variables:
                seen.setdefault(variable.ref(), variable)
        return list(seen.values())

    @rule(
        "variables",
        "`variables` and `trainable_variables` list what __call__ uses (omitted only when "
        "empty); the trainable ones are a subset.",
        needs=("loads",),
    )
    def _variables(self):
        # The Reusable SavedModel API lets a publisher omit a list that would be empty.
        captured, notes = self._captured(), []
        for name, needed in (
            ("variables", captured),
            ("trainable_variables", [v for v in captured if v.trainable]),
        ):
            if hasattr(self.obj, name):
                continue
            if needed:
                return FAIL, f"no `{name}` attribute, but __call__ uses {len(needed)} of them"
            notes.append(f"no `{name}` (omitted as empty: __call__ uses none)")
        variables = list(getattr(self.obj, "variables", []))
        trainable = list(getattr(self.obj, "trainable_variables", []))
        if not all(isinstance(v, tf.Variable) for v in variables + trainable):
            return (
                FAIL,
                "`variables` / `trainable_variables` hold something other than tf.Variables",
            )
        outside = {v.ref() for v in trainable} - {v.ref() for v in variables}
        if outside:
            return FAIL, f"{len(outside)} trainable variable(s) are missing from `variables`"
        return PASS, "; ".join([f"{len(variables)} variables, {len(trainable)} trainable", *notes])

    @rule(
        "trainable_flags",
        "Every variable in `trainable_variables` has trainable=True.",
        needs=("variables",),
    )
    def _trainable_flags(self):
        trainable = getattr(self.obj, "trainable_variables", [])
        frozen = [v.name for v in trainable if not v.trainable]
        if frozen:
            return FAIL, f"in trainable_variables with trainable=False: {', '.join(frozen[:3])}"
        return PASS, "all trainable=True"

    @rule(
        "regularization_losses",
        "`regularization_losses` is a list of zero-argument callables returning float scalars "
        "(omitted only when no object of the model holds one).",
        needs=("loads",),
    )
    def _regularization_losses(self):
        losses = getattr(self.obj, "regularization_losses", None)
        if losses is None:
            # Omitted, as the API allows for an empty list, unless an object of the model
            # (a tf-keras layer, say) holds loss functions the root does not list.
            held = _nested_regularization_losses(self.proto)
            if held:
                return FAIL, (
                    f"no `regularization_losses` attribute, but the model's objects hold {held} "
                    "regularization loss function(s) that consumers would never see"
                )
            return PASS, "no `regularization_losses` (omitted as empty: no object holds one)"
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

    @rule(
        "serving_default",
        "serving_default takes float32 images and agrees with __call__ (ours must have it; "
        "missing from anyone else's, a warning).",
        needs=(*_CALLS, "output_shape"),
    )
    def _serving_default(self):
        signature = self.obj.signatures.get("serving_default")
        if signature is None:
            if self.ours:
                return FAIL, "no serving_default signature (an export of ours always has one)"
            # The reusable SavedModel API asks for none; serving_default is TF Serving's.
            return WARN, (
                "no serving_default signature: TF Serving, LiteRT, ONNX and Keras' TFSMLayer "
                "need one; __call__ alone keeps the reusable SavedModel API"
            )
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

    @rule(
        "serving_uint8",
        "serving_uint8, where exported, takes uint8 images 0..255 and agrees with __call__ on the "
        "same pixels, with serving_default's one output name.",
        needs=(*_CALLS, "output_shape"),
    )
    def _serving_uint8(self):
        pixels = _pixels(3, self.sizes[0], seed=3)
        return self._extra_signature("serving_uint8", tf.uint8, tf.constant(pixels), pixels)

    @rule(
        "serving_bytes",
        "serving_bytes, where exported, takes encoded images as strings, makes grayscale and RGBA "
        "ones RGB, and agrees with __call__ on the same pixels, with serving_default's one output "
        "name.",
        needs=(*_CALLS, "output_shape"),
    )
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

    @rule(
        "labels",
        "A classifier's labels asset has one line per class.",
        needs=(*_CALLS, "output_shape"),
    )
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

    @rule(
        "metadata",
        "The model card and metadata are present and agree with the model.",
        needs=(*_CALLS, "output_shape", "hparams"),
    )
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

    @rule(
        "training_call",
        "__call__(images, training=True) runs and keeps the output shape.",
        needs=(*_CALLS, "training_traced", "output_dtype", "output_shape"),
    )
    def _training_call(self):
        # Training mode updates batch-norm statistics (and dropout seeds): put them back, so
        # checking leaves the model as it was. A forward pass does not change the weights,
        # so only the other variables are copied (a copy of the weights would be a third
        # one in memory during an export's verify). A weight is a variable both listed in
        # trainable_variables and flagged trainable. This rule also runs last for models
        # that hide their variables.
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


_REGULARIZER_LISTS = ("regularization_losses", "layer_regularization_losses")


def _nested_regularization_losses(proto: saved_model_pb2.SavedModel) -> int:
    """How many loss functions the object graph's nested regularization lists hold."""
    nodes = proto.meta_graphs[0].object_graph_def.nodes
    lists = {
        child.node_id
        for node in nodes
        for child in node.children
        if child.local_name in _REGULARIZER_LISTS and child.node_id < len(nodes)
    }
    # tf-keras lists a layer's losses on the layer and again on each model holding it.
    return len({child.node_id for i in lists for child in nodes[i].children})


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


# Each rule's one-line contract, in the order the rules run: --list_rules and the docs.
RULES = {declared.name: declared.contract for declared in _REGISTRY.values()}


def rules_table() -> str:
    """The rules as a Markdown list, as the docs show them."""
    return "\n".join(f"- `{name}`: {contract}" for name, contract in RULES.items())
