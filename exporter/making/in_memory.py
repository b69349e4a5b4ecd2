"""In-memory models as backbones, on any Keras 3 backend.

``export_feature_vector(model, ...)`` and ``export_classifier(model, ...)`` take a
``keras.Model`` (functional, sequential, or subclassed and registered), a keras-hub
``ImageClassifier`` or a keras-hub ``Backbone``. The export is always a TensorFlow graph:

- On the TensorFlow backend, a plain Keras model is wrapped as it is, in this process.
- On JAX or PyTorch, its variables are not ``tf.Variable``s, so it is rebuilt under
  TensorFlow from its config and weights: saved to a private temporary ``.keras`` file
  (a keras-hub model: a ``save_to_preset`` folder), then exported by a child process with
  ``KERAS_BACKEND=tensorflow`` (``exporter.making.rebuild``), exactly as that file or
  preset folder exports. The user's model and process are left as they were.
- A keras-hub model always goes through a preset folder (in this process on TensorFlow),
  so that it exports exactly as the same object saved with ``save_to_preset`` does.

What cannot be rebuilt from a config (a ``Lambda``, a custom class that is not registered
or not importable by name, a config that is not JSON) is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import keras

from exporter.errors import ExportError, first_line
from exporter.making import external, presets, rebuild
from exporter.making.save import save_owned
from exporter.progress import stage

PLAIN, HUB_TASK, HUB_BACKBONE = "keras_model", "keras_hub_task", "keras_hub_backbone"
TENSORFLOW = "tensorflow"
WORKER = "exporter.making.rebuild"
# Packages whose classes a TensorFlow process rebuilds by their registered names.
_BUILT_IN = ("keras.", "keras_hub.", "exporter.")


def kind(backbone) -> str | None:
    """``PLAIN``, ``HUB_TASK`` or ``HUB_BACKBONE`` for an in-memory model, else None."""
    if not isinstance(backbone, keras.Model):
        return None
    names = {cls.__module__ + "." + cls.__name__ for cls in type(backbone).__mro__}
    if "keras_hub.src.models.image_classifier.ImageClassifier" in names:
        return HUB_TASK
    if "keras_hub.src.models.backbone.Backbone" in names:
        return HUB_BACKBONE
    if any(name.startswith("keras_hub.src.models.task.") for name in names):
        raise ExportError(
            f"Expected a keras-hub ImageClassifier or Backbone. Received: a keras-hub "
            f"{type(backbone).__name__}, which is not an image classifier; pass its backbone."
        )
    return PLAIN


def origin() -> dict:
    """The backend and Keras version of this process: where an in-memory model came from."""
    return {"backend": keras.backend.backend(), "version": keras.__version__}


def describe(model) -> str:
    """The model in the card's words: ``in-memory Keras model 'name' (Functional)``."""
    what = "Keras " if kind(model) == PLAIN else f"keras-hub {presets.version()} "
    return f"in-memory {what}model {model.name!r} ({type(model).__name__})"


# -- what can cross to a TensorFlow process ---------------------------------------------------


def check_rebuildable(model: keras.Model) -> list[str]:
    """The modules a TensorFlow process must import to rebuild ``model`` from its config.

    Raises:
        ExportError: Naming the first layer that cannot be rebuilt, and the way out.
    """
    modules = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        module = _layer_module(model, layer)
        if module is not None:
            modules.add(module)
    try:
        json.dumps(keras.saving.serialize_keras_object(model))
    except Exception as error:
        raise ExportError(
            _refusal(model, f"its config cannot be saved as JSON ({first_line(error)})")
        ) from None
    return sorted(modules)


def _layer_module(model, layer) -> str | None:
    """The module that defines ``layer``'s class, if one must be imported; or an ExportError."""
    cls = type(layer)
    where = f"layer {layer.name!r} ({cls.__name__})"
    if isinstance(layer, keras.layers.Lambda):
        raise ExportError(
            _refusal(model, f"{where} is a Lambda: its Python function cannot be rebuilt; "
                     "write it as a Layer subclass registered with "
                     "@keras.saving.register_keras_serializable()")
        )  # fmt: skip
    if cls.__module__.startswith(_BUILT_IN):
        return None
    name = keras.saving.get_registered_name(cls)
    if keras.saving.get_registered_object(name) is not cls:
        raise ExportError(
            _refusal(model, f"{where} is not registered: decorate {cls.__name__} with "
                     "@keras.saving.register_keras_serializable()")
        )  # fmt: skip
    module = sys.modules.get(cls.__module__)
    if cls.__module__ == "__main__" or getattr(module, "__spec__", None) is None:
        raise ExportError(
            _refusal(model, f"{where} is defined in {cls.__module__}, which another process "
                     f"cannot import: move {cls.__name__} into a module of its own")
        )  # fmt: skip
    return cls.__module__


def _refusal(model, why: str) -> str:
    return (
        f"Cannot rebuild {describe(model)} under TensorFlow from the "
        f"{keras.backend.backend()} backend: {why}; or export it from a TensorFlow-backend "
        "process (KERAS_BACKEND=tensorflow), where it is exported as it is. Nothing was "
        "written."
    )


# -- a private copy on disk ------------------------------------------------------------------


def _private_copy(source: str, backbone, folder: Path, preprocessing) -> Path:
    """Save ``backbone`` into ``folder``: a ``.keras`` file, or a keras-hub preset folder
    (with ``preprocessing`` beside a backbone when it is a keras-hub ImageConverter)."""
    with stage(f"save {describe(backbone)} to a private copy"):
        plain = source == PLAIN
        path = folder / (f"model{external.KERAS_SUFFIX}" if plain else "preset")
        try:
            if plain:
                backbone.save(path)
            else:
                backbone.save_to_preset(str(path))
            if _is_converter(preprocessing):
                preprocessing.save_to_preset(str(path))
        except Exception as error:
            raise ExportError(
                f"Could not save {describe(backbone)} to rebuild it under TensorFlow: "
                f"{first_line(error)}. Nothing was written."
            ) from error
        return path


def _is_converter(value) -> bool:
    return any(cls.__name__ == "ImageConverter" for cls in type(value).__mro__)


def _plain_mode(preprocessing):
    """``preprocessing`` as the child takes it: a mode name, ``SCALE,OFFSET``, or None (a
    converter is saved beside the preset)."""
    if preprocessing is None or _is_converter(preprocessing):
        return None
    if isinstance(preprocessing, str):
        return preprocessing
    scale = ":".join(repr(v) for v in preprocessing.scale)
    offset = ":".join(repr(v) for v in preprocessing.offset)
    return f"{scale},{offset}"


# -- the export --------------------------------------------------------------------------------


def export(task: str, backbone, out: Path, arguments: dict, saving: dict) -> Path:
    """Export the in-memory ``backbone`` as ``task`` (``feature_vector`` or ``classifier``).

    ``arguments`` are the builder's (``weights``, ``preprocessing``, ...), ``saving``
    ``save_owned``'s; both already checked by ``export_*``.
    """
    source = kind(backbone)
    preprocessing = arguments.get("preprocessing")
    if _is_converter(preprocessing) and source != HUB_BACKBONE:
        raise ExportError(
            "A keras-hub ImageConverter as preprocessing is for a keras-hub Backbone; "
            f"received it with {describe(backbone)}."
        )
    external.check_options(
        external.KERAS_FILE, preprocessing=None if _is_converter(preprocessing) else preprocessing,
        native_size=arguments.get("native_size"), min_size=arguments.get("min_size"),
        compute_dtype=arguments.get("compute_dtype", "float32"),
    )  # fmt: skip
    backend = keras.backend.backend()
    if source == PLAIN:
        _check_plain(backbone, arguments)
        if backend == TENSORFLOW:
            return _export_here(task, backbone, out, arguments, saving)
    modules = check_rebuildable(backbone)
    with tempfile.TemporaryDirectory(prefix="exporter-rebuild-") as scratch:
        path = _private_copy(source, backbone, Path(scratch), preprocessing)
        request = dict(
            task=task, path=str(path), out=str(out), saving=saving,
            arguments={**arguments, "preprocessing": _plain_mode(preprocessing)},
            facts=dict(name=backbone.name, source=describe(backbone)),
            origin=origin(), modules=modules,
        )  # fmt: skip
        if backend == TENSORFLOW:  # A keras-hub model: its preset folder, in this process.
            return rebuild.run(request)
        return _run_child(request, Path(scratch))


def _check_plain(model, arguments: dict) -> None:
    """Refuse what a ``.keras`` file's flags would refuse, before anything is saved."""
    weights = arguments.get("weights")
    if weights is not None and str(weights).lower() not in ("imagenet", "file"):
        raise ExportError(
            "An in-memory model carries its own weights: leave weights= at its default. "
            f"Received: {weights!r} for {describe(model)}."
        )
    if "num_classes" in arguments and arguments["num_classes"] is None:
        raise ExportError(
            f"An in-memory Keras model is taken as a backbone: pass num_classes=N for a new "
            f"head on its output. Received: {describe(model)}."
        )
    external.model_facts(
        model, external.IN_MEMORY, describe(model), arguments.get("preprocessing"),
        arguments.get("native_size"), arguments.get("min_size"), arguments.get("pooling"),
    )  # fmt: skip


def _export_here(task: str, model, out: Path, arguments: dict, saving: dict) -> Path:
    """On TensorFlow: wrap ``model`` as it is (its weight decay undone afterwards)."""
    kept = {id(v): getattr(v, "regularizer", None) for v in model.trainable_variables}
    try:
        module = external.model_module(task, model, describe(model), **arguments)
        module.keras_origin = origin()
        return save_owned([module], out, release=False, **saving)
    finally:
        for variable in model.trainable_variables:
            if hasattr(variable, "regularizer"):
                variable.regularizer = kept.get(id(variable))


def _run_child(request: dict, scratch: Path) -> Path:
    """Run ``exporter.making.rebuild`` on ``request`` under TensorFlow; its result or error."""
    request_file, result_file = scratch / "request.json", scratch / "result.json"
    request["result"] = str(result_file)
    request["log_level"] = logging.getLogger("exporter").getEffectiveLevel()
    request_file.write_text(json.dumps(request), encoding="utf-8")
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    env = {**os.environ, "KERAS_BACKEND": TENSORFLOW, "PYTHONPATH": os.pathsep.join(paths)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # As in our CLIs; a level the user set is kept.
    with stage(f"rebuild under TensorFlow ({keras.backend.backend()} -> tensorflow)"):
        child = subprocess.Popen([sys.executable, "-m", WORKER, str(request_file)], env=env)
        try:
            code = child.wait()
        except BaseException:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=30)
            raise
    try:
        result = json.loads(result_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExportError(
            f"The TensorFlow process that rebuilds the model ended with exit status {code} "
            "without a result (its error is above). Nothing was written."
        ) from None
    if "error" in result:
        raise ExportError(result["error"])
    return Path(result["out"])
