"""In our commands, TensorFlow and Keras load without the optional packages no command uses.

``import tensorflow`` imports Keras, and both try a few optional packages while they load,
whatever the program will do: JAX (for ``tf.lite``'s converter from JAX functions), pandas
(Keras' DataFrame inputs), matplotlib and OpenCV (``keras.visualization``). Where they are
installed, which a Keras 3 user's environment often is, loading them costs more than a third
of TensorFlow's whole import: 1.6 CPU-seconds of 4.9 on a 2-core machine (``docs/performance.md``).
No command calls any of those features, so in ``python -m exporter.<command>`` (and in its
child processes, which are such commands too) they are left out while TensorFlow and Keras
load: each then finds it "not installed", as if it were not, and says so only where that
feature is used. The package itself stays importable: once TensorFlow and Keras are
loaded this finder is gone, and a later ``import pandas`` (say, by Apache Beam in
``exporter.embed``) loads it as usual.

In Python (``import exporter`` in your program) nothing changes: this runs in our commands
only.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from exporter.console import DelegatingLoader

# Imported by TensorFlow's or Keras' own modules inside ``try: ... except ImportError``.
SKIPPED = ("jax", "pandas", "matplotlib", "cv2")
# Whose loading the finder watches: it is active while either's top module is executing.
_LOADERS = ("tensorflow", "keras")


def install() -> None:
    """Before TensorFlow or Keras loads: leave ``SKIPPED`` out while they load."""
    if any(name in sys.modules for name in _LOADERS):
        return
    if not any(isinstance(finder, _SkipWhileLoading) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SkipWhileLoading())


class _SkipWhileLoading(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` and ``keras`` as Python would, and runs their loading with
    ``SKIPPED`` unavailable; removes itself when the first of them has loaded."""

    def __init__(self):
        self._loading = 0  # How many of _LOADERS are executing now (keras imports tensorflow).
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if self._loading and name.partition(".")[0] in SKIPPED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name not in _LOADERS or self._finding:
            return None
        self._finding = True
        try:  # The spec the rest of sys.meta_path finds (another finder may wrap it too).
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _WatchedLoader(spec.loader, self)
        return spec

    def loading(self, started: bool) -> None:
        self._loading += 1 if started else -1
        if not self._loading and self in sys.meta_path:
            sys.meta_path.remove(self)


class _WatchedLoader(DelegatingLoader):
    """Runs another loader's ``exec_module`` with its finder told when it starts and ends."""

    def __init__(self, loader, finder: _SkipWhileLoading):
        super().__init__(loader)
        self._finder = finder

    def exec_module(self, module):
        self._finder.loading(True)
        try:
            super().exec_module(module)
        finally:
            self._finder.loading(False)
