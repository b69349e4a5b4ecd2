"""Export a backbone as an image classification SavedModel (logits).

Usage:
    python -m exporter.classification --backbone=resnet50|PRESET|MODEL.keras --out=DIR
        [--num_classes=N] [--labels=FILE] [--weights=imagenet|none|PATH]
        [--weight_decay=X] [--dropout_rate=R] [--overwrite]
        [--preprocessing=MODE|SCALE,OFFSET] [--native_size=N] [--min_size=N]
        [--serving_inputs=float32,uint8,image_bytes] [--serving_size=N]
        [--compute_dtype=float32|bfloat16|float16]

Exit status: 0 exported, 1 the export failed, 2 a usage error, 130 interrupted.
"""

from absl import flags

from exporter import cli

flags.adopt_module_key_flags(cli)  # --help lists the shared flags as this command's own.

_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes",
    None,
    "Width of a new Dense head on the pooled features. Unset: keep the backbone's own "
    "classifier (ImageNet's, or a keras-hub task preset's), with any softmax removed.",
    lower_bound=1,
)
_DROPOUT_RATE = flags.DEFINE_float(
    "dropout_rate",
    None,
    "Default of the dropout_rate hparam: the dropout right before the logits layer, active "
    "only with training=True; consumers can override it per call. Unset: the backbone's own "
    "top dropout, or 0.2.",
    lower_bound=0.0,
    upper_bound=0.999,
)
_LABELS = flags.DEFINE_string(
    "labels", None, "Text file with one class name per line, shipped as assets/labels.txt."
)


def main(argv: list[str]) -> None:
    cli.no_positional_arguments(argv)
    # After the flags are parsed and checked: the library, and with it TensorFlow.
    from exporter.making.export import export_classifier

    cli.run(
        lambda: export_classifier(
            cli.BACKBONE.value,
            cli.OUT.value,
            weights=cli.WEIGHTS.value,
            num_classes=_NUM_CLASSES.value,
            labels=_LABELS.value,
            weight_decay=cli.WEIGHT_DECAY.value,
            dropout_rate=_DROPOUT_RATE.value,
            overwrite=cli.OVERWRITE.value,
            serving_inputs=cli.SERVING_INPUTS.value,
            serving_size=cli.SERVING_SIZE.value,
            compute_dtype=cli.COMPUTE_DTYPE.value,
            **cli.source_options(),
        )
    )


if __name__ == "__main__":
    cli.start(main)
