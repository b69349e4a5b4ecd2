"""Issue 12, I/O faults: each fails with one line naming the cause, and changes nothing.

Every case runs the real CLI in a child process onto an existing, valid export with
``--overwrite`` (or beside it), and then requires: a non-zero exit, no traceback, a last
line ``error: ...`` naming the cause, no temporary sibling, and the old export untouched.
"""

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from conftest import REPO, tree_state

import exporter

pytestmark = pytest.mark.stress


@pytest.fixture(scope="module")
def old_export(export, tmp_path_factory):
    """A valid export to overwrite, in a folder every user may read."""
    root = tmp_path_factory.mktemp("io-faults")
    out = root / "out"
    shutil.copytree(export("feature_vector", "mobilenet_v2", "none"), out)
    return out


def _run(module: str, flags: list[str], preexec=None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_HOME": "/tmp/keras-home-stress"}
    return subprocess.run(
        [sys.executable, "-m", f"exporter.{module}", *flags],
        cwd=REPO, env=environ, preexec_fn=preexec, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


def _assert_one_line_and_nothing_changed(done, messages, root: Path, before: dict) -> str:
    assert done.returncode != 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    assert any(m in last for m in messages), (messages, last)
    assert tree_state(root) == before  # No temporary sibling; the old export untouched.
    return last


def _labels_cases(tmp: Path) -> dict:
    def write(name: str, content: bytes) -> Path:
        path = tmp / name
        path.write_bytes(content)
        return path

    if os.geteuid() == 0:  # Root reads past permission bits; a directory it cannot read.
        unreadable = tmp / "unreadable.txt"
        unreadable.mkdir()
    else:
        unreadable = write("unreadable.txt", b"a\nb\nc\n")
        unreadable.chmod(0o000)
    return {
        "unreadable": (unreadable, ["Permission denied", "Is a directory", "a directory"]),
        "not UTF-8": (write("latin1.txt", "caf\xe9\nb\nc\n".encode("latin-1")), ["UTF-8"]),
        "empty": (write("empty.txt", b""), ["Received 0 labels"]),
        "one too many": (write("four.txt", b"a\nb\nc\nd\n"), ["Received 4 labels"]),
        "one too few": (write("two.txt", b"a\nb\n"), ["Received 2 labels"]),
    }


@pytest.mark.parametrize(
    "case", ["unreadable", "not UTF-8", "empty", "one too many", "one too few"]
)
def test_bad_labels_file(old_export, tmp_path, case):
    path, messages = _labels_cases(tmp_path)[case]
    before = tree_state(old_export.parent)
    flags = ["--backbone=mobilenet_v2", "--weights=none", "--num_classes=3",
             f"--labels={path}", f"--out={old_export}", "--overwrite"]  # fmt: skip
    done = _run("classification", flags)
    last = _assert_one_line_and_nothing_changed(done, messages, old_export.parent, before)
    print(f"\nlabels {case}: {last}")


def _weights_cases(tmp: Path, weights_file) -> dict:
    good = weights_file("mobilenet_v2")
    truncated = tmp / "truncated.weights.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp / "empty.weights.h5"
    empty.write_bytes(b"")
    marker = tmp / "lambda-ran"
    lambda_file = tmp / "lambda.keras"

    def leave_a_mark(x):
        marker.write_text("the Lambda layer's code ran")
        return x

    inputs = keras.Input((None, None, 3))
    model = exporter.get_backbone("mobilenet_v2").build(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    keras.Model(inputs, keras.layers.Lambda(leave_a_mark)(model(inputs))).save(lambda_file)
    marker.unlink()  # Building the model ran it once, here in the test.
    return {
        "truncated": (truncated, ["truncated", "does not fit"]),
        "zero bytes": (empty, ["empty", "does not fit"]),
        "another architecture": (weights_file("resnet50"), ["does not fit mobilenet_v2"]),
        "keras file with a Lambda": (lambda_file, ["does not fit mobilenet_v2"]),
    }, marker


@pytest.mark.parametrize(
    "case", ["truncated", "zero bytes", "another architecture", "keras file with a Lambda"]
)
def test_bad_weights_file(old_export, tmp_path, weights_file, case):
    cases, marker = _weights_cases(tmp_path, weights_file)
    path, messages = cases[case]
    before = tree_state(old_export.parent)
    flags = ["--backbone=mobilenet_v2", f"--weights={path}", f"--out={old_export}", "--overwrite"]
    done = _run("feature_vector", flags)
    last = _assert_one_line_and_nothing_changed(done, messages, old_export.parent, before)
    assert not marker.exists(), "loading weights ran the code of a Lambda layer"
    print(f"\nweights {case}: {last}")


def _mount_tmpfs(mount: Path, size: str) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"this machine lets no test mount a tmpfs: {done.stderr.strip()}")


def _copy_of(old_export: Path, parent: Path) -> Path:
    out = parent / "out"
    shutil.copytree(old_export, out)
    return out


def test_read_only_parent(old_export, tmp_path):
    parent = tmp_path / "read-only"
    parent.mkdir()
    root = os.geteuid() == 0  # Root writes past permission bits: a read-only mount then.
    if root:
        _mount_tmpfs(parent, "64m")
    try:
        out = _copy_of(old_export, parent)
        if root:
            subprocess.run(["mount", "-o", "remount,ro", str(parent)], check=True)
        else:
            parent.chmod(0o555)
        before = tree_state(parent)
        flags = ["--backbone=mobilenet_v2", "--weights=none", f"--out={out}", "--overwrite"]
        done = _run("feature_vector", flags)
        messages = ["Read-only file system", "Permission denied"]
        last = _assert_one_line_and_nothing_changed(done, messages, parent, before)
    finally:
        if root:
            subprocess.run(["umount", str(parent)], check=True)
        else:
            parent.chmod(0o755)
    print(f"\nread-only parent: {last}")


def test_file_size_limit(old_export):
    before = tree_state(old_export.parent)
    flags = ["--backbone=mobilenet_v2", "--weights=none", f"--out={old_export}", "--overwrite"]
    done = _run("feature_vector", flags, _limit_file_size)
    last = _assert_one_line_and_nothing_changed(done, ["File too large"], old_export.parent, before)
    print(f"\nfile-size limit: {last}")


def test_no_space_left_on_a_small_tmpfs(old_export, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    _mount_tmpfs(mount, "4m")
    try:
        shutil.copytree(old_export / "assets.extra", mount / "out" / "assets.extra")
        shutil.copy(old_export / "saved_model.pb", mount / "out" / "saved_model.pb")
        before = tree_state(mount)
        flags = ["--backbone=mobilenet_v2", "--weights=none", f"--out={mount / 'out'}",
                 "--overwrite"]  # fmt: skip
        done = _run("feature_vector", flags)
        last = _assert_one_line_and_nothing_changed(
            done, ["No space left on device"], mount, before
        )
        print(f"\nno space (4 MB tmpfs): {last}")
    finally:
        subprocess.run(["umount", str(mount)], check=True)
