"""What our command lines print: stage lines, not pages of TensorFlow's own logging.

TensorFlow's C++ logging is read from the environment once, when TensorFlow is imported,
so ``quiet_native_logs`` runs from ``exporter/__init__.py`` before anything else imports
it, and only when the process is one of our ``python -m exporter.<cli>`` commands. A
variable the user set is kept, and ``--verbosity`` / ``-v`` brings everything back.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from absl import logging as absl_logging

# 3: none of TensorFlow's C++ INFO, WARNING or ERROR lines (errors reach the user as
# exceptions). Among them: "Local rendezvous is aborting with status: INVALID_ARGUMENT:
# assertion failed", printed when verify's too-small-image rule is *passing*.
_NATIVE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}
_VERBOSE_FLAGS = ("-v", "--v", "--verbosity")


def running_cli(argv: list[str] | None = None) -> bool:
    """Whether this process is ``python -m exporter.<something>``."""
    argv = list(sys.orig_argv if argv is None else argv)
    pairs = zip(argv, argv[1:], strict=False)
    return any(flag == "-m" and module.startswith("exporter.") for flag, module in pairs)


def verbose(argv: list[str] | None = None) -> bool:
    """Whether the command line asks for ``--verbosity``/``-v`` (any value)."""
    argv = sys.argv if argv is None else argv
    return any(arg.split("=")[0] in _VERBOSE_FLAGS for arg in argv[1:])


def quiet_native_logs() -> None:
    """In our CLIs, import TensorFlow with its C++ logging off, unless verbose.

    ``TF_CPP_MIN_LOG_LEVEL`` (kept if the user set it) silences TensorFlow's own logging.
    The lines printed while its libraries load ("All log messages before
    absl::InitializeLog() is called are written to STDERR", "Could not find cuda drivers")
    come from absl's C++ logging, which no variable controls: the import runs with the
    process's standard error sent to /dev/null. An import error still surfaces, as a Python
    exception, once standard error is back.
    """
    if not running_cli() or verbose(sys.orig_argv[1:]):
        return
    for name, value in _NATIVE_ENV.items():
        os.environ.setdefault(name, value)
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_python_logs() -> None:
    """After absl parsed the flags: our ``exporter`` stage lines at INFO, the rest at WARNING.

    TensorFlow's Python side logs through absl ("Writing fingerprint to ...", one line per
    sharding callback), and while saving it sets absl's verbosity and restores it from the
    ``--verbosity`` flag: so the flag itself is lowered, not a logger's level.
    ``--verbosity`` / ``-v`` keeps what the user asked for.
    """
    logging.getLogger("exporter").setLevel(logging.INFO)
    if not verbose():
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
