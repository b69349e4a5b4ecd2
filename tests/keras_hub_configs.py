"""Small random configs of keras-hub 0.32's 13 image classifier families, for tests.

Each is as small as its constructor allows (found by probing keras-hub 0.32's checks):
ResNet insists on 64 filters in its first stack, DenseNet's stem has 64, EfficientNet keeps
``num_features`` at its default (keras-hub does not save it: BUILD_NOTES.md) and shrinks
its top convolution through the last width coefficient, CSPNet needs ``stage_type``.
"""

from __future__ import annotations

import keras_hub

SIZE = 32


def _family(backbone: dict, *, fixed: bool = False, pooling: str = "avg", **classifier) -> dict:
    return dict(
        backbone=backbone, fixed=fixed, pooling=pooling, classifier=classifier, image_size=SIZE
    )


_TOKENS = dict(patch_size=8, num_layers=1, num_heads=2, hidden_dim=16)

FAMILIES = {
    "CSPNet": _family(dict(
        stem_filters=8, stem_kernel_size=3, stem_strides=2, stackwise_depth=[1],
        stackwise_strides=[2], stackwise_num_filters=[16], block_type="dark_block",
        stage_type="dark",
    )),
    "DeiT": _family(dict(**_TOKENS, intermediate_dim=32), fixed=True, pooling="token"),
    "DenseNet": _family(dict(stackwise_num_repeats=[1], growth_rate=8)),
    "EfficientNet": _family(dict(
        stackwise_width_coefficients=[0.025], stackwise_depth_coefficients=[1.0],
        stackwise_kernel_sizes=[3], stackwise_num_repeats=[1], stackwise_input_filters=[16],
        stackwise_output_filters=[16], stackwise_expansion_ratios=[1],
        stackwise_squeeze_and_excite_ratios=[0.0], stackwise_strides=[2],
        stackwise_block_types=["fused"],
    )),
    "HGNetV2": _family(dict(
        depths=[1], embedding_size=16, hidden_sizes=[16], stem_channels=[3, 8, 16],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[(16, 8, 16, 1, 1, 3)], apply_downsample=[False],
        use_lightweight_conv_block=[False],
    )),
    "MiT": _family(dict(
        layerwise_depths=[1], num_layers=1, layerwise_num_heads=[1], layerwise_sr_ratios=[2],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7], layerwise_strides=[4],
        hidden_dims=[16],
    ), fixed=True),
    "MobileNet": _family(dict(
        stackwise_expansion=[[16]], stackwise_num_blocks=[1], stackwise_num_filters=[[8]],
        stackwise_kernel_size=[[3]], stackwise_num_strides=[[2]], stackwise_se_ratio=[[None]],
        stackwise_activation=[["relu"]], stackwise_padding=[[1]], output_num_filters=16,
        depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        last_layer_filter=16, input_num_filters=8,
    ), num_features=16),
    "MobileNetV5": _family(dict(
        stackwise_block_types=[["er"]], stackwise_num_blocks=[1], stackwise_num_filters=[[16]],
        stackwise_strides=[[2]], stackwise_act_layers=[["relu"]], stackwise_exp_ratios=[[2.0]],
        stackwise_se_ratios=[[0.0]], stackwise_dw_kernel_sizes=[[0]],
        stackwise_dw_start_kernel_sizes=[[0]], stackwise_dw_end_kernel_sizes=[[0]],
        stackwise_exp_kernel_sizes=[[3]], stackwise_pw_kernel_sizes=[[1]],
        stackwise_num_heads=[[0]], stackwise_key_dims=[[0]], stackwise_value_dims=[[0]],
        stackwise_kv_strides=[[0]], stackwise_use_cpe=[[False]], stem_size=8, use_msfa=False,
        num_features=16,
    ), head_hidden_size=16),
    "ResNet": _family(dict(
        input_conv_filters=[8], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block_vd",
    )),
    "SwinTransformer": _family(dict(
        embed_dim=16, depths=[1], num_heads=[2], window_size=4, patch_size=4, mlp_ratio=2.0,
    ), fixed=True, pooling="gap"),
    "VGG": _family(dict(stackwise_num_repeats=[1], stackwise_num_filters=[8]),
                   pooling_hidden_dim=16),
    "ViT": _family(dict(**_TOKENS, mlp_dim=32), fixed=True, pooling="token", intermediate_dim=8),
    "Xception": _family(dict(
        stackwise_conv_filters=[[8, 16], [16]], stackwise_pooling=[False, False],
    )),
}  # fmt: skip


def make_backbone(family: str):
    """``family``'s small backbone: at its one size if fixed, else at any size."""
    facts = FAMILIES[family]
    shape = (SIZE, SIZE, 3) if facts["fixed"] else (None, None, 3)
    key = "input_shape" if family == "EfficientNet" else "image_shape"  # keras-hub's names.
    return getattr(keras_hub.models, f"{family}Backbone")(**facts["backbone"], **{key: shape})


def make_task(family: str, *, scale, offset, num_classes: int = 3):
    """``family``'s ImageClassifier, with a preprocessor whose converter has ``scale`` and
    ``offset``, on a small random backbone."""
    converter = getattr(keras_hub.layers, f"{family}ImageConverter")(
        image_size=(SIZE, SIZE), scale=scale, offset=offset
    )
    preprocessor = getattr(keras_hub.models, f"{family}ImageClassifierPreprocessor")(
        image_converter=converter
    )
    return getattr(keras_hub.models, f"{family}ImageClassifier")(
        backbone=make_backbone(family),
        preprocessor=preprocessor,
        num_classes=num_classes,
        **FAMILIES[family]["classifier"],
    )


ENCODER_SIZE = 28
_VISION = dict(
    patch_size=7, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
    image_shape=(ENCODER_SIZE, ENCODER_SIZE, 3),
)  # fmt: skip
_TEXT = dict(
    vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
    intermediate_dim=32, max_sequence_length=8,
)  # fmt: skip
# The vision encoders (feature vectors only): family -> its image converter's class name.
ENCODERS = {
    "DINOV2": "DINOV2ImageConverter",
    "DINOV3": "DINOV3ImageConverter",
    "CLIP": "CLIPImageConverter",
    "SigLIP": "SigLIPImageConverter",
    "MetaCLIP2": "MetaCLIP2ImageConverter",
}


def make_encoder(family: str, *, scale, offset):
    """``(backbone, converter)``: a small random vision encoder (with its text tower for
    the image-text families) and a converter of its image size."""
    models = keras_hub.models
    if family == "DINOV2":
        backbone = models.DINOV2Backbone(
            **_VISION, num_register_tokens=2,
            position_embedding_shape=(ENCODER_SIZE, ENCODER_SIZE, 3),
        )  # fmt: skip
    elif family == "DINOV3":
        backbone = models.DINOV3Backbone(**_VISION, num_register_tokens=4)
    elif family == "SigLIP":
        backbone = models.SigLIPBackbone(
            vision_encoder=models.SigLIPVisionEncoder(**_VISION),
            text_encoder=models.SigLIPTextEncoder(**_TEXT, projection_dim=16),
        )
    else:
        backbone = getattr(models, f"{family}Backbone")(
            vision_encoder=getattr(models, f"{family}VisionEncoder")(**_VISION),
            text_encoder=getattr(models, f"{family}TextEncoder")(**_TEXT),
            projection_dim=8,
        )
    converter = getattr(keras_hub.layers, ENCODERS[family])(
        image_size=(ENCODER_SIZE, ENCODER_SIZE), scale=scale, offset=offset
    )
    return backbone, converter


def encoder_embedding(family: str, backbone, inputs):
    """keras-hub's own image embedding of preprocessed ``inputs``."""
    if family in ("CLIP", "MetaCLIP2"):
        return backbone.get_vision_embeddings(inputs)
    if family == "SigLIP":
        return backbone.vision_encoder({"images": inputs})
    key = "pixel_values" if family == "DINOV3" else "images"
    return backbone({key: inputs})[:, 0]
