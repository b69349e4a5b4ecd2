"""One error family: every exception class the package defines derives from exporter.Error."""

import ast
import importlib
from pathlib import Path

import exporter

PACKAGE = Path(exporter.__file__).parent


def _exception_classes():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                yield module.removesuffix(".__init__"), node.name


def test_every_error_class_derives_from_exporter_error():
    found = list(_exception_classes())
    assert len(found) >= 9, found  # The nine of before, and the new ones.
    outside = []
    for module, name in found:
        cls = getattr(importlib.import_module(module), name)
        if not issubclass(cls, exporter.Error):
            outside.append(f"{module}.{name}")
    assert not outside, f"not under exporter.Error: {outside}"


def test_one_unsafe_ops_error():
    from exporter.use import beam_handler, keras_layer

    assert keras_layer.UnsafeSavedModelError is beam_handler.UnsafeModelError
    assert beam_handler.UnsafeModelError is exporter.UnsafeOpsError
    assert issubclass(exporter.UnsafeOpsError, ValueError)  # As both were before.
