"""The documentation that travels with an export: a model card and its metadata.

Both are written to ``assets.extra/`` (which TensorFlow copies with the SavedModel but never
loads), from one dictionary of facts, so they cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from exporter import preprocessing, spec
from exporter.module import HPARAMS
from exporter.version import VERSION

METADATA_FILE = "assets.extra/metadata.json"
CARD_FILE = "assets.extra/model_card.md"
FORMAT = "exporter-metadata/1"
LABELS_ASSET = "assets/labels.txt"


def _tensorflow_minor() -> str:
    return ".".join(tf.__version__.split(".")[:2])


def metadata(module, signatures: list[str]) -> dict:
    """Collect every fact SPEC.md asks the documentation to state."""
    classifier = module.task == "image_classification"
    labels = getattr(module, "labels", None)
    return {
        "format": FORMAT,
        "task": module.task,
        "backbone": {"name": module.backbone_name, "source": module.source},
        "num_features": module.num_features,
        "num_classes": module.num_classes if classifier else None,
        "classes": {
            "activation": module.activation,
            "labels_file": LABELS_ASSET if labels else None,
            "definition": (
                f"index i is line i+1 of {LABELS_ASSET}" if labels else "index i is class i"
            ),
        }
        if classifier
        else None,
        "input": {
            "dtype": spec.IMAGE_DTYPE.name,
            "shape": list(spec.IMAGE_SPEC.shape.as_list()),
            "layout": "NHWC",
            "color": "RGB",
            "range": [0.0, 1.0],
            "min_size": module.min_size,
            "max_size": module.fixed_size,
            "native_size": module.native_size,
            "fixed_size": module.fixed_size is not None,
        },
        "preprocessing": {
            "mode": module.preprocessing,
            "description": preprocessing.DESCRIPTIONS[module.preprocessing],
        },
        "pooling": module.pooling,
        "bottleneck": module.bottleneck,
        "output": {"name": module.output_name, "dtype": "float32"},
        "fine_tuning": {
            "fine_tunable": True,
            "notes": (
                "Load with hub.KerasLayer(path, trainable=True) and call with training=True "
                "while fitting: batch norm then uses batch statistics and updates its moving "
                "averages, and dropout is active. Use a small learning rate. Feature vectors "
                "apply no dropout to their output."
            ),
        },
        "hparams": {
            name: {"default": default, "description": HPARAMS[name]}
            for name, default in module.hparams.items()
        },
        "tensorflow": {"exported_with": tf.__version__, "minimum": _tensorflow_minor()},
        "keras_version": keras.__version__,
        "exporter_version": VERSION,
        "signatures": sorted(signatures),
    }


def card(facts: dict) -> str:
    """Render ``facts`` as a Markdown model card."""
    task = facts["task"].replace("_", " ")
    size = facts["input"]
    if size["fixed_size"]:
        sizes = f"exactly {size['native_size']}x{size['native_size']}"
    else:
        sizes = f"at least {size['min_size']}x{size['min_size']}; native {size['native_size']}"
    lines = [
        f"# {facts['backbone']['name']}: {task}",
        "",
        f"- **Task**: {task}.",
        f"- **Backbone**: {facts['backbone']['name']}, from {facts['backbone']['source']}.",
        f"- **Input**: float32 [batch, height, width, 3], RGB in [0, 1]; height and width {sizes}.",
        f"- **Preprocessing inside**: {facts['preprocessing']['description']} "
        f"(`{facts['preprocessing']['mode']}`).",
    ]
    if facts["classes"]:
        classes = facts["classes"]
        lines.append(
            f"- **Output**: float32 logits [batch, {facts['num_classes']}]; apply "
            f"{classes['activation']}. Class indices: {classes['definition']}."
        )
    else:
        lines.append(
            f"- **Output**: float32 [batch, {facts['num_features']}], {facts['bottleneck']}; "
            "no dropout is applied."
        )
    hparams = facts["hparams"]
    lines += [
        f"- **Fine-tuning**: {facts['fine_tuning']['notes']}",
        "- **Hyperparameters** (keyword arguments of `__call__`, float scalars; for example "
        "`hub.KerasLayer(path, trainable=True, arguments=dict(name=value))`):"
        + (" none." if not hparams else ""),
        *(
            f"  - `{name}` (default {about['default']}): {about['description']}."
            for name, about in hparams.items()
        ),
        f"- **Signatures**: {', '.join(facts['signatures'])} (inference only, output "
        f"`{facts['output']['name']}`).",
        f"- **TensorFlow**: exported with {facts['tensorflow']['exported_with']}; needs "
        f"{facts['tensorflow']['minimum']} or newer (the oldest version tested).",
        f"- **Made by**: exporter {facts['exporter_version']} with Keras {facts['keras_version']}.",
        "",
    ]
    return "\n".join(lines)


def write(module, directory: Path, signatures: list[str]) -> dict:
    """Write the card and metadata of ``module`` into the SavedModel ``directory``."""
    facts = metadata(module, signatures)
    (directory / METADATA_FILE).parent.mkdir(exist_ok=True)
    (directory / METADATA_FILE).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    (directory / CARD_FILE).write_text(card(facts), encoding="utf-8")
    return facts
