"""Check one registered backbone end to end; run by tests/test_zoo.py in a fresh process.

Usage: ``python tests/zoo_check.py NAME [--own_head]``. Checks the feature vector (equal to
Keras' own ``include_top=False, pooling="avg"`` model on the same weights, at two sizes, and
to the ``"max"`` one for one backbone per family, ``OWN_HEADS``) and, with ``--own_head``, the
classifier that keeps the backbone's own ImageNet head. Exit status 0
means every check passed; a failed check raises, so the traceback names it.

A fresh process per backbone keeps exports fast: after dozens of backbones in one process,
TensorFlow's and Keras' global state grows (10 GB) and one export slowed from about a
minute to ten.

Grappler, TensorFlow's graph optimizer, is off in this process: on the small images checked
here, optimizing each large graph when it is first run costs more than it saves.
EfficientNetB3's whole check took 100 s instead of 138, and the export's verify step, which
first runs the reloaded functions, 14 s instead of 27; that comparison also counts verify's
one trace fewer (``ImageModule.traced_inference``), measured beside other work. Our graph
and Keras' are compared without it, on the same terms. The rest of the suite runs with it on, as
users do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from exporter import lean_import  # noqa: E402

# As in our commands: TensorFlow and Keras load without jax, pandas, matplotlib and cv2,
# which nothing here uses (1.6 of about 5 CPU-seconds of their import, in each of the zoo's
# 42 processes).
lean_import.install()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import calibrate_batch_norm, random_images  # noqa: E402  (this script's folder is on sys.path)
from zoo_runner import OWN_HEADS  # noqa: E402

import exporter  # noqa: E402
from exporter.checking import input_range, savedmodel  # noqa: E402
from exporter.checking.conformance import shape_free_call  # noqa: E402

tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})  # See above.


def reference_and_weights(name: str, directory: Path, include_top: bool):
    """The Keras model with random weights whose outputs have real scale, and its weights file.

    Fresh random weights make deep backbones' outputs vanish (MobileNetV2 about 1e-11), so
    a parity check with a tolerance relative to them would pass whatever the code does.
    Batch norm is damped (scales 0.2 to 0.3, Xception's 0.4 to 0.6: ``DAMPED_GAMMA``) and
    then calibrated on one batch: every normalized layer then has outputs of the order of
    its scales, in every backbone. Undamped, deep random networks (EfficientNetV2-S to L)
    grow chaotic: float32 round-off alone breaks the 1e-4 checks, and an image alone and
    in a batch differ by 75%. Damped less (0.4 to 0.6),
    EfficientNetB5 at 64 px still reached outputs of 646 where an image alone and in a
    batch differed by 2.6e-4 of the scale, and failed the export's own batch_independent
    rule on CI's CPU; at 0.2 to 0.3 its outputs are 0.8 and that difference 3e-6. Without
    the top, the model is Keras' own bottleneck, ``include_top=False, pooling="avg"``.
    """
    keras.utils.set_random_seed(zlib.crc32(name.encode()) + include_top)
    facts = exporter.get_backbone(name)
    if include_top:
        model = facts.build(include_top=True, weights=None, classifier_activation=None)
        size = facts.native_size
    else:
        model = pooled_reference(facts, None, "avg")
        size = parity_sizes(facts)[-1]  # The larger: its statistics carry down to the minimum.
    images = preprocessed(facts, random_images(calibration_batch(size), size, seed=5))
    calibrate_batch_norm(model, images, gamma=DAMPED_GAMMA_OF.get(name, DAMPED_GAMMA))
    path = directory / f"{name}-{'top' if include_top else 'notop'}.weights.h5"
    model.save_weights(path)
    return model, path


# The range batch-norm scales are drawn from (see above), and the backbones that differ.
# Xception's output shrinks with about the cube of its scales (max 0.0097 at [0.2, 0.3],
# under the 1e-2 floor; 0.074 at [0.4, 0.6]), and it stays orderly at [0.4, 0.6] (alone
# and in a batch: 5e-7 apart).
DAMPED_GAMMA = (0.2, 0.3)
DAMPED_GAMMA_OF = {"xception": (0.4, 0.6)}


def calibration_batch(size: int) -> int:
    """How many images calibrate batch norm at ``size``.

    16 at the small parity sizes: with fewer, the last layers see so few positions that
    some variances come out tiny, and other images then blow up through them
    (EfficientNetB7: 1e5, chaotic). 4 from 128 px up (fixed-size and native-size models,
    NASNetLarge at 331), whose larger maps give every channel enough positions, and where
    16 images in a training pass took NASNetLarge past the memory of CI's machine.
    """
    return 16 if size < 128 else 4


def preprocessed(facts, images: np.ndarray) -> np.ndarray:
    """``images`` in [0, 1] as the family's own ``preprocess_input`` gives them to Keras."""
    family = getattr(keras.applications, facts.family)
    return np.asarray(family.preprocess_input(images * 255.0))


def pooled_reference(facts, weights: Path, pooling: str) -> keras.Model:
    """Keras' own bottleneck: ``include_top=False, pooling=...`` with the given weights."""
    fixed = facts.native_size if facts.fixed_size else None
    return facts.build(
        include_top=False, weights=weights, pooling=pooling, input_shape=(fixed, fixed, 3)
    )


def graph_call(model, images):
    # Graph mode with static shapes, as Keras documents the model; eager execution can
    # silently compute on maps that are too small.
    return tf.function(lambda x: model(x, training=False))(tf.constant(images)).numpy()


_ANY_SIZE = {}


def any_size_call(model, images):
    """``model`` in graph mode, traced once for every size (each trace of a big model costs
    seconds, and the parity check calls each reference at two sizes)."""
    if id(model) not in _ANY_SIZE:
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        _ANY_SIZE[id(model)] = (
            model,
            tf.function(lambda x: model(x, training=False), input_signature=[spec]),
        )
    return _ANY_SIZE[id(model)][1](tf.constant(images, tf.float32)).numpy()


def assert_close(actual, expected, tolerance: float = 1e-4):
    """Equal within ``tolerance``, relative to an output scale that must be real (> 1e-2)."""
    scale = float(np.max(np.abs(expected)))
    assert scale > 1e-2, f"reference output scale {scale:.3g}: too small to compare against"
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


# Our graph and Keras' differ in float32 rounding (preprocessing inside or outside, pooling
# fused or not); the deepest random networks amplify that to 4e-4 of the scale at 103 px
# (ResNet152, max pooling). The bug this guards against (issue 8) was a factor of 3.
BOTTLENECK_TOLERANCE = 1e-3


def parity_sizes(facts) -> list[int]:
    """The smallest admissible size, and one whose last feature map is wider than 1x1.

    At the minimum the last map is 1x1, where pooling is the identity: neither avg against
    max nor a layer's place before or after pooling would show there.
    """
    if facts.fixed_size:
        return [facts.native_size]
    return [facts.min_size, 2 * facts.min_size + 7]


def feature_map_model(pooled: keras.Model) -> keras.Model:
    """The part of Keras' pooled model before its global pooling: the last feature map."""
    pools = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
    pool = [layer for layer in pooled.layers if isinstance(layer, pools)][-1]
    return keras.Model(pooled.input, pool.input)


def check_bottleneck(facts, reference: keras.Model, pooling: str, call) -> None:
    """``call(images)`` equals Keras' own pooled model, at two sizes (one for fixed-size)."""
    # The fact sheet says whether a layer follows Keras' pooling (ConvNeXt's LayerNorm).
    last = reference.layers[-1]
    pools = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
    assert isinstance(last, pools) != bool(facts.norm_after_pooling), (last, facts)
    for size in parity_sizes(facts):
        images = random_images(2, size, seed=size)
        expected = any_size_call(reference, preprocessed(facts, images))
        assert expected.shape == (2, facts.num_features), expected.shape
        actual = np.asarray(call(tf.constant(images)))
        try:
            assert_close(actual, expected, BOTTLENECK_TOLERANCE)
        except AssertionError as error:
            raise AssertionError(f"pooling={pooling}, {size}x{size}: {error}") from None


def check_feature_vector(name: str, scratch: Path) -> None:
    facts = exporter.get_backbone(name)
    pooled, weights = reference_and_weights(name, scratch, include_top=False)
    if name in OWN_HEADS:
        # Max pooling, once per family: it differs from avg only in the pooling op (and,
        # in ConvNeXt, the LayerNorm after it), while the feature map, preprocessing and
        # head it pools are those the avg check below proves for every backbone. Checked on
        # the in-memory module (each export's verify step proves the saved __call__ equal).
        max_module = exporter.build_feature_vector(name, weights=weights, pooling="max")
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        max_call = tf.function(lambda x: max_module(x), input_signature=[spec])  # One trace.
        check_bottleneck(facts, pooled_reference(facts, weights, "max"), "max", max_call)
        max_module = max_call = None  # Free the model before the export.
    module = exporter.build_feature_vector(name, weights=weights)
    assert module.num_features == facts.num_features, (module.num_features, facts.num_features)
    path = exporter.save(module, scratch / "feature_vector")
    del module
    # Our preprocessing rescales [0, 1] before the first convolution: never the checker's
    # input_range warning (meant for models that expect pre-normalized pixels).
    verdict = input_range.first_layer_input(savedmodel.read(path))
    assert verdict is not None and verdict.rescaled, verdict
    obj = load(path)

    # The export equals Keras' own include_top=False, pooling="avg" model on the same
    # weights fed the family's preprocess_input: the bottleneck, preprocessing included.
    check_bottleneck(facts, pooled, "avg", obj)
    reference = feature_map_model(pooled)
    sizes = parity_sizes(facts)
    # Static shapes, as Keras infers them for each size (no trace of the model needed).
    feature_map = reference.compute_output_shape((1, sizes[0], sizes[0], 3))
    if len(sizes) > 1:  # The larger size's map is wider than 1x1, so pooling shows there.
        wide = reference.compute_output_shape((1, sizes[1], sizes[1], 3))
        assert wide[1] * wide[2] > 1, (sizes, wide)
    assert feature_map[-1] == facts.num_features, feature_map

    # The minimum works on the real model; one pixel less is refused, naming the minimum.
    if facts.fixed_size:
        with _raises(f"exactly {facts.native_size}"):
            obj(tf.zeros([1, facts.native_size + 1, facts.native_size, 3]))
    else:
        assert len(feature_map) == 4 and feature_map[1] >= 1  # At the minimum: sizes[0].
        with _raises(f"at least {facts.min_size}"):
            obj(tf.zeros([1, facts.min_size - 1, facts.min_size, 3]))

    # Round trip: both training values, at the smallest sizes (training=True last: it
    # updates the loaded copy's batch-norm statistics).
    for size in sizes:
        for training in (False, True):
            out = obj(tf.constant(random_images(2, size)), training=training)
            assert out.dtype == tf.float32 and out.shape == (2, facts.num_features), out.shape

    metadata = json.loads((Path(path) / "assets.extra" / "metadata.json").read_text())
    assert metadata["num_features"] == facts.num_features
    min_size = facts.native_size if facts.fixed_size else facts.min_size
    assert metadata["input"]["min_size"] == min_size, metadata["input"]
    assert metadata["preprocessing"]["mode"] == facts.preprocessing
    assert metadata["bottleneck"] == facts.bottleneck("avg"), metadata["bottleneck"]
    if facts.norm_after_pooling:
        card = (Path(path) / "assets.extra" / "model_card.md").read_text()
        assert f"{facts.norm_after_pooling} of the pooled last stage" in card, card
    # batch_norm_momentum is an hparam exactly when the model has batch norm.
    layers = pooled._flatten_layers(include_self=False, recursive=True)
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    expected_hparams = {"batch_norm_momentum": norms[0].momentum} if norms else {}
    assert {k: v["default"] for k, v in metadata["hparams"].items()} == expected_hparams
    # Each variable is stored once (Keras' own export stores them twice).
    on_disk = sum(f.stat().st_size for f in (Path(path) / "variables").iterdir())
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in pooled.weights)
    assert on_disk <= 1.02 * weight_bytes, (on_disk, weight_bytes)
    if facts.norm_after_pooling and name in OWN_HEADS:  # Once per family (convnext_tiny):
        check_hub_fine_tuning(path, facts)  # the norm after pooling is fine-tuned too.


def check_hub_fine_tuning(path: Path, facts) -> None:
    """A few steps through ``hub.KerasLayer(trainable=True)`` lower the loss and move every
    trainable variable of the export's last layer (ConvNeXt: the LayerNorm after pooling)."""
    import tensorflow_hub as hub
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    size = max(facts.min_size, 64)
    layer = hub.KerasLayer(str(path), trainable=True)
    model = tf_keras.Sequential([tf_keras.Input((size, size, 3)), layer, tf_keras.layers.Dense(2)])
    model.compile(
        tf_keras.optimizers.Adam(1e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    norm = [w for w in layer.trainable_weights if "layernorm" in w.name.lower()]
    assert norm, [w.name for w in layer.trainable_weights][-6:]
    before = [w.numpy().copy() for w in norm]
    history = model.fit(random_images(4, size), np.array([0, 1, 0, 1]), epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    moved = [not np.allclose(b, w.numpy()) for b, w in zip(before, norm, strict=True)]
    assert all(moved), moved


def check_own_classifier(name: str, scratch: Path) -> None:
    facts = exporter.get_backbone(name)
    reference, weights = reference_and_weights(name, scratch, include_top=True)
    # Exporting runs every conformance rule, with the card required, and fails on any.
    path = exporter.export_classifier(name, scratch / "classifier", weights=weights)
    metadata = json.loads((Path(path) / "assets.extra" / "metadata.json").read_text())
    assert metadata["num_classes"] == facts.num_classes
    assert metadata["classes"]["activation"] == "softmax"
    assert metadata["input"]["fixed_size"] == (facts.fixed_size or facts.classifier_fixed_size)
    # Its own dropout before the logits, or 0.2 where it has none.
    assert metadata["hparams"]["dropout_rate"]["default"] == (facts.top_dropout or 0.2)

    # The logits are Keras' own classifier's, softmax removed.
    obj = load(path)
    images = random_images(2, facts.native_size)
    expected = graph_call(reference, preprocessed(facts, images))
    assert_close(obj(tf.constant(images)).numpy(), expected)
    if not (facts.fixed_size or facts.classifier_fixed_size):
        small = obj(tf.constant(random_images(1, facts.min_size)), training=True)
        assert small.shape == (1, facts.num_classes), small.shape
    else:  # A head fixed at the native size refuses any other, saying which it needs.
        with _raises(f"exactly {facts.native_size}"):
            obj(tf.zeros([1, facts.native_size - 1, facts.native_size, 3]))


def load(path: Path):
    """The reloaded export's ``__call__``, instantiated once per ``training`` value.

    The copy is the one the export's own verification loaded from the same files, just
    before they were moved to ``path`` (``_keep_verified_copy``): a second
    ``tf.saved_model.load`` of a large backbone costs seconds, and its first calls instantiate
    (graph optimization and all) what verification's calls already did. ``path`` must be the
    export that was verified last. Called eagerly, a restored function is instantiated again
    for every new input shape (seconds each for the large backbones); the checks here call it
    at up to three shapes per ``training`` value, through one shape-free trace each.
    """
    loaded, verified = _VERIFIED.pop("loaded"), _VERIFIED.pop("path")
    assert Path(path).name == Path(verified).name.split(".", 2)[1], (path, verified)
    assert (Path(path) / "saved_model.pb").is_file(), path  # Moved into place.

    def call(images, training=False):
        return shape_free_call(loaded, training)(tf.convert_to_tensor(images))

    return call


_VERIFIED: dict = {}


def _keep_verified_copy() -> None:
    """Keep the object each export's verification loads (``exporter.making.save._verify``):
    in this process nothing else calls ``savedmodel.load``, and ``load`` checks the path."""
    load = savedmodel.load

    def kept(path, **kwargs):
        _VERIFIED.update(loaded=load(path, **kwargs), path=path)
        return _VERIFIED["loaded"]

    savedmodel.load = kept


@contextlib.contextmanager
def _raises(text: str):
    """Expect an InvalidArgumentError whose message contains ``text``."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if text not in str(error):
            raise
        return
    raise AssertionError(f"Expected an InvalidArgumentError naming {text!r}.")


def main(name: str, own_head: bool) -> None:
    _keep_verified_copy()
    scratch = Path(tempfile.mkdtemp(prefix=f"exporter-zoo-{name}-"))
    checks = (check_feature_vector, check_own_classifier) if own_head else (check_feature_vector,)
    try:
        for check in checks:
            start = time.perf_counter()
            check(name, scratch)
            print(f"{name}: {check.__name__} passed in {time.perf_counter() - start:.1f} s")
            keras.backend.clear_session()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--own_head"]):
        sys.exit(f"usage: {sys.argv[0]} NAME [--own_head]")
    main(sys.argv[1], own_head=sys.argv[2:] == ["--own_head"])
