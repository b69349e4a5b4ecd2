"""Errors a user can act on. The CLIs print these as one line, without a traceback."""


class Error(Exception):
    """Base of every error this package raises on purpose; the message says the way out."""


class ExportError(Error):
    """An export or a conversion that cannot go ahead."""


class UnsafeOpsError(Error, ValueError):
    """A SavedModel whose graph holds ops that touch files, processes, the network or Python.

    Raised before anything of it is loaded or run. ``ops`` lists ``(op, where)`` pairs.
    """

    def __init__(self, message: str, ops: list[tuple[str, str]] = ()):
        super().__init__(message)
        self.ops = list(ops)
