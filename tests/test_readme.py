"""The README's quick start works as written, and its facts match the code."""

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

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
    assert registry.table() in README


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


def test_quick_start_first_command_in_a_fresh_venv(tmp_path):
    repo = tmp_path / "repo"
    _copy_tracked_files(repo)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The fresh venv sees the packages this suite runs with (TensorFlow is 600 MB), so `pip
    # install .` only installs the project itself.
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c", where],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "suite-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
           "KERAS_HOME": str(tmp_path / "keras-home"), "VIRTUAL_ENV": str(venv)}  # fmt: skip
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["bash", "-c", quick_start_commands()[0]], cwd=repo, env=env,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Downloading data from" not in output
    installed = subprocess.run(
        [venv / "bin" / "python", "-c", "import exporter; print(exporter.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    assert installed.startswith(purelib), installed
    obj = tf.saved_model.load(str(repo / "exports" / "mobilenet_v2"))
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
