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


def test_quick_start_first_command_in_a_fresh_venv(tmp_path):
    repo = tmp_path / "repo"
    _copy_tracked_files(repo)
    venv, purelib, env = _fresh_venv(tmp_path)
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


DISTRIBUTION = "tfhub-exporter"  # "exporter" on the package registry is another project.


def test_the_distribution_installs_under_its_own_name(tmp_path):
    """``pip install "tfhub-exporter[convert]"`` from the built wheel installs ours, and the
    import name stays ``exporter``; every install line of the docs uses that name."""
    setup = (REPO / "setup.cfg").read_text()
    assert f"name = {DISTRIBUTION}\n" in setup
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    lines = [line for path in docs for line in path.read_text().splitlines()]
    installs = [line for line in lines if re.search(r"pip install [\"']?\w[\w-]*\[", line)]
    assert installs and all(f"{DISTRIBUTION}[" in line for line in installs), installs
    repo = tmp_path / "repo"
    _copy_tracked_files(repo)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(repo)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert [w.name.split("-")[0] for w in wheels.glob("*.whl")] == ["tfhub_exporter"]
    venv, purelib, env = _fresh_venv(tmp_path)
    pip = [venv / "bin" / "pip", "install", "--no-index", "--find-links", str(wheels)]
    # The suite's own install is visible from the fresh venv: force ours into it (its
    # dependencies are the suite's), then resolve the extra as a user would.
    for extra in (["--force-reinstall", "--no-deps"], []):
        done = subprocess.run(
            [*pip, *extra, f"{DISTRIBUTION}[convert]"],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    probe = (
        "import importlib.metadata as m, exporter; d = m.distribution('tfhub-exporter'); "
        "print(exporter.__file__); print('exporter/checking/savedmodel.py' in "
        "[str(f) for f in d.files]); print(any('onnxruntime' in r and 'convert' in r "
        "for r in d.requires))"
    )
    where, ours, extra = subprocess.run(
        [venv / "bin" / "python", "-c", probe],
        cwd=tmp_path, capture_output=True, text=True, env=env, check=True,
    ).stdout.split()  # fmt: skip
    assert where.startswith(purelib) and ours == extra == "True", (where, ours, extra)
