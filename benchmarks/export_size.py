"""Bytes on disk of our export against Keras 3's own ``model.export``, in the same run.

Usage:
    python benchmarks/export_size.py [--backbones=resnet50,mobilenet_v2,efficientnet_b0]

Prints, per backbone: the raw weight bytes, the ``variables/`` bytes of our feature vector
export and of ``model.export`` (the anchor) for the same headless Keras model, their ratios
to the weights, and the time each took. Random weights; nothing is downloaded.
"""

import shutil
import tempfile
import time
from pathlib import Path

import harness
from absl import app, flags

import exporter
from exporter.making.module import FeatureVectorModule

_BACKBONES = flags.DEFINE_list(
    "backbones", ["resnet50", "mobilenet_v2", "efficientnet_b0"], "Backbones to measure."
)


def main(argv):
    del argv
    print("backbone         weights MB  ours MB  ratio  ours s  model.export MB  ratio  anchor s")
    for name in _BACKBONES.value:
        facts = exporter.get_backbone(name)
        model = facts.build(include_top=False, weights=None, input_shape=(None, None, 3))
        weights = harness.weight_bytes(model.weights)
        scratch = Path(tempfile.mkdtemp(prefix="export-size-"))
        try:
            start = time.perf_counter()
            module = FeatureVectorModule(model, preprocessing=facts.preprocessing, name=name)
            exporter.save(module, scratch / "ours")
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            model.export(str(scratch / "anchor"), format="tf_saved_model", verbose=False)
            anchor_s = time.perf_counter() - start
            ours = harness.directory_bytes(scratch / "ours" / "variables")
            anchor = harness.directory_bytes(scratch / "anchor" / "variables")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        mb = 1e6
        print(
            f"{name:16} {weights / mb:10.1f} {ours / mb:8.1f} {ours / weights:6.3f} "
            f"{ours_s:7.1f} {anchor / mb:16.1f} {anchor / weights:6.3f} {anchor_s:9.1f}"
        )


if __name__ == "__main__":
    app.run(main)
