"""Export a backbone as an image feature vector SavedModel.

Usage:
    python -m exporter.feature_vector --backbone=resnet50|PRESET|MODEL.keras --out=DIR
        [--weights=imagenet|none|PATH] [--pooling=avg|max|token|gap] [--weight_decay=X]
        [--overwrite] [--preprocessing=MODE|SCALE,OFFSET] [--native_size=N] [--min_size=N]
        [--serving_inputs=float32,uint8,image_bytes] [--serving_size=N]
        [--compute_dtype=float32|bfloat16|float16]

Exit status: 0 exported, 1 the export failed, 2 a usage error, 130 interrupted.
"""

from absl import flags

from exporter import choices, cli

flags.adopt_module_key_flags(cli)  # --help lists the shared flags as this command's own.

_POOLING = flags.DEFINE_enum(
    "pooling", None, list(choices.POOLINGS), "Global pooling of the last feature map "
    "(avg, max); for a keras-hub token model (ViT, DeiT) token (its class token) or gap (the "
    "mean of its tokens). Which of them a backbone takes is checked before anything slow "
    "runs. Default: avg, or a keras-hub preset's classifier's own.",
)  # fmt: skip


def main(argv: list[str]) -> None:
    cli.no_positional_arguments(argv)
    # After the flags are parsed and checked: the library, and with it TensorFlow.
    from exporter.making.export import export_feature_vector

    cli.run(
        lambda: export_feature_vector(
            cli.BACKBONE.value,
            cli.OUT.value,
            weights=cli.WEIGHTS.value,
            pooling=_POOLING.value,
            weight_decay=cli.WEIGHT_DECAY.value,
            overwrite=cli.OVERWRITE.value,
            serving_inputs=cli.SERVING_INPUTS.value,
            serving_size=cli.SERVING_SIZE.value,
            compute_dtype=cli.COMPUTE_DTYPE.value,
            **cli.source_options(),
        )
    )


if __name__ == "__main__":
    cli.start(main)
