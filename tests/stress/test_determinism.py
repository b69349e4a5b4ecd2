"""Issue 12, determinism: the same weights exported twice give the same bytes and outputs."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import random_images, run_cli

from exporter.checking import fingerprint

pytestmark = pytest.mark.stress


def _files(path) -> dict:
    # TensorFlow's own fingerprint.pb holds a random UUID per save; everything else counts.
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "fingerprint.pb"
    }


def test_same_weights_give_the_same_export_bit_for_bit(weights_file, tmp_path):
    weights = weights_file("mobilenet_v2")
    paths = [tmp_path / "first", tmp_path / "second"]
    for path in paths:  # Each in a fresh process, as two training runs would export.
        done = run_cli("feature_vector", "--backbone=mobilenet_v2", f"--weights={weights}",
                       f"--out={path}")  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    first, second = (_files(p) for p in paths)
    assert sorted(first) == sorted(second)
    differing = [name for name in first if first[name] != second[name]]
    assert differing == [], differing
    recorded = json.loads((paths[0] / "assets.extra" / "metadata.json").read_text())
    assert recorded["fingerprint"] == fingerprint.compute(paths[1])
    images = tf.constant(random_images(3, 48))
    outputs = [tf.saved_model.load(str(p))(images).numpy() for p in paths]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    print(f"\ndeterminism: {len(first)} files equal byte for byte, outputs equal bit for bit")
