"""Export Keras image backbones as reusable SavedModels with TensorFlow Hub's image API.

``import exporter`` is cheap: TensorFlow loads when a name below is first used (PEP 562), so
a command parses its flags before anything slow is imported.

Example:
    >>> import exporter
    >>> exporter.export_feature_vector("resnet50", "/tmp/resnet50", weights="none")
"""

import importlib

from exporter import console as _console
from exporter import lean_import as _lean_import

_console.export_cli_environment()  # All three before anything imports TensorFlow.
_console.quiet_native_logs()
if _console.running_cli():
    _lean_import.install()

from exporter.console import quiet_tensorflow_logs  # noqa: E402
from exporter.errors import ArgumentError, Error, ExportError, UnsafeOpsError  # noqa: E402
from exporter.progress import enable_stage_lines  # noqa: E402

# Each public name that needs TensorFlow: (module, attribute), imported on first use.
_LAZY = {
    "Backbone": ("exporter.making.registry", "Backbone"),
    "ClassifierModule": ("exporter.making.module", "ClassifierModule"),
    "FeatureVectorModule": ("exporter.making.module", "FeatureVectorModule"),
    "HeadDropout": ("exporter.making.head", "HeadDropout"),
    "ImageModule": ("exporter.making.module", "ImageModule"),
    "InvalidImagesError": ("exporter.spec", "InvalidImagesError"),
    "KerasLayer": ("exporter.use.keras_layer", "KerasLayer"),
    "build_classifier": ("exporter.making.build", "build_classifier"),
    "build_feature_vector": ("exporter.making.build", "build_feature_vector"),
    "export_classifier": ("exporter.making.export", "export_classifier"),
    "export_feature_vector": ("exporter.making.export", "export_feature_vector"),
    "get_backbone": ("exporter.making.registry", "get"),
    "imagenet_labels": ("exporter.making.build", "imagenet_labels"),
    "list_backbones": ("exporter.making.registry", "names"),
    "load_backbone": ("exporter.making.build", "load_backbone"),
    "read_labels": ("exporter.making.export", "read_labels"),
    "save": ("exporter.making.save", "save"),
}


# The subpackages and modules that need TensorFlow, as attributes (``exporter.making...``).
_SUBMODULES = ("checking", "making", "spec", "use")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"exporter.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module 'exporter' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # Looked up once.
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ArgumentError",
    "Backbone",
    "ClassifierModule",
    "Error",
    "ExportError",
    "FeatureVectorModule",
    "HeadDropout",
    "ImageModule",
    "InvalidImagesError",
    "KerasLayer",
    "build_classifier",
    "build_feature_vector",
    "enable_stage_lines",
    "export_classifier",
    "export_feature_vector",
    "get_backbone",
    "imagenet_labels",
    "list_backbones",
    "load_backbone",
    "quiet_tensorflow_logs",
    "read_labels",
    "save",
    "UnsafeOpsError",
]


# A process that has imported Keras already has TensorFlow (or another backend) loaded:
# register exporter.KerasLayer with Keras now, so that a .keras file holding one loads after
# a plain ``import exporter``. (Imported before Keras, touch ``exporter.KerasLayer`` first.)
if "keras" in __import__("sys").modules:
    importlib.import_module("exporter.use.keras_layer")
