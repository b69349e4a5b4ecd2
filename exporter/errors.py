"""Errors a user can act on. The CLIs print these as one line, without a traceback."""


class ExportError(Exception):
    """An export that cannot go ahead; the message says what was wrong and the way out."""
