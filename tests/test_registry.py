"""The registry is strict, and every fact sheet matches the real model."""

import keras
import pytest
import tensorflow as tf
from conftest import CORE

import exporter
from exporter.making import registry


def test_list_backbones_is_sorted_and_has_the_core_three():
    names = exporter.list_backbones()
    assert names == sorted(names)
    assert {"resnet50", "mobilenet_v2", "efficientnet_b0"} <= set(names)


# Every image backbone of keras.applications 3.15, as issue 3 lists them.
ZOO = (
    [f"convnext_{size}" for size in ("tiny", "small", "base", "large", "xlarge")]
    + ["densenet121", "densenet169", "densenet201"]
    + [f"efficientnet_b{i}" for i in range(8)]
    + [f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")]
    + ["inception_v3", "inception_resnet_v2"]
    + ["mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
    + ["nasnet_mobile", "nasnet_large"]
    + ["resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2"]
    + ["vgg16", "vgg19", "xception"]
)


def test_every_keras_applications_image_backbone_is_registered():
    assert len(ZOO) == 40
    assert exporter.list_backbones() == sorted(ZOO)
    fixed = [name for name in ZOO if exporter.get_backbone(name).fixed_size]
    assert fixed == ["nasnet_mobile", "nasnet_large"]


def test_unknown_name_lists_known_ones():
    with pytest.raises(
        exporter.ExportError,
        match=r"Unknown backbone 'resnet5': expected a registered name \(.*resnet50.*\), a "
        r"keras-hub preset folder or handle, or a \.keras file\.$",
    ):
        exporter.get_backbone("resnet5")


def test_duplicate_registration_is_refused():
    facts = exporter.get_backbone("resnet50")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(facts)


def test_fact_sheet_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="min_size"):
        exporter.Backbone(
            name="x", build=keras.applications.ResNet50, family="resnet",
            preprocessing="caffe", native_size=32, min_size=64, num_features=1,
        )  # fmt: skip


@pytest.mark.parametrize("name", CORE)
def test_facts_match_the_real_model(name):
    facts = exporter.get_backbone(name)
    model = facts.build(include_top=False, weights=None, input_shape=(None, None, 3))
    run = tf.function(lambda x: model(x, training=False))
    # Graph mode, as exports run: eager calls can silently compute on too-small maps.
    features = run(tf.zeros([1, facts.min_size, facts.min_size, 3]))
    assert features.shape[-1] == facts.num_features
    assert facts.source == f"keras.applications.{facts.build.__name__}"
    assert hasattr(getattr(keras.applications, facts.family), "preprocess_input")


@pytest.mark.parametrize("name", CORE)
def test_minimum_size_works_and_one_less_fails_clearly(name):
    facts = exporter.get_backbone(name)
    module = exporter.build_feature_vector(name, weights=None)
    ok = module(tf.zeros([1, facts.min_size, facts.min_size, 3]))
    assert ok.shape == (1, facts.num_features)
    small = facts.min_size - 1
    with pytest.raises(exporter.InvalidImagesError, match=rf"at least {facts.min_size}\b"):
        module(tf.zeros([1, small, facts.min_size, 3]))


def test_families_that_normalize_after_pooling_are_built_pooled():
    # The bottleneck is norm(pool(map)): Keras builds it only when asked to pool (issue 8).
    assert [n for n in ZOO if exporter.get_backbone(n).norm_after_pooling] == [
        f"convnext_{size}" for size in ("tiny", "small", "base", "large", "xlarge")
    ]
    body = exporter.load_backbone("convnext_tiny", weights="none", pooling="max")
    assert isinstance(body.layers[-2], keras.layers.GlobalMaxPooling2D), body.layers[-2]
    assert isinstance(body.layers[-1], keras.layers.LayerNormalization), body.layers[-1]
    assert len(body.output.shape) == 2
    # Unpooled is not on offer: its LayerNorm would run per position instead.
    unpooled = exporter.load_backbone("convnext_tiny", weights="none")
    assert isinstance(unpooled.layers[-2], keras.layers.GlobalAveragePooling2D)
    module = exporter.build_feature_vector("convnext_tiny", weights=None, pooling="max")
    assert module.pooling == "max"
    assert module.bottleneck == "LayerNorm of the pooled last stage (max pooling)"
    with pytest.raises(exporter.ArgumentError, match="one of avg, max for resnet50"):
        exporter.load_backbone("resnet50", weights="none", pooling="mean")
    # A new head sits on the same bottleneck: the pooled map's LayerNorm.
    classifier = exporter.build_classifier("convnext_tiny", weights=None, num_classes=3)
    last = classifier.keras_backbone.layers[-1]
    assert isinstance(last, keras.layers.LayerNormalization), last
    assert classifier.bottleneck == "LayerNorm of the pooled last stage (avg pooling)"
