"""The export CLI's run, on a small Keras model, with a SIGTERM sent at an exact point
(tests/test_save.py): a real signal at a moment too short to hit from outside.

    python tests/interrupt_driver.py --backbone=small --out=DIR --overwrite WHEN

WHEN is ``move`` (just after the swap into place), ``fallback`` (as ``move``, on a system
without renameat2's RENAME_EXCHANGE: between making the folder for the old copy and the
two renames), ``done`` (after the CLI reported the export), ``written`` (a SIGINT, as
Ctrl-C sends it, once the new export is written beside --out, before it is verified) or
``swallowed`` (as ``written``, but the ``KeyboardInterrupt`` is caught where it lands, as
code that falls back on ``except Exception`` catches what an interrupt becomes inside a C
extension's callback: the export must stop all the same; ``exporter.interrupts``).
"""

from __future__ import annotations

import os
import signal
import tempfile

import keras

import exporter
from exporter import cli
from exporter.making import save as _save


def _after(function, condition=lambda *args, **kwargs: True, signum=signal.SIGTERM):
    """``function``, sending ``signum`` once it returned (if ``condition`` of its arguments)."""

    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if condition(*args, **kwargs):
            os.kill(os.getpid(), signum)
        return result

    return wrapped


def _swallowing(function):
    """``function``, then a SIGINT whose KeyboardInterrupt is caught and dropped at once."""

    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.getsignal(signal.SIGINT)  # The handler runs by this line at the latest.
        except KeyboardInterrupt:
            pass
        return result

    return wrapped


def main(argv: list[str]) -> None:
    when = argv[1]
    if when == "move":
        _save._exchange = _after(_save._exchange)
    elif when == "done":  # Reported; the process is about to end (cli._exit_now).
        cli._exit_now = _after(lambda: None)
    elif when == "written":
        _save._write = _after(_save._write, signum=signal.SIGINT)
    elif when == "swallowed":
        _save._write = _swallowing(_save._write)
    elif when == "fallback":
        _save._exchange = lambda a, b: False  # What it says where RENAME_EXCHANGE is missing.
        old_copy = lambda *args, prefix="", **kwargs: _save._OLD_TAG in prefix  # noqa: E731
        tempfile.mkdtemp = _after(tempfile.mkdtemp, old_copy)
    model = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
         keras.layers.GlobalAveragePooling2D()]
    )  # fmt: skip
    module = exporter.FeatureVectorModule(model, preprocessing="identity", min_size=8)
    cli.run(lambda: exporter.save(module, cli.OUT.value, overwrite=True))


if __name__ == "__main__":
    cli.start(main)
