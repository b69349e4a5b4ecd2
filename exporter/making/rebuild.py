"""Rebuild an in-memory model's private copy under TensorFlow and export it.

``exporter.making.in_memory`` saves a model of a JAX or PyTorch process as a ``.keras`` file
(or a keras-hub preset folder) and runs ``python -m exporter.making.rebuild REQUEST.json``
with ``KERAS_BACKEND=tensorflow``: this builds the module from the copy exactly as the
file or preset would export, names it after the in-memory model, and saves it. The result
(``{"out": ...}`` or ``{"error": ...}``) goes to the file the request names.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

from exporter.console import native_logs_filtered
from exporter.errors import ExportError
from exporter.making import external
from exporter.making.preprocessing import parse_mode
from exporter.making.save import save_owned


def run(request: dict) -> Path:
    """Build ``request["task"]``'s module from ``request["path"]`` and save it at its ``out``."""
    for name in request["modules"]:  # Where its registered custom classes are defined.
        importlib.import_module(name)
    arguments = dict(request["arguments"])
    if arguments.get("preprocessing") is not None:
        arguments["preprocessing"] = parse_mode(arguments["preprocessing"])
    module = external.build(request["task"], request["path"], **arguments)
    facts = request["facts"]
    family = module.source.rsplit(" (", 1)[-1] if module.source.endswith(")") else ""
    hub = external.kind(request["path"]) == external.PRESET
    module.backbone_name = facts["name"]
    module.source = f"{facts['source']} ({family}" if hub else facts["source"]
    if module.weights != "random":
        module.weights = external.OWN_WEIGHTS
    module.keras_origin = request["origin"]
    return save_owned([module], request["out"], **request["saving"])


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    logging.getLogger("exporter").setLevel(request.get("log_level", logging.INFO))
    sys.path[:0] = [p for p in request.get("sys_path", []) if p not in sys.path]
    try:
        with native_logs_filtered:
            result = {"out": str(run(request))}
    except ExportError as error:
        result = {"error": str(error)}
    Path(request["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0 if "out" in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
