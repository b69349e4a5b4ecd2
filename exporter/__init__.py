"""Export Keras image backbones as reusable SavedModels with TensorFlow Hub's image API.

Example:
    >>> import exporter
    >>> exporter.export_feature_vector("resnet50", "/tmp/resnet50", weights="none")
"""

from exporter import console as _console

_console.export_cli_environment()  # Both before anything imports TensorFlow.
_console.quiet_native_logs()

from exporter.console import quiet_tensorflow_logs
from exporter.errors import Error, ExportError, UnsafeOpsError
from exporter.making import backbones as _backbones
from exporter.making.build import (
    build_classifier,
    build_feature_vector,
    imagenet_labels,
    load_backbone,
)
from exporter.making.export import export_classifier, export_feature_vector, read_labels
from exporter.making.head import HeadDropout
from exporter.making.module import ClassifierModule, FeatureVectorModule, ImageModule
from exporter.making.registry import Backbone
from exporter.making.registry import get as get_backbone
from exporter.making.registry import names as list_backbones
from exporter.making.save import save
from exporter.spec import InvalidImagesError
from exporter.use.keras_layer import KerasLayer

_backbones.register_all()

__all__ = [
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
