"""The README's quick start works as written, and its facts match the code."""

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from exporter.making import registry

README = (REPO / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_backbone_table_matches_the_registry():
    assert registry.table() in (REPO / "docs" / "backbones.md").read_text()


def _copy_tracked_files(destination: Path) -> None:
    listed = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)


def _fresh_venv(tmp_path: Path) -> tuple[Path, str, dict]:
    """A new venv that sees the packages this suite runs with (TensorFlow is 600 MB), so a
    ``pip install`` there installs only the project itself: (venv, its purelib, env)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c", where],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "suite-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
           "KERAS_HOME": str(tmp_path / "keras-home"), "VIRTUAL_ENV": str(venv)}  # fmt: skip
    env.pop("PYTHONPATH", None)
    return venv, purelib, env


# Pages in the order a reader meets them: the README, then the docs as mkdocs lists them.
PAGES = ["README.md"] + [
    f"docs/{name}" for name in re.findall(r":\s*(\S+\.md)", (REPO / "mkdocs.yml").read_text())
]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RUN = {"bash", "python"}
# Blocks shown but not run here, by their first line, each with the reason. A synopsis
# (placeholders such as NAME, [--flag], a|b) is grammar, not a command, and is recognised by
# its placeholders.
NOT_RUN = {
    'pip install ".[test]" && python -m pytest': "this suite: CI runs it as written",
    'python -m pytest -m "not slow and not stress"': "this suite's quick tier: a part of it",
    "python benchmarks/compare.py": "a benchmark of many exports (an hour on 2 cores)",
    "python benchmarks/compare.py --figures=export --exporters=ours,keras3": (
        "a benchmark of 28 exports (8 minutes on 2 cores)"
    ),
    'pip install "tfhub-exporter[beam]" "apache-beam[gcp]"': "Dataflow: needs a Google Cloud"
    " project and bucket (the wheel name it stages is checked with the wheel's build)",
    "python -m exporter.convert exports/my_classifier --to=litert "
    "--out=my_classifier_int8.tflite --quantize=int8 --calibration=~/photos --io=uint8": (
        "int8 needs a trained model and real photos: random weights on three random-pixel "
        "files are refused by the verification, as they should be; tests/test_quantize.py "
        "runs the same command on a CNN it trains"
    ),
    "# my_classifier_int8.tflite: converted with --quantize=int8 --io=uint8": (
        "needs the int8 file of the block above; tests/test_quantize.py feeds uint8 pixels "
        "the same way"
    ),
    'import os; os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported': "JAX may be"
    " absent; tests/test_backends.py exports from JAX and PyTorch processes",
}
SYNOPSIS = re.compile(r"\[--|=[A-Z][A-Z_]*\b|\w\|\w")


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0]


def doc_blocks() -> list[tuple[str, int, str, str]]:
    """Every fenced block of the README and the docs: (page, line, language, text)."""
    blocks = []
    for page in PAGES:
        text = (REPO / page).read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((page, line, match.group(1), match.group(2)))
    return blocks


def test_every_block_is_run_or_says_why_not():
    """A command is never hidden in a block the runner skips: a ``text`` block is a
    synopsis or listed in NOT_RUN, and fences are bash, python, text or json."""
    blocks = doc_blocks()
    assert len(blocks) > 20
    for page, line, language, text in blocks:
        where = f"{page}:{line}"
        assert language in RUN | {"text", "json"}, f"{where}: fence {language!r}"
        if language == "text" and _first_line(text) not in NOT_RUN:
            commands = text.replace("\\\n", " ").strip().split("\n")
            unlisted = [command for command in commands if not SYNOPSIS.search(command)]
            assert not unlisted, f"{where}: a runnable command in a text block: {unlisted}"
    shown = {_first_line(text) for *_, text in blocks}
    assert not set(NOT_RUN) - shown, f"NOT_RUN lists blocks no page shows: {set(NOT_RUN) - shown}"


def offline(language: str, text: str) -> str:
    """The one change offline: registered backbones get random weights (no download)."""
    if language == "python":
        return text.replace('weights="imagenet"', 'weights="none"')
    names = set(registry.names())
    lines = []
    for line in text.split("\n"):
        backbone = re.search(
            r"exporter\.(?:feature_vector|classification) .*--backbone=(\S+)", line
        )
        if backbone and backbone.group(1) in names and "--weights=" not in line:
            line += " --weights=none"
        lines.append(line)
    return "\n".join(lines)


def _user_files(repo: Path, home: Path) -> None:
    """What the pages assume the reader has: ``~/photos`` and a ``labels.txt``."""
    from PIL import Image

    photos = home / "photos"
    photos.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels[0]).save(photos / "cat.jpg")
    Image.fromarray(pixels[1]).save(photos / "dog.png")
    Image.fromarray(pixels[2]).convert("L").save(photos / "bird.jpg")
    (photos / "notes.txt").write_text("not an image\n")
    (repo / "labels.txt").write_text("\n".join(f"class_{i}" for i in range(10)) + "\n")


def _reader_session(runner, scratch: Path) -> Path:
    """The processes of the test below, run beside the suite (tests/background.py); the
    checkout they ran in."""
    repo, home = scratch / "repo", scratch / "home"
    _copy_tracked_files(repo)
    _user_files(repo, home)
    venv, purelib, env = _fresh_venv(scratch)
    env["HOME"] = str(home)
    done = runner.run(
        ["bash", "-c", quick_start_commands()[0]], cwd=repo, env=env, timeout=900
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Downloading data from" not in output
    installed = subprocess.run(
        [venv / "bin" / "python", "-c", "import exporter; print(exporter.__file__)"],
        cwd=scratch, capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    assert installed.startswith(purelib), installed
    seen, failures, ran = set(), [], 0
    for page, line, language, text in doc_blocks():
        # The quick start: its first command ran above, its second is this suite.
        quick_start = text.strip().split("\n") == quick_start_commands()
        if language not in RUN or _first_line(text) in NOT_RUN or text in seen or quick_start:
            continue
        seen.add(text)
        source = offline(language, text)
        if language == "python":
            command = [str(venv / "bin" / "python"), "-c", source]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", source]
        done = runner.run(command, cwd=repo, env=env, timeout=900)
        ran += 1
        if done.returncode != 0:
            failures.append(f"{page}:{line} exit {done.returncode}\n{done.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert ran >= 15, ran
    # What the blocks claim to write is there.
    made = ["exports/mobilenet_v2_cls", "mobilenet_v2.tflite", "mobilenet_v2.onnx"]
    made += ["exports/vit_new_head", "exports/mine_affine", "exports/my_classifier"]
    for path in made:
        assert (repo / path).exists(), path
    assert sorted(p.name for p in repo.glob("embeddings/photos-errors-*.jsonl"))
    return repo


@pytest.mark.slow  # A fresh venv, then every block of the pages, each in a fresh process.
@pytest.mark.background(job=_reader_session)
def test_every_readme_and_docs_block_runs_as_written(background):
    """A reader's session: in a fresh venv, the quick start's first command, then every
    bash and python block of the README and the docs in page order, in one checkout, as
    written (only ``--weights=none`` / ``weights="none"`` added: no downloads here).
    A block printed twice (the README and a page) runs once. The quick start's export
    (written again by the README's Python example, as the same feature vector) loads."""
    obj = tf.saved_model.load(str(background / "exports" / "mobilenet_v2"))
    assert obj(tf.zeros([1, 224, 224, 3])).shape == (1, 1280)


def test_docs_list_the_rules_as_declared():
    from exporter.checking import conformance

    assert conformance.rules_table() in (REPO / "docs" / "checking.md").read_text()


def test_performance_page_quotes_the_results_file_it_cites():
    """docs/performance.md is the cited run's own tables, not figures typed in by hand."""
    page = (REPO / "docs" / "performance.md").read_text()
    cited = re.findall(r"benchmarks/results/(compare-\w+)\.md", page)
    assert cited, "docs/performance.md cites no results file"
    for stem in set(cited):
        rows = [
            line
            for line in (REPO / "benchmarks" / "results" / f"{stem}.md").read_text().splitlines()
            if line.startswith("|")
        ]
        assert rows
        missing = [row for row in rows if row not in page]
        assert not missing, f"{len(missing)} rows of {stem}.md differ, first: {missing[0]}"


DISTRIBUTION = "tfhub-exporter"  # "exporter" on the package registry is another project.


def _wheel_install(runner, scratch: Path) -> None:
    """The wheel built from the checkout and installed in a fresh venv, as a user would,
    beside the suite (tests/background.py)."""
    repo = scratch / "repo"
    _copy_tracked_files(repo)
    wheels = scratch / "wheels"
    done = runner.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(repo)],
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    built = [w.name for w in wheels.glob("*.whl")]
    assert [name.split("-")[0] for name in built] == ["tfhub_exporter"]
    # The Dataflow example (not run here) stages the wheel by its file name.
    assert f"dist/{built[0]}" in (REPO / "docs" / "embedding.md").read_text(), built
    venv, purelib, env = _fresh_venv(scratch)
    pip = [venv / "bin" / "pip", "install", "--no-index", "--find-links", str(wheels)]
    # The suite's own install is visible from the fresh venv: force ours into it (its
    # dependencies are the suite's), then resolve the extra as a user would.
    for extra in (["--force-reinstall", "--no-deps"], []):
        done = runner.run([*pip, *extra, f"{DISTRIBUTION}[convert]"], env=env, timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    probe = (
        "import importlib.metadata as m, exporter; d = m.distribution('tfhub-exporter'); "
        "print(exporter.__file__); print('exporter/checking/savedmodel.py' in "
        "[str(f) for f in d.files]); print(any('onnxruntime' in r and 'convert' in r "
        "for r in d.requires))"
    )
    done = runner.run([venv / "bin" / "python", "-c", probe], cwd=scratch, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    where, ours, extra = done.stdout.split()
    assert where.startswith(purelib) and ours == extra == "True", (where, ours, extra)


@pytest.mark.slow  # Builds the wheel and installs it in a fresh venv.
@pytest.mark.background(job=_wheel_install)
def test_the_distribution_installs_under_its_own_name(background):
    """``pip install "tfhub-exporter[convert]"`` from the built wheel installs ours, and the
    import name stays ``exporter``; every install line of the docs uses that name."""
    setup = (REPO / "setup.cfg").read_text()
    assert f"name = {DISTRIBUTION}\n" in setup
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    lines = [line for path in docs for line in path.read_text().splitlines()]
    installs = [line for line in lines if re.search(r"pip install [\"']?\w[\w-]*\[", line)]
    assert installs and all(f"{DISTRIBUTION}[" in line for line in installs), installs
