"""Each preprocessing mode equals keras.applications' own preprocess_input(images * 255)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_images

from exporter.making import preprocessing

# One keras.applications family per mode, the convention each mode reproduces.
REFERENCES = {
    "caffe": keras.applications.resnet50.preprocess_input,
    "tf": keras.applications.mobilenet_v2.preprocess_input,
    "torch": keras.applications.densenet.preprocess_input,
    "raw255": keras.applications.efficientnet.preprocess_input,
}


@pytest.mark.parametrize("mode", sorted(REFERENCES))
def test_mode_matches_keras_preprocess_input(mode):
    images = random_images(2, 8)
    expected = REFERENCES[mode](images.copy() * 255.0)
    actual = preprocessing.preprocess(tf.constant(images), mode).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_identity_passes_through():
    images = random_images(1, 4)
    np.testing.assert_array_equal(preprocessing.preprocess(tf.constant(images), "identity"), images)


def test_every_mode_is_covered():
    assert set(preprocessing.MODES) == set(REFERENCES) | {"identity"}
    assert set(preprocessing.DESCRIPTIONS) == set(preprocessing.MODES)
    # The command line offers the modes that preprocessing defines (exporter.choices).
    assert tuple(sorted(preprocessing._MODES)) == preprocessing.MODES


def test_unknown_mode_lists_known_ones():
    with pytest.raises(ValueError, match=r"Unknown preprocessing mode 'bgr'; known: caffe, "):
        preprocessing.preprocess(tf.zeros([1, 2, 2, 3]), "bgr")


def test_an_affine_mode_is_a_converters_scale_and_offset_on_0_to_255():
    from exporter.making.preprocessing import Affine, describe, name, parse_mode

    mode = parse_mode("0.0171:0.0175:0.0174,-2.1:-2.0:-1.8")
    assert mode == Affine((0.0171, 0.0175, 0.0174), (-2.1, -2.0, -1.8))
    images = np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32)
    expected = images * 255.0 * np.float32(mode.scale) + np.float32(mode.offset)
    np.testing.assert_allclose(
        preprocessing.preprocess(tf.constant(images), mode), expected, rtol=1e-6
    )
    assert parse_mode("tf") == "tf" and name(mode) == "affine" and name("tf") == "tf"
    assert describe(Affine.of(1 / 127.5, -1)) == "pixels on 0..255 times 0.00784314, plus -1"
    for bad in ("0.5", "a,b", "1,2,3", "1:2,3:4"):
        with pytest.raises(ValueError, match=r"Expected preprocessing to be one of .*SCALE,OFFSET"):
            parse_mode(bad)
    with pytest.raises(ValueError, match=r"one finite number or three"):
        Affine.of(float("nan"), 0)
