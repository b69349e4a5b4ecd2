"""What we print: our stage lines, not pages of TensorFlow's own logging.

TensorFlow's C++ side writes its log lines straight to the process's standard error (file
descriptor 2): a few while its libraries load ("All log messages before absl::InitializeLog()
is called", "Could not find cuda drivers"), then "failed call to cuInit", grappler notes
and, while the export's verify step checks that a too-small image is refused, "Local
rendezvous is aborting with status: INVALID_ARGUMENT: assertion failed". None of them is
ours, and some read as failures.

- ``quiet_native_logs`` runs from ``exporter/__init__.py`` before anything of ours imports
  TensorFlow. In our ``python -m exporter.<cli>`` commands it sets
  ``TF_CPP_MIN_LOG_LEVEL=3`` (TensorFlow reads it once, when it loads); in Python it
  changes no setting. TensorFlow then loads inside ``native_logs_filtered`` whenever it is
  first imported (``_QuietTensorFlowImport``): ``import exporter`` itself imports nothing
  slow.
- ``native_logs_filtered`` (``exporter.quiet_tensorflow_logs``) drops, while it is
  active, the lines on file descriptor 2 that have the C++ log format; everything else
  passes, in order. Our exports and ``save`` run inside it.
- A ``TF_CPP_MIN_LOG_LEVEL`` the user set themselves, and ``--verbosity`` / ``-v`` on a
  command line, turn both off: TensorFlow's logging is then theirs to manage. The "1" that
  ``import jax`` sets by default is not the user's (``user_level``).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import threading

from absl import logging as absl_logging

from exporter import progress

# 3: none of TensorFlow's C++ INFO, WARNING or ERROR lines in our CLIs (errors reach the user
# as exceptions).
_NATIVE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}
_VERBOSE_FLAGS = ("-v", "--v", "--verbosity")
# What jax sets when it is imported, with os.environ.setdefault: not the user's choice.
_JAX_LEVEL = "1"


def user_level(
    environ: dict | None = None, modules: dict | None = None, initial: dict | None = None
) -> str | None:
    """The ``TF_CPP_MIN_LOG_LEVEL`` the user chose, None if they chose none.

    ``import jax`` sets it to "1" unless it is set (``os.environ.setdefault``). So "1" with
    jax imported counts as the user's only if the process started with it (its initial
    environment, ``/proc/self/environ``); where that cannot be read, it counts as jax's.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    level = environ.get("TF_CPP_MIN_LOG_LEVEL")
    if level != _JAX_LEVEL or "jax" not in modules:
        return level
    initial = _initial_environment() if initial is None else initial
    return initial.get("TF_CPP_MIN_LOG_LEVEL")


def _initial_environment() -> dict:
    """The environment this process started with (Linux), else an empty one."""
    try:
        with open("/proc/self/environ", "rb") as file:
            entries = file.read().split(b"\0")
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in entries if entry)
    return {name: value for name, _, value in pairs}


# Read before we set anything: a level the user chose means they manage TensorFlow's logs.
_USER_LEVEL = user_level()
# A C++ log line (absl's format: "W1202 18:19:24.517804  3616 file.cc:412] ...", or before
# absl is set up "I0000 00:00:1796235660.696066  4222 port.cc:153] ..."), and the
# line absl prints before its logging is set up.
_NATIVE_LINE = re.compile(
    rb"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\s:\]]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."  # LiteRT's, at each load.
)
# What continues the C++ line before it: cpu_feature_guard's second line, an op error's
# indented "[[{{node ...}}]]".
_CONTINUATION = re.compile(rb"\s|To enable the following instructions")


def running_cli(argv: list[str] | None = None, modules: tuple[str, ...] | None = None) -> bool:
    """Whether this process is ``python -m exporter.<something>`` (one of ``modules``)."""
    argv = list(sys.orig_argv if argv is None else argv)
    pairs = zip(argv, argv[1:], strict=False)
    return any(
        flag == "-m" and module.startswith("exporter.") and (modules is None or module in modules)
        for flag, module in pairs
    )


# The export CLIs run TensorFlow's own CPU kernels, not oneDNN's (a value the user set is
# kept). oneDNN's allocator pools what it frees and never hands it back, so the model the
# export frees before verification reloads it would still be resident: ResNet50's export
# peaks at 1,027 MB instead of 1,130 MB (docs/performance.md). The SavedModel is the same graph. The
# embedding and conversion CLIs keep oneDNN, which is faster over many batches.
_EXPORT_CLIS = ("exporter.feature_vector", "exporter.classification")
_EXPORT_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def export_cli_environment() -> None:
    """In any of our CLIs, before Keras loads: the TensorFlow backend (``cli_backend``); in
    an export CLI, before TensorFlow loads: its CPU kernels without oneDNN."""
    cli_backend()
    if "tensorflow" not in sys.modules and running_cli(modules=_EXPORT_CLIS):
        for name, value in _EXPORT_ENV.items():
            os.environ.setdefault(name, value)


# What our commands run Keras on: they build, load and check TensorFlow graphs.
CLI_BACKEND = "tensorflow"


def cli_backend(environ=None, argv: list[str] | None = None) -> str | None:
    """In ``python -m exporter.<command>``, before Keras loads: run Keras on TensorFlow.

    A ``KERAS_BACKEND`` (or ``keras.json`` backend) that asks for another is set aside,
    said once on standard error; a model exported from a JAX or PyTorch process needs
    nothing of it (``.keras`` files and keras-hub presets load on any backend).

    Returns:
        The other backend the user's environment asked for, or None.
    """
    environ = os.environ if environ is None else environ
    if "keras" in sys.modules or not running_cli(argv):
        return None
    asked = environ.get("KERAS_BACKEND") or _keras_json_backend(environ)
    environ["KERAS_BACKEND"] = CLI_BACKEND
    if not asked or asked == CLI_BACKEND:
        return None
    sys.stderr.write(
        f"note: KERAS_BACKEND={asked} set aside: exporter's commands run Keras on "
        f"{CLI_BACKEND} (a SavedModel is a TensorFlow graph).\n"
    )
    return asked


def _keras_json_backend(environ) -> str | None:
    """The backend ``$KERAS_HOME/keras.json`` (or ``~/.keras/keras.json``) names, if any."""
    import json

    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as file:
            return json.load(file).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


def verbose(argv: list[str] | None = None) -> bool:
    """Whether the command line asks for ``--verbosity``/``-v`` (any value)."""
    argv = sys.argv if argv is None else argv
    return any(arg.split("=")[0] in _VERBOSE_FLAGS for arg in argv[1:])


def _filtering() -> bool:
    """Whether native log lines are ours to drop (see the module's docstring)."""
    if running_cli():
        return not verbose(sys.orig_argv[1:])
    return _USER_LEVEL is None


def is_native_log(line: bytes, after_native: bool = False) -> bool:
    """Whether ``line`` is (or, right after one, continues) a C++ log line of TensorFlow's."""
    return bool(_NATIVE_LINE.match(line) or (after_native and _CONTINUATION.match(line)))


class _NativeLogFilter(contextlib.ContextDecorator):
    """While active, file descriptor 2 is a pipe, and a thread copies on every line of it
    that is not a native log line to the real standard error. Re-entrant and thread-safe:
    the outermost use starts and stops it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._restore = None

    def __enter__(self):
        with self._lock:
            self._depth += 1
            if self._depth == 1 and _filtering():
                self._restore = _divert_stderr()
        return self

    def __exit__(self, *exc_info):
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._restore is not None:
                restore, self._restore = self._restore, None
                restore()
        return False


def _divert_stderr():
    """Send file descriptor 2 through ``_copy_kept_lines``; returns what undoes it."""
    sys.stderr.flush()
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    os.close(write)
    copier = threading.Thread(
        target=_copy_kept_lines, args=(read, os.dup(saved)), name="exporter-log-filter",
        daemon=True,
    )  # fmt: skip
    copier.start()

    def restore():
        sys.stderr.flush()
        os.dup2(saved, 2)  # Closes the pipe's last writer: the copier reads to its end.
        os.close(saved)
        # A child process still holding the pipe keeps it open: do not wait for it forever.
        copier.join(timeout=10)

    return restore


def _copy_kept_lines(read: int, out: int) -> None:
    """Copy what arrives on ``read`` to ``out``, less native log lines, until it closes.

    A line is held until its end only while it may still turn out to be native (it starts
    like one): a progress bar's partial line passes at once.
    """
    pending, after_native, passing = b"", False, False
    try:
        while chunk := os.read(read, 1 << 16):
            pending += chunk
            kept = []
            while pending:
                end = pending.find(b"\n")
                if passing or (end < 0 and not _may_be_native(pending)):
                    piece = pending if end < 0 else pending[: end + 1]
                    kept.append(piece)
                    pending, passing, after_native = pending[len(piece) :], end < 0, False
                    continue
                if end < 0:
                    break
                line, pending = pending[: end + 1], pending[end + 1 :]
                after_native = is_native_log(line, after_native)
                if not after_native:
                    kept.append(line)
            _write_all(out, b"".join(kept))
        if pending and not is_native_log(pending, after_native):
            _write_all(out, pending)
    finally:
        os.close(read)
        os.close(out)


def _may_be_native(start: bytes) -> bool:
    """Whether a line that begins with ``start`` could still turn out to be native."""
    return start[:1] in (b"I", b"W", b"E", b"F", b"T", b"\t", b" ")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


native_logs_filtered = _NativeLogFilter()


def quiet_tensorflow_logs() -> contextlib.AbstractContextManager:
    """A context (and decorator) in which TensorFlow's C++ log lines are not printed.

    Our exports use it themselves; wrap your own training in it too (the recipes do). Off
    when you set ``TF_CPP_MIN_LOG_LEVEL`` yourself. Everything else written to standard
    error passes, in order.

    Example:
        >>> with exporter.quiet_tensorflow_logs():
        ...     model.fit(data)
    """
    return native_logs_filtered


def quiet_native_logs() -> None:
    """Before TensorFlow loads: its C++ start-up lines filtered whenever it is imported.

    Cheap; imports nothing. In our CLIs, ``TF_CPP_MIN_LOG_LEVEL`` (kept if the user set it)
    also silences TensorFlow's own logging. ``import exporter`` runs this, and TensorFlow
    loads later, at its first import (ours, when a name that needs it is used, or the
    user's): ``_QuietTensorFlowImport`` runs that import inside ``native_logs_filtered``.
    """
    if not _filtering() or "tensorflow" in sys.modules:
        return
    if running_cli():
        for name, value in _NATIVE_ENV.items():
            os.environ.setdefault(name, value)
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as Python would, and has it loaded inside the filter (once).

    The lines printed while its libraries load come from absl's C++ logging, which no
    variable controls. An import error still surfaces, as a Python exception.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # Once: the real import, found the usual way.
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and _filtering():
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class DelegatingLoader(importlib.abc.Loader):
    """A loader that is another's in all but what a subclass overrides (``exec_module``)."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)

    def __getattr__(self, name):  # is_package, get_resource_reader, ...: the real loader's.
        return getattr(self._loader, name)


class _FilteredLoader(DelegatingLoader):
    """A loader that runs another's ``exec_module`` inside ``native_logs_filtered``."""

    def exec_module(self, module):
        with native_logs_filtered:
            self._loader.exec_module(module)
            # Listing the GPUs initializes CUDA: on a machine without one, "failed call to
            # cuInit" is printed now, filtered, instead of at the first op. It hides no GPU
            # and fixes no device setting (set_visible_devices still works after it).
            module.config.list_physical_devices("GPU")


def quiet_python_logs() -> None:
    """After absl parsed a CLI's flags: our stage lines at INFO, TensorFlow's at WARNING.

    TensorFlow's Python side logs through absl ("Writing fingerprint to ...", one line per
    sharding callback), and while saving it sets absl's verbosity and restores it from the
    ``--verbosity`` flag: so the flag itself is lowered, not a logger's level.
    ``--verbosity`` / ``-v`` keeps what the user asked for, and puts a time on our lines.
    """
    progress.enable_stage_lines()
    if verbose():
        progress.show_times()
    else:
        absl_logging.set_verbosity(absl_logging.WARNING)


# The library names Python arguments; a command line user types flags. A library message
# writes a switch as `name=True` and a value as `name="value"` or `name=VALUE`, after a space,
# a parenthesis or the start: never inside a path (`/tmp/out=3`).
_BEFORE = r"(?:(?<=[\s(])|^)"


def as_flags(message: str, names: tuple[str, ...]) -> str:
    """``message`` with the Python arguments ``names`` written as a CLI's flags.

    Only the arguments the CLI has as flags are translated: text from a model (a
    third-party hparam called ``weights``, say) in another CLI's report stays as it is.

    Example:
        >>> as_flags('Use weights="none", or pass overwrite=True.', ("weights", "overwrite"))
        'Use --weights=none, or pass --overwrite.'
    """
    for name in names:
        name = re.escape(name)
        message = re.sub(rf"{_BEFORE}{name}=True\b", f"--{name}", message)
        message = re.sub(rf'{_BEFORE}{name}="([^"]*)"', rf"--{name}=\1", message)
        message = re.sub(rf"{_BEFORE}{name}=(?=\S)", f"--{name}=", message)
    return message
