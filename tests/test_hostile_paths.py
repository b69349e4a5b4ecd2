"""Paths a user or a stranger hands us: links, devices, FIFOs, the root, someone's files.

Every refusal is one line that names the path, and leaves the disk as it was. The models
here are the three-feature ``_Reducer`` of test_unsafe_models.py, saved in milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_cli, tree_state
from test_unsafe_models import _Reducer, _save

import exporter
from exporter.checking import conformance, savedmodel
from exporter.making import save
from exporter.making.export import MAX_LABELS_BYTES
from exporter.use import convert


@pytest.fixture
def saved(tmp_path) -> Path:
    """A SavedModel directory (TensorFlow's own layout: no card, nothing foreign)."""
    return _save(_Reducer(), tmp_path / "model")


# -- where an export may go (issue 32, items 12, 13 and 15) ---------------------------------


def test_a_saved_model_may_be_replaced(saved):
    assert save.check_destination(saved, overwrite=True) == saved
    assert {p.name for p in saved.iterdir()} <= save.EXPORT_NAMES


def test_a_symlinked_out_is_refused_and_left_as_it_was(saved, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(saved)
    before = tree_state(tmp_path)
    with pytest.raises(exporter.ExportError, match="not a symbolic link") as raised:
        save.check_destination(link, overwrite=True)
    message = str(raised.value)
    assert str(link) in message and str(saved) in message and "\n" not in message
    assert "Nothing was changed" in message
    assert link.is_symlink() and tree_state(tmp_path) == before


@pytest.mark.parametrize("pb", [b"", b"\x08\x01"], ids=["empty", "no_meta_graph"])
def test_only_a_parseable_saved_model_pb_is_replaced(tmp_path, pb):
    out = tmp_path / "out"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(pb)
    with pytest.raises(exporter.ExportError, match="it is not a SavedModel: .*MetaGraph"):
        save.check_destination(out, overwrite=True)
    assert (out / "saved_model.pb").read_bytes() == pb


def test_a_saved_model_beside_foreign_files_is_not_replaced(saved):
    (saved / "main.py").write_text("print('mine')\n")
    (saved / ".git").mkdir()
    with pytest.raises(exporter.ExportError, match=r"it holds \.git, main\.py, which no export"):
        save.check_destination(saved, overwrite=True)
    assert (saved / "main.py").read_text() == "print('mine')\n"


@pytest.mark.parametrize("out", ["/", "/tmp/..", "//"])
def test_the_root_is_refused_in_one_line(out):
    with pytest.raises(exporter.ExportError, match="the root") as raised:
        save.check_destination(out, overwrite=True)
    assert "\n" not in str(raised.value)


def test_a_failed_fallback_move_puts_the_original_back(saved, tmp_path, monkeypatch):
    """Without renameat2, replacing is two renames; if the second fails, the first is undone
    (the error then says "Nothing was changed", and it is true)."""
    new = tmp_path / "new"
    new.mkdir()
    rename = os.rename

    def failing_rename(source, target):
        if Path(source) == new:
            raise OSError(28, "No space left on device")
        rename(source, target)

    monkeypatch.setattr(save, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", failing_rename)
    before = tree_state(saved)
    with pytest.raises(OSError, match="No space left"):
        save._move_into_place(new, saved)
    assert tree_state(saved) == before and sorted(os.listdir(tmp_path)) == ["model", "new"]


def test_cli_refuses_a_symlinked_out_in_one_line_and_means_it(saved, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(saved)
    before = tree_state(tmp_path)
    done = run_cli(
        "feature_vector", "--backbone=mobilenet_v2", "--weights=none", f"--out={link}",
        "--overwrite",
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Expected --out={link} to be a directory path, not a "), last
    assert f"(it links to {saved})" in last and "Nothing was changed" in last
    assert sorted(os.listdir(tmp_path)) == ["link", "model"]
    assert link.is_symlink() and tree_state(tmp_path) == before


# -- a labels file (item 16) -----------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def test_labels_are_read_from_regular_files_only(tmp_path, fifo):
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    for path, received in ((zero, "a character device"), (fifo, "a FIFO")):
        with pytest.raises(exporter.ExportError, match="regular file") as raised:
            exporter.read_labels(path)  # Neither blocks nor reads without end.
        assert str(path) in str(raised.value) and received in str(raised.value)
    large = tmp_path / "large.txt"
    with large.open("wb") as file:
        file.truncate(MAX_LABELS_BYTES + 1)  # Sparse: costs nothing.
    with pytest.raises(exporter.ExportError, match=f"{large} to be at most 67108864 bytes"):
        exporter.read_labels(large)
    (tmp_path / "ok.txt").write_text("cat\ndog\n")
    assert exporter.read_labels(tmp_path / "ok.txt") == ["cat", "dog"]


def test_cli_names_a_labels_file_that_is_a_device_in_one_line(tmp_path):
    before = tree_state(tmp_path)
    done = run_cli(
        "classification", "--backbone=mobilenet_v2", "--weights=none", "--num_classes=3",
        "--labels=/dev/zero", f"--out={tmp_path / 'out'}", timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "error: Cannot read labels file /dev/zero: Expected /dev/zero to be a regular file. "
        "Received a character device."
    ), last
    assert tree_state(tmp_path) == before


# -- where a conversion may go (item 14, and issue 35's missing folders) --------------------


def test_convert_never_writes_into_a_saved_model(saved, tmp_path):
    other = _save(_Reducer(), tmp_path / "other")
    link = tmp_path / "link"
    link.symlink_to(saved)
    before = tree_state(tmp_path)
    outs = {
        saved / "saved_model.pb": saved,  # The source's own graph, replaced by ONNX bytes.
        saved / "variables" / "model.onnx": saved,
        link / "model.onnx": link,
        other / "assets" / "new" / "model.onnx": other,  # Another SavedModel.
    }
    for out, around in outs.items():
        with pytest.raises(exporter.ExportError, match="outside any SavedModel") as raised:
            convert.convert(saved, out, to="onnx", overwrite=True)
        assert f"out={out}, inside the SavedModel {around}." in str(raised.value)
    assert tree_state(tmp_path) == before


def test_convert_makes_missing_folders_and_removes_them_on_failure(saved, tmp_path, monkeypatch):
    out = tmp_path / "a" / "b" / "model.tflite"
    done = convert.convert(saved, out, to="litert")
    assert done.path == out and out.is_file() and done.sidecar.is_file()

    def fail(*args):
        raise exporter.ExportError("verification failed")

    monkeypatch.setattr(convert, "_verify", fail)
    with pytest.raises(exporter.ExportError, match="verification failed"):
        convert.convert(saved, tmp_path / "c" / "d" / "model.tflite", to="litert")
    assert sorted(os.listdir(tmp_path)) == ["a", "model"]


# -- a truncated variables file (item 18) ----------------------------------------------------

DATA = "variables/variables.data-00000-of-00001"


@pytest.fixture
def truncated(saved) -> Path:
    data = saved / DATA
    os.truncate(data, data.stat().st_size - 2)
    return saved


def _error(consumer: str, path: Path) -> str:
    """What ``consumer`` says of the SavedModel at ``path``: one line, or its failed rule."""
    if consumer == "check":
        results = conformance.check(path).results
        return next(f"{r.rule}: {r.message}" for r in results if r.status == conformance.FAIL)
    opening = {
        "load": lambda: savedmodel.load(path),
        "convert": lambda: convert.convert(path, path.parent / "model.onnx", to="onnx"),
        "keras_layer": lambda: exporter.KerasLayer(str(path)),
        "embed": lambda: pytest.importorskip("exporter.use.embed").describe_model(str(path)),
    }
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the type differs by consumer.
        opening[consumer]()
    return str(raised.value)


@pytest.mark.parametrize("consumer", ["load", "check", "convert", "keras_layer", "embed"])
def test_a_truncated_variables_file_is_named_by_every_consumer(truncated, consumer):
    message = _error(consumer, truncated)
    size = (truncated / DATA).stat().st_size
    assert f"{DATA} is truncated: expected at least {size + 2} bytes" in message, message
    assert f"Received {size} bytes" in message and "\n" not in message
