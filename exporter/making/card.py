"""The documentation that travels with an export: a model card and its metadata.

Both are written to ``assets.extra/`` (which TensorFlow copies with the SavedModel but never
loads), from one dictionary of facts, so they cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from exporter import spec
from exporter.checking import savedmodel
from exporter.checking.fingerprint import compute as content_fingerprint
from exporter.making import preprocessing
from exporter.making.hparams import HPARAMS
from exporter.making.precision import MIN_COSINE
from exporter.version import VERSION

FORMAT = spec.METADATA_FORMAT


def _tensorflow_minor() -> str:
    return ".".join(tf.__version__.split(".")[:2])


# Long: one literal, the metadata schema, kept in one piece so it reads as the file does.
def metadata(
    module,
    signatures: list[str],
    *,
    serving_size=None,
    compute=None,
    fingerprint=None,
    refusal_bytes=None,
) -> dict:
    """Collect every fact the contract asks the documentation to state (docs/contract.md).

    ``serving_size`` is the size ``serving_bytes`` resizes to; ``compute`` the measured
    ``exporter.making.precision.Deviation`` of a module that computes in a lower precision;
    ``fingerprint`` the export's content fingerprint (``exporter.checking.fingerprint.compute``);
    ``refusal_bytes`` what the traces that only refuse bad images add to ``saved_model.pb``.
    """
    classifier = module.task == "image_classification"
    labels = getattr(module, "labels", None)
    return {
        "format": FORMAT,
        "task": module.task,
        "backbone": {
            "name": module.backbone_name,
            "source": module.source,
            "weights": module.weights,
            "keras": model_origin(module),
        },
        "num_features": module.num_features,
        "num_classes": module.num_classes if classifier else None,
        "classes": {
            "activation": module.activation,
            "labels_file": spec.LABELS_ASSET if labels else None,
            "definition": (
                f"index i is line i+1 of {spec.LABELS_ASSET}" if labels else "index i is class i"
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
            # After tf.saved_model.load, too: see spec.refuse_at_run_time.
            "refused_with_our_message": {
                "call": ["NCHW", "1 or 4 channels", "rank 3", "uint8", "float64"],
                "serving_default": ["NCHW", "1 or 4 channels", "rank 3"],
                "saved_model_pb_bytes": refusal_bytes,
            },
        },
        "preprocessing": {
            "mode": preprocessing.name(module.preprocessing),
            "description": preprocessing.describe(module.preprocessing),
            **(
                module.preprocessing.facts()
                if isinstance(module.preprocessing, preprocessing.Affine)
                else {}
            ),
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
        "serving": serving_facts(
            module.output_name, signatures, serving_size or module.native_size
        ),
        "compute": compute_facts(compute),
        "fingerprint": fingerprint,
    }


def model_origin(module) -> dict:
    """The Keras backend and version the model came from: an in-memory model's own process
    (``exporter.making.in_memory``), else this one, which built it."""
    origin = getattr(module, "keras_origin", None)
    return dict(origin or {"backend": keras.backend.backend(), "version": keras.__version__})


def compute_facts(compute) -> dict:
    """The compute dtype and, for a lower precision, its measured deviation from float32."""
    if compute is None:
        return {"dtype": "float32", "weights": "float32", "io": "float32"}
    return {
        "dtype": compute.compute_dtype,
        "weights": "float32",
        "io": "float32",
        "deviation_from_float32": {
            "max_relative": round(compute.max_relative, 6),
            "min_cosine": round(compute.min_cosine, 6),
            "bound_min_cosine": MIN_COSINE[compute.compute_dtype],
            "measured_on": "the export's verify images (3 random images)",
        },
    }


def serving_facts(output: str, signatures: list[str], serving_size: int) -> dict:
    """How to call each serving signature: its input, an example REST body and CLI line."""
    facts = {}
    for kind, (name, argument) in spec.SERVING_SIGNATURES.items():
        if name not in signatures:
            continue
        if kind == "image_bytes":
            about = {
                "input": {"name": argument, "dtype": "string", "shape": [None]},
                "size": serving_size,
                "decoding": f"each element an encoded {spec.IMAGE_FORMATS} image; grayscale, "
                "palette and RGBA become RGB; resized bilinearly to "
                f"{serving_size}x{serving_size}",
                "rest_body": {
                    "signature_name": name,
                    "instances": [{argument: {"b64": "<base64 of the JPEG file>"}}],
                },
                "saved_model_cli": (
                    "python -c \"import numpy as np; np.save('bytes.npy', "
                    "np.array([open('cat.jpg', 'rb').read()]))\" && saved_model_cli run "
                    f"--dir PATH --tag_set serve --signature_def {name} "
                    f"--inputs {argument}=bytes.npy"
                ),
            }
        else:
            values = "0..255" if kind == "uint8" else "[0, 1]"
            zeros = f"np.zeros((1, {serving_size}, {serving_size}, 3), np.{kind})"
            about = {
                "input": {
                    "name": argument,
                    "dtype": kind,
                    "shape": [None, None, None, 3],
                    "values": f"RGB in {values}",
                },
                "rest_body": {
                    "signature_name": name,
                    "instances": [{argument: f"<height x width x 3 nested list, {values}>"}],
                },
                "saved_model_cli": (
                    f"saved_model_cli run --dir PATH --tag_set serve --signature_def {name} "
                    f"--input_exprs '{argument}={zeros}'"
                ),
            }
        facts[name] = {**about, "output": output}
    return facts


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
        f"- **Backbone**: {facts['backbone']['name']}, from {facts['backbone']['source']}"
        f"{_origin_words(facts['backbone'].get('keras'))}.",
        *_weights_lines(facts["backbone"].get("weights")),
        f"- **Input**: float32 [batch, height, width, 3], RGB in [0, 1]; height and width {sizes}.",
        f"- **Preprocessing inside**: {facts['preprocessing']['description']} "
        f"(`{facts['preprocessing']['mode']}`).",
        *_refusal_lines(size.get("refused_with_our_message")),
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
        *_serving_lines(facts["serving"]),
        *_compute_lines(facts["compute"]),
        *_fingerprint_lines(facts.get("fingerprint")),
        f"- **TensorFlow**: exported with {facts['tensorflow']['exported_with']}; needs "
        f"{facts['tensorflow']['minimum']} or newer (the oldest version tested).",
        f"- **Made by**: exporter {facts['exporter_version']} with Keras {facts['keras_version']}.",
        "",
    ]
    return "\n".join(lines)


def _origin_words(origin: dict | None) -> str:
    if not origin:
        return ""
    return f"; the model came from Keras {origin['version']} on the {origin['backend']} backend"


def _serving_lines(serving: dict) -> list[str]:
    lines = []
    for name, about in serving.items():
        argument = about["input"]
        lines += [
            f"  - `{name}`: input `{argument['name']}`, {argument['dtype']} "
            f"{argument['shape']}" + (f"; {about['decoding']}" if "decoding" in about else "")
            + ". TF Serving REST (`POST /v1/models/MODEL:predict`) body:",
            f"    `{json.dumps(about['rest_body'])}`; with saved_model_cli:",
            f"    `{about['saved_model_cli']}`",
        ]  # fmt: skip
    return lines


def _fingerprint_lines(fingerprint: dict | None) -> list[str]:
    if not fingerprint:
        return []
    return [
        f"- **Content fingerprint**: {fingerprint['algorithm']} `{fingerprint['digest']}` over "
        f"{spec.SAVED_MODEL_FILE} and variables/ (per file in metadata.json); "
        "`python -m exporter.check` verifies it."
    ]


def _compute_lines(compute: dict) -> list[str]:
    if compute["dtype"] == "float32":
        return []
    measured = compute["deviation_from_float32"]
    return [
        f"- **Compute dtype**: {compute['dtype']} (Keras mixed policy); weights, input and "
        f"output float32. Measured against float32 on the verify images: max difference "
        f"{measured['max_relative']:.2%} of the output scale, least cosine similarity "
        f"{measured['min_cosine']:.5f} (the export fails below {measured['bound_min_cosine']})."
    ]


def _refusal_lines(refused: dict | None) -> list[str]:
    if not refused:
        return []
    cost = refused.get("saved_model_pb_bytes")
    return [
        "- **Bad input**: NCHW, 1 or 4 channels, rank 3, uint8 and float64 are refused with a "
        "message naming what was expected and received, after `tf.saved_model.load` too "
        "(`serving_default` checks the layout; TensorFlow itself refuses another dtype "
        "there)" + (f". The traces that refuse them cost {cost:,} bytes." if cost else ".")
    ]


def refusal_bytes(module, directory: Path) -> int | None:
    """What the traces that only refuse bad images (``module.refusal_functions()``) take up
    in ``directory``'s ``saved_model.pb``; None if it has none."""
    names = set(module.refusal_functions())
    if not names:
        return None
    proto = savedmodel.read(directory)
    library = proto.meta_graphs[0].graph_def.library.function
    return sum(f.ByteSize() for f in library if f.signature.name in names)


def write(
    module, directory: Path, signatures: list[str], *, serving_size=None, compute=None
) -> dict:
    """Write the card and metadata of ``module`` into the SavedModel ``directory``.

    Call it once the SavedModel itself is written: the metadata records its content
    fingerprint.
    """
    facts = metadata(
        module,
        signatures,
        serving_size=serving_size,
        compute=compute,
        fingerprint=content_fingerprint(directory),
        refusal_bytes=refusal_bytes(module, directory),
    )
    facts_file = directory / spec.METADATA_FILE
    facts_file.parent.mkdir(exist_ok=True)
    facts_file.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    (directory / spec.CARD_FILE).write_text(card(facts), encoding="utf-8")
    return facts


RANDOM_WEIGHTS = (
    "random initialization: an export to try the pipeline with. Its outputs carry no "
    "meaning (a deep backbone's features are close to zero, and scores near uniform)."
)


def _weights_lines(weights: str | None) -> list[str]:
    if weights is None:
        return []
    described = {"random": RANDOM_WEIGHTS, "imagenet": "ImageNet (Keras' own)."}
    return [f"- **Weights**: {described.get(weights, weights + '.')}"]
