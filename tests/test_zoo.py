"""Every registered backbone: its facts, a round trip, its bottleneck, its own head.

The bottleneck check compares each feature vector, both poolings, with Keras' own pooled
model of the same weights fed the family's ``preprocess_input`` (issue 8).

Each backbone is checked by ``tests/zoo_check.py`` in a fresh Python process (see there
why). The processes start in the background when collection ends (``background.py``,
``zoo_runner.py``);
one test per backbone reports its process's verdict, with its output when it fails. The
own ImageNet classifier and max pooling are checked for one backbone per family (``OWN_HEADS``).
``EXPORTER_ZOO_JOBS`` (default 2) processes run at a time once this file is reached.
"""

import pytest
from conftest import BACKBONES, ZOO_TEST
from zoo_runner import LONGEST_FIRST, OWN_HEADS, _start_order

import exporter


def test_names_follow_the_keras_function_names():
    for name in BACKBONES:
        facts = exporter.get_backbone(name)
        assert name.replace("_", "") == facts.build.__name__.lower(), name
        assert name == name.lower()


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_end_to_end(zoo, name):
    done = zoo.result(f"zoo {name}")
    output = f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert done.returncode == 0, output
    assert f"{name}: check_feature_vector passed" in done.stdout, output
    if name in OWN_HEADS:
        assert f"{name}: check_own_classifier passed" in done.stdout, output


def test_zoo_test_name_is_the_one_the_runner_looks_for():
    assert test_backbone_end_to_end.__name__ == ZOO_TEST


def test_own_heads_cover_every_family():
    assert set(OWN_HEADS) <= set(BACKBONES)
    families = {exporter.get_backbone(name).family for name in BACKBONES}
    assert {exporter.get_backbone(name).family for name in OWN_HEADS} == families


def test_the_longest_zoo_processes_start_first():
    assert set(LONGEST_FIRST) <= set(BACKBONES)  # A renamed backbone would silently go last.
    order = sorted(BACKBONES, key=_start_order)
    assert order[: len(LONGEST_FIRST)] == list(LONGEST_FIRST)
    assert order[len(LONGEST_FIRST) :] == [n for n in BACKBONES if n not in LONGEST_FIRST]
