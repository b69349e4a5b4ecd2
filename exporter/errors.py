"""Errors a user can act on. The CLIs print these as one line, without a traceback."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name if it has none), for a one-line
    error of ours that names a library's cause."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Error(Exception):
    """Base of every error this package raises on purpose; the message says the way out."""


class ExportError(Error):
    """An export or a conversion that cannot go ahead."""


class ArgumentError(ExportError, ValueError):
    """An argument that cannot work (with this backbone, or with the others), refused before
    anything slow runs and before anything is written. Our commands exit 2 on it, as on a
    bad flag."""


class UnsafeOpsError(Error, ValueError):
    """A SavedModel whose graph holds ops that touch files, processes, the network or Python.

    Raised before anything of it is loaded or run. ``ops`` lists ``(op, where)`` pairs.
    """

    def __init__(self, message: str, ops: list[tuple[str, str]] = ()):
        super().__init__(message)
        self.ops = list(ops)
