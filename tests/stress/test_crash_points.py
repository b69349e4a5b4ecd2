"""Crash points: an export stopped at any moment leaves ``--out`` whole, old or new, never a mix.

Each run replaces an existing export (``--overwrite``) with one of other weights, and is
stopped by a signal at a random moment: aimed at a stage by waiting for its log line, then a
random part of that stage's measured length (``move``: right after ``verify done``), or at a
random moment from the start. After every stop ``--out`` must have the content of the old
export (its files untouched) or of the new one, both proven by ``python -m exporter.check``
(the ``two_exports`` fixture runs it on each). Only the stopped run's own hidden temporary
may remain, once the run got past the point where it sweeps earlier ones. After SIGTERM or
SIGINT nothing at all may remain, and the run says in one line that it was interrupted and
what --out holds. Runs go in two lanes, each with its own ``--out``, one per core.

Environment: ``EXPORTER_STRESS_KILLS`` (SIGKILLs, default 30), ``EXPORTER_STRESS_SIGNALS``
(SIGTERMs and SIGINTs, each; default 3), ``EXPORTER_STRESS_SEED`` (default: drawn, printed).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import random
import shutil
import signal
import time
from pathlib import Path

import export_runs
import pytest
from conftest import tree_state
from export_runs import SEED, STAGES, Export, content, leftovers

pytestmark = pytest.mark.stress

KILLS = int(os.environ.get("EXPORTER_STRESS_KILLS", "30"))
SIGNALS = int(os.environ.get("EXPORTER_STRESS_SIGNALS", "3"))
LANES = 2
# Of 30 SIGKILLs, how many aim at each stage: a late stage costs the whole export up to it.
AIMS = {"anywhere": 4, "build": 6, "trace": 8, "save": 6, "verify": 3, "move": 3}
MOVE_DELAY = 0.003  # Seconds: the move (a rename, then removing the old copy) takes a few ms.
HIT = (*STAGES, "move")  # Every one of these must be hit by at least one SIGKILL.
SWEPT = ("trace", "save", "verify", "move", "completed")  # Stages after the sweep of leftovers.


@pytest.fixture(scope="module")
def two_exports(workdir):
    return export_runs.two_exports(workdir)


@dataclasses.dataclass
class Shot:
    signum: int
    aim: str  # A stage, or "anywhere".
    fraction: float  # Of the aimed stage's length (of the whole run for "anywhere").
    lane: int = 0
    delay: float = 0.0  # Seconds after the aimed stage's line (after the start: "anywhere").
    stage: str = ""  # Where the run was when the signal ended it.
    outcome: str = ""  # What --out held after: "old" or "new".
    problems: list[str] = dataclasses.field(default_factory=list)


class _Pace:
    """How long each stage takes in a lane now: first as in the ``two_exports`` runs, then
    as in the lane's last run that logged it (the machine's load changes)."""

    def __init__(self, lengths: dict[str, float]):
        self.length = {**lengths, "move": MOVE_DELAY}

    def update(self, run: Export, shot: Shot) -> None:
        lengths = run.stage_lengths()
        if shot.aim == "anywhere":  # Its lines were read only after the signal.
            lengths.pop("start", None)
        self.length.update(lengths)

    def begins(self, aim: str) -> float:
        """Seconds from a run's start to ``aim``'s line (to its end for "anywhere")."""
        before = STAGES if aim not in STAGES else STAGES[: STAGES.index(aim)]
        return self.length["start"] + sum(self.length[stage] for stage in before)

    def delay(self, shot: Shot) -> float:
        span = self.begins("anywhere") if shot.aim == "anywhere" else self.length[shot.aim]
        return shot.fraction * span


def _plan(rng: random.Random, lengths: dict[str, float]) -> list[Shot]:
    begins = [*STAGES, "move"]
    kills = [
        Shot(signal.SIGKILL, aim, rng.random()) for aim, n in AIMS.items() for _ in range(_share(n))
    ]
    # SIGTERM and SIGINT: every stage by one of them, the rest at random stages.
    aims = rng.sample(begins, len(begins)) + rng.choices(begins, k=max(0, 2 * SIGNALS - 5))
    interrupts = (signal.SIGTERM, signal.SIGINT)
    signals = [Shot(interrupts[i % 2], aim, rng.random()) for i, aim in enumerate(aims)]
    shots = kills + signals[: 2 * SIGNALS]
    rng.shuffle(shots)
    # Balance the lanes by what each shot costs: about the time until its signal.
    pace = _Pace(lengths)
    cost = {aim: pace.delay(Shot(0, aim, 0.5)) for aim in AIMS}
    cost.update({aim: cost[aim] + pace.begins(aim) for aim in AIMS if aim != "anywhere"})
    loads = [0.0] * LANES
    for one in sorted(shots, key=lambda s: -cost[s.aim]):
        one.lane = loads.index(min(loads))
        loads[one.lane] += cost[one.aim]
    return shots


def _share(n: int) -> int:
    return max(1, round(n * KILLS / sum(AIMS.values())))


def _fire(shot: Shot, run: Export, pace: _Pace) -> None:
    if shot.aim != "anywhere":
        marker = "verify done" if shot.aim == "move" else f"{shot.aim} "
        if not run.wait_for(marker):
            shot.problems.append(f"the run ended before {marker!r}")
    shot.delay = pace.delay(shot)
    time.sleep(shot.delay)
    run.send(shot.signum)


def _lane(out: Path, shots: list[Shot], two_exports) -> list[str]:
    """Fire ``shots`` one after the other at exports to ``out``; then one uninterrupted export.

    Returns the problems of the final export.
    """
    contents = two_exports.contents
    pace = _Pace(two_exports.lengths)
    holds = 0  # Which of the two exports `out` holds.
    for shot in shots:
        new = 1 - holds
        untouched = tree_state(out)
        run = Export(out, two_exports.weights[new])
        _fire(shot, run, pace)
        code = run.finish()
        pace.update(run, shot)
        shot.stage = run.stage()
        after = content(out)
        found = leftovers(out)
        if after == contents[holds]:
            shot.outcome = "old"
        elif after == contents[new]:
            shot.outcome, holds = "new", new
        else:
            shot.outcome = "missing" if after is None else "mixed"
            differences = _differences(after, contents[holds], contents[new])
            shot.problems.append(f"--out is {shot.outcome}: {differences}")
        if shot.outcome == "old" and tree_state(out) != untouched:
            shot.problems.append("--out holds the old content, but its files were rewritten")
        if shot.outcome == "new" and shot.stage not in ("move", "completed"):
            shot.problems.append("--out was replaced before the export was verified")
        if shot.outcome == "old" and shot.stage == "completed":
            shot.problems.append("the run logged 'exported to' but --out is the old export")
        if run.hung:
            shot.problems.append("the run hung and was killed by the watchdog")
        strangers = sorted(name for name, pid in found.items() if pid == -1)
        if strangers:
            shot.problems.append(f"unexpected files beside --out: {strangers}")
        if shot.signum == signal.SIGKILL:
            stale = sorted(name for name, pid in found.items() if pid not in (run.pid, -1))
            if stale and shot.stage in SWEPT:
                shot.problems.append(f"an earlier run's leftovers were not removed: {stale}")
            if code not in (-signal.SIGKILL, 0):
                shot.problems.append(f"exit status {code}")
        else:
            shot.problems += _interrupt_problems(run, code, shot, found)
        if shot.problems:
            where = f"{_describe(shot)}, pid {run.pid}"
            shot.problems = [f"{p} [{where}]\n{run.log}" for p in shot.problems]
            shutil.rmtree(out, ignore_errors=True)  # Go on from a known state.
            shutil.copytree(two_exports.paths[holds], out)
    final = Export(out, two_exports.weights[1 - holds])
    problems = []
    if final.finish() != 0:
        problems.append(f"the export after the kills failed:\n{final.log}")
    elif content(out) != contents[1 - holds]:
        problems.append("the export after the kills did not leave the new export in --out")
    if leftovers(out):
        problems.append(f"the export after the kills left {sorted(leftovers(out))}")
    return problems


def _interrupt_problems(run: Export, code: int, shot: Shot, found: dict) -> list[str]:
    # Its own temporary is removed; an earlier SIGKILL's stays until a run gets to the sweep.
    left = sorted(name for name, pid in found.items() if pid == run.pid or shot.stage in SWEPT)
    problems = [f"left behind: {left}"] if left else []
    last = run.lines[-1][1] if run.lines else ""
    if "Traceback" in run.log:
        problems.append("a traceback")
    if shot.stage == "completed":  # After 'exported to' a signal just ends the process.
        if code not in (0, -shot.signum):
            problems.append(f"completed, then exited with {code}")
    elif code != 128 + shot.signum or not last.startswith("error: interrupted"):
        # 130 after SIGINT, 143 after SIGTERM (docs/command-line.md's exit statuses).
        problems.append(f"exit status {code}, not one line saying it was interrupted")
    elif ("left as it was" in last) != (shot.outcome == "old"):
        problems.append(f"said {last!r} but --out holds the {shot.outcome} export")
    return problems


def _describe(shot: Shot) -> str:
    name = signal.Signals(shot.signum).name
    return f"{name} aimed at {shot.aim} + {shot.delay:.3f} s, hit {shot.stage}, seed {SEED}"


def _differences(after, old, new) -> str:
    """Which files of --out are the old export's, the new one's, or neither's."""
    if after is None:
        return "no directory"
    origin = {
        name: "old" if digest == old.get(name) else "new" if digest == new.get(name) else "?"
        for name, digest in after.items()
    }
    missing = sorted(set(old) - set(after))
    return f"{'; '.join(f'{name}: {o}' for name, o in origin.items())}; missing: {missing}"


@pytest.fixture(scope="module")
def campaign(two_exports, tmp_path_factory):
    """Every shot, fired in lanes; and each lane's final export's problems."""
    rng = random.Random(SEED)
    shots = _plan(rng, two_exports.lengths)
    outs = []
    for lane in range(LANES):
        out = tmp_path_factory.mktemp(f"lane{lane}") / "model"
        shutil.copytree(two_exports.paths[0], out)
        outs.append(out)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(LANES) as pool:
        finals = list(
            pool.map(
                lambda lane: _lane(outs[lane], [s for s in shots if s.lane == lane], two_exports),
                range(LANES),
            )
        )
    print(f"\n{len(shots)} runs stopped in {LANES} lanes in {time.monotonic() - started:.0f} s")
    return shots, [problem for final in finals for problem in final]


def _tally(shots: list[Shot], key: str) -> str:
    counts = collections.Counter(getattr(shot, key) for shot in shots)
    order = ["start", *HIT, "completed", "old", "new", "missing", "mixed"]
    return ", ".join(f"{name} {counts[name]}" for name in order if counts[name])


def test_sigkill_at_any_moment_leaves_out_old_or_new(campaign):
    shots, final_problems = campaign
    kills = [shot for shot in shots if shot.signum == signal.SIGKILL]
    intact = [shot for shot in kills if shot.outcome in ("old", "new")]
    problems = [problem for shot in kills for problem in shot.problems] + final_problems
    moved = [shot for shot in kills if shot.stage == "move"]  # Before the swap: old; after: new.
    missed = [stage for stage in HIT if not any(shot.stage == stage for shot in kills)]
    if missed:
        problems.append(f"no SIGKILL hit {missed}")
    figure = (
        f"{len(intact)}/{len(kills)} SIGKILLs: --out intact ({_tally(kills, 'outcome')}); "
        f"stages hit: {_tally(kills, 'stage')} (in move: {_tally(moved, 'outcome')}); "
        f"leftovers removed by the next export: "
        f"{'yes' if not final_problems else 'NO'}; seed {SEED}"
    )
    print(figure)
    assert not problems, figure + "\n" + "\n".join(problems)


def test_sigterm_and_sigint_leave_nothing_behind(campaign):
    shots, _ = campaign
    interrupts = [shot for shot in shots if shot.signum != signal.SIGKILL]
    clean = [shot for shot in interrupts if not shot.problems]
    problems = [problem for shot in interrupts for problem in shot.problems]
    kinds = collections.Counter(signal.Signals(shot.signum).name for shot in interrupts)
    figure = (
        f"{len(clean)}/{len(interrupts)} SIGTERM/SIGINT ({kinds['SIGTERM']}/{kinds['SIGINT']}): "
        f"nothing left behind, --out intact ({_tally(interrupts, 'outcome')}), one-line error; "
        f"stages hit: {_tally(interrupts, 'stage')}; seed {SEED}"
    )
    print(figure)
    assert not problems, figure + "\n" + "\n".join(problems)
