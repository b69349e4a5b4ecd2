"""Export a registered backbone as an image feature vector SavedModel.

Usage:
    python -m exporter.feature_vector --backbone=resnet50 --out=DIR
        [--weights=imagenet|none|PATH] [--pooling=avg|max] [--weight_decay=X] [--overwrite]
        [--serving_inputs=float32,uint8,image_bytes] [--serving_size=N]
        [--compute_dtype=float32|bfloat16|float16]
"""

from absl import flags

from exporter import cli
from exporter.making.export import export_feature_vector

_POOLING = flags.DEFINE_enum(
    "pooling", "avg", ["avg", "max"], "Global pooling of the last feature map."
)


def main(argv: list[str]) -> None:
    cli.no_positional_arguments(argv)
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
        )
    )


if __name__ == "__main__":
    cli.start(main)
