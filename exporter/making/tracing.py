"""The saver's tracing context: trace ``tf.function``s as ``tf.saved_model.save`` will.

Shared by ``module`` (which traces its functions ahead of the save) and ``save`` (which
saves with ``SAVE_OPTIONS``); neither imports the other for it.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

SAVE_OPTIONS = tf.saved_model.SaveOptions()


@contextlib.contextmanager
def saver_tracing():
    """Trace ``tf.function``s here as ``tf.saved_model.save(..., options=SAVE_OPTIONS)`` does.

    TensorFlow keys its trace cache on whether a save is in progress (and on the save's
    variable policy), so the saver traces every function again that was traced outside a
    save: for our module, the whole backbone three more times (ResNet50: seconds).
    Traces made in here are the saver's own. The context is TensorFlow's internal
    ``save_context``; without it (a future TensorFlow), tracing is plain and the saver
    traces again, as before.
    """
    try:
        from tensorflow.python.saved_model import save_context
    except ImportError:  # pragma: no cover - depends on the TensorFlow version
        yield
        return
    if save_context.in_save_context():
        yield
        return
    with save_context.save_context(SAVE_OPTIONS):
        yield
