"""Issue 12, item 4: ``python -m exporter.check`` survives hostile bytes.

300 seeded mutants of a real (tiny) export: bit flips and truncations of the graph and of
the variables, index entries with hostile values behind right checksums, a missing or odd
``variables/``, random and 10,000-deep protocol buffers, links to ``/dev/zero``, FIFOs, a
sparse 3 GiB graph. Each one is checked within 60 s by the command line's own code
(``exporter.check.run``) in one long-lived process (fuzz_worker.py), restarted after a crash
or a hang. Each must exit 1 or 2 with a message: never 0, since each changes the graph or
the variables that the content fingerprint covers; never a traceback, a crash or a hang.

Fresh ``python -m exporter.check`` processes check one mutant of each kind, to show that the
long-lived process agrees with the command line, and every crasher found so far
(fixtures/crashers.json), while the long-lived one works through the rest.

EXPORTER_FUZZ_MUTANTS and EXPORTER_FUZZ_SEED change the count and the seed, for exploring.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import fuzz_driver
import fuzz_mutants
import fuzz_sstable
import keras
import pytest
import tensorflow as tf
from conftest import REPO

import exporter
from exporter.checking import checkpoint_index, conformance

pytestmark = pytest.mark.stress

MUTANTS = int(os.environ.get("EXPORTER_FUZZ_MUTANTS", "300"))
SEED = int(os.environ.get("EXPORTER_FUZZ_SEED", "12"))
DEADLINE_S = 60.0
RULES = len(conformance.RULES)
CRASHERS = json.loads(Path(__file__).with_name("fixtures").joinpath("crashers.json").read_text())
# One mutant of each of these kinds also runs through the command line.
CLI_KINDS = (
    "flip saved_model.pb",
    "truncate variables/data",
    "random saved_model.pb",
    "deep structured_value",
    "symlink saved_model.pb",
    "remove variables",
)


@dataclasses.dataclass
class Campaign:
    original: fuzz_driver.Outcome
    recipes: list[dict]
    outcomes: list[fuzz_driver.Outcome]
    crashers: dict[str, fuzz_driver.Outcome]  # In the long-lived worker, by fixture name.
    cli: dict[str, tuple[fuzz_driver.Outcome, fuzz_driver.Outcome]]  # (worker, command line).
    contents: list[str]
    original_content: str
    seconds: float
    worker_starts: int


def _tiny_cnn() -> keras.Model:
    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.ReLU()(x))


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A real export through the public API, as small as a CNN gets: checks take 0.3 s."""
    module = exporter.FeatureVectorModule(_tiny_cnn(), preprocessing="identity", min_size=8)
    return exporter.save(module, tmp_path_factory.mktemp("fuzz") / "original")


def _cli_picks(recipes: list[dict]) -> dict[str, int]:
    picks = {}
    for index, recipe in enumerate(recipes):
        picks.setdefault(fuzz_mutants.kind(recipe), index)
    missing = [kind for kind in CLI_KINDS if kind not in picks]
    assert not missing, f"no mutant of kind {missing} among {MUTANTS}"
    return {kind: picks[kind] for kind in CLI_KINDS}


@pytest.fixture(scope="module")
def campaign(original, tmp_path_factory) -> Campaign:
    start = time.monotonic()
    scratch = tmp_path_factory.mktemp("mutants")
    recipes = fuzz_mutants.generate(original, MUTANTS, SEED)
    picks = _cli_picks(recipes)
    crasher_paths = {
        c["name"]: fuzz_mutants.apply(c["recipe"], original, scratch / c["name"]) for c in CRASHERS
    }
    pick_paths = {
        kind: fuzz_mutants.apply(recipes[i], original, scratch / f"{i:03d}")
        for kind, i in picks.items()
    }
    cli_paths = {**crasher_paths, **pick_paths}
    kept = {i: pick_paths[kind] for kind, i in picks.items()}  # Also read by the CLI: kept.
    # The fresh processes run beside the long-lived one: two cores, both busy.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        cli_futures = {
            name: pool.submit(fuzz_driver.cli_check, path, REPO, RULES, DEADLINE_S)
            for name, path in cli_paths.items()
        }
        try:
            with fuzz_driver.Worker(REPO, DEADLINE_S) as worker:
                first = worker.check(original, RULES)
                outcomes, contents = [], []
                for index, recipe in enumerate(recipes):
                    path = kept.get(index) or fuzz_mutants.apply(
                        recipe, original, scratch / f"{index:03d}"
                    )
                    contents.append(fuzz_mutants.content(path))
                    outcome = worker.check(path, RULES)
                    outcomes.append(outcome)
                    if outcome.verdict not in fuzz_driver.BAD and index not in kept:
                        shutil.rmtree(path)
                crashers = {name: worker.check(path, RULES) for name, path in crasher_paths.items()}
                starts = worker.starts
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        cli = {name: future.result() for name, future in cli_futures.items()}
    worker_side = {**crashers, **{kind: outcomes[i] for kind, i in picks.items()}}
    return Campaign(
        original=first,
        recipes=recipes,
        outcomes=outcomes,
        crashers=crashers,
        cli={name: (worker_side[name], cli[name]) for name in cli},
        contents=contents,
        original_content=fuzz_mutants.content(original),
        seconds=time.monotonic() - start,
        worker_starts=starts,
    )


def _figure(campaign: Campaign) -> str:
    counts = collections.Counter(o.verdict for o in campaign.outcomes)
    slowest = max(o.seconds for o in campaign.outcomes)
    cli_slowest = max(cli.seconds for _, cli in campaign.cli.values())
    return (
        f"fuzz: {len(campaign.outcomes)} mutants, {counts['traceback']} tracebacks, "
        f"{counts['hang']} hangs, {counts['crash']} crashes, {counts['false pass']} false "
        f"passes, {counts['no message']} without a message (exit 1: {counts['exit 1']}, "
        f"exit 2: {counts['exit 2']}); slowest {slowest:.1f} s; {len(campaign.cli)} of them "
        f"or the crashers also on the command line, slowest {cli_slowest:.1f} s; "
        f"{campaign.seconds:.0f} s in all, {campaign.worker_starts} worker start(s)"
    )


def _per_kind(campaign: Campaign) -> list[str]:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for recipe, outcome in zip(campaign.recipes, campaign.outcomes, strict=True):
        table[fuzz_mutants.kind(recipe)][outcome.verdict] += 1
    lines = []
    for kind, counts in sorted(table.items()):
        listed = ", ".join(f"{verdict}: {n}" for verdict, n in sorted(counts.items()))
        lines.append(f"  {kind:36} {sum(counts.values()):3}  ({listed})")
    return lines


def test_the_original_passes_in_the_worker(campaign):
    # Without this, "never exit 0" would hold for a worker that cannot pass anything.
    assert campaign.original.verdict == "false pass", campaign.original  # Exit 0: it passes.
    assert campaign.original.code == 0


def test_every_mutant_is_a_distinct_change(campaign):
    assert len(campaign.recipes) == MUTANTS
    assert campaign.original_content not in campaign.contents
    repeated = [c for c, n in collections.Counter(campaign.contents).items() if n > 1]
    assert not repeated, f"{len(repeated)} mutants are the same bytes as another"


def test_no_mutant_passes_hangs_crashes_or_raises(campaign):
    print(f"\n{_figure(campaign)}")
    print("\n".join(_per_kind(campaign)))
    bad = [
        f"{json.dumps(r)[:200]}: {o.verdict}: {o.message}\n{o.detail[-1500:]}"
        for r, o in zip(campaign.recipes, campaign.outcomes, strict=True)
        if o.verdict in fuzz_driver.BAD
    ]
    assert not bad, f"{_figure(campaign)}\n" + "\n".join(bad[:10])
    slow = [o.seconds for o in campaign.outcomes if o.seconds > DEADLINE_S]
    assert not slow


def test_index_entries_reach_tensorflow(campaign):
    """The checksummed rewrite of the index loads: crafted entries are judged on their values,
    not stopped at a checksum (fuzz_sstable writes what TensorFlow reads)."""
    (index,) = [i for i, r in enumerate(campaign.recipes) if r.get("table") == "rewritten"]
    failed = [
        rule
        for rule, status in fuzz_driver.statuses(campaign.outcomes[index].detail)
        if status == "FAIL"
    ]
    assert failed == ["fingerprint"], campaign.outcomes[index].detail


@pytest.mark.parametrize("crasher", CRASHERS, ids=[c["name"] for c in CRASHERS])
def test_crashers_are_refused_on_the_command_line(campaign, crasher):
    """Each once aborted or hung the checker (``before``); now the command line refuses it."""
    worker, cli = campaign.cli[crasher["name"]]
    assert cli.verdict in ("exit 1", "exit 2"), f"{cli.verdict}: {cli.message}\n{cli.detail}"
    assert "Check failed" not in cli.detail
    if crasher["recipe"]["op"] in ("craft", "fifo"):
        loads = dict(fuzz_driver.statuses(cli.detail)).get("loads")
        assert loads == "FAIL" and "refusing to load: " in cli.detail, cli.detail


@pytest.mark.parametrize("name", [c["name"] for c in CRASHERS] + list(CLI_KINDS))
def test_the_worker_agrees_with_the_command_line(campaign, name):
    worker, cli = campaign.cli[name]
    assert (cli.verdict, cli.message) == (worker.verdict, worker.message), (cli, worker)
    assert fuzz_driver.statuses(cli.detail) == fuzz_driver.statuses(worker.detail)


# -- the index reader that vets what TensorFlow is given ----------------------------------


def test_the_index_reader_agrees_with_tensorflow_on_several_blocks(tmp_path):
    # Keys of 70,000 bytes fill TensorFlow's 256 KiB blocks: an index of two data blocks.
    variables = {letter * 70_000: tf.Variable(float(i)) for i, letter in enumerate("abcdef")}
    tf.train.Checkpoint(**variables).write(str(tmp_path / "variables" / "variables"))
    table = (tmp_path / "variables" / "variables.index").read_bytes()
    assert len(fuzz_sstable.data_blocks(table)) == 2
    listed = {name for name, _ in tf.train.list_variables(str(tmp_path / "variables/variables"))}
    keys = [key.decode() for key, _ in checkpoint_index.entries(table)]
    assert keys[0] == "" and set(keys[1:]) == listed  # The header, then every tensor.
    checkpoint_index.vet(tmp_path)  # Nothing to refuse.


@pytest.mark.parametrize(
    "edit, expected",
    [
        ({"set": {"shape": [-5]}}, "has shape [-5]: expected every dimension at least 0"),
        ({"set": {"shape": {"ones": 255}}}, "(255 dimensions): expected at most 254 dimensions"),
        ({"set": {"shape": [1 << 32] * 2}}, "expected at most 2**63 - 1 elements"),
        ({"set": {"unknown_rank": True}}, "expected a known rank"),
        ({"set": {"dtype": 20}}, "has dtype 20: expected a tensor type of TensorFlow"),
        ({"set": {"slices": [[[0, -1]]]}}, "has a slice [(0, -1)]: expected one extent per"),
        ({"set": {"slices": [[[0, 1]]]}}, "has a slice [(0, 1)]: expected one extent per"),
    ],
)
def test_vet_names_what_it_expected_and_what_it_received(original, tmp_path, edit, expected):
    recipe = {"op": "craft", "file": fuzz_mutants.INDEX, "key": fuzz_mutants.KERNEL, **edit}
    path = fuzz_mutants.apply(recipe, original, tmp_path / "model")
    with pytest.raises(checkpoint_index.CheckpointError) as raised:
        checkpoint_index.vet(path)
    message = str(raised.value)
    assert expected in message and "\n" not in message, message
    assert f"'{fuzz_mutants.KERNEL}'" in message


@pytest.mark.parametrize("damage", ["compressed", "restart_inside_an_entry", "footer"])
def test_vet_refuses_tables_laid_out_otherwise_than_tensorflow_writes(original, tmp_path, damage):
    path = tmp_path / "model"
    shutil.copytree(original, path)
    index = path / fuzz_mutants.INDEX
    table = bytearray(index.read_bytes())
    ((offset, size),) = fuzz_sstable.data_blocks(bytes(table))
    if damage == "compressed":
        table[offset + size] = 1  # Snappy: what is inside cannot be vetted.
        expected = "has compression type 1: expected 0"
    elif damage == "restart_inside_an_entry":
        table[offset + size - 8 : offset + size - 4] = (3).to_bytes(4, "little")
        expected = "has a restart point at 3: expected every restart point at the start"
    else:
        table[-1] ^= 0xFF
        expected = "expected the table magic"
    index.write_bytes(bytes(table))
    with pytest.raises(checkpoint_index.CheckpointError) as raised:
        checkpoint_index.vet(path)
    assert str(raised.value).startswith("variables/variables.index")
    assert expected in str(raised.value), raised.value
