"""What every command shares: its flags parsed before anything slow, --help, exit statuses.

Each ``python -m exporter.<command>`` defines its flags at import time (absl), imports
nothing that loads TensorFlow at module level, and hands its ``main`` to ``start``. Its
flags are then parsed, and a usage error refused in one line, before ``main`` imports the
library. The exit status is the same for every command (``docs/command-line.md``):

- 0: it succeeded;
- 1: the work failed;
- 2: a usage error (a flag that is unknown, missing, malformed or out of range, a stray
  argument, or a choice the backbone or model does not take), refused before anything is
  written;
- 130: interrupted (Ctrl-C, SIGINT); a SIGTERM ends it the same way, with 143 (128 + 15).
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags

from exporter import interrupts

SUCCESS, FAILED, USAGE_ERROR = 0, 1, 2
# 128 + the signal's number, as shells report a process a signal ended.
INTERRUPTED = 128 + signal.SIGINT
_HELP = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
_HELP_FULL = ("--helpfull", "-helpfull")

# Called with the message before a usage error exits (check --json prints its JSON object).
_on_usage_error: list[Callable[[str], None]] = []


def interrupted() -> int | None:
    """The signal that interrupted this command, None if none did."""
    return interrupts.received()


def _interrupt(signum, frame):
    # SIGINT and SIGTERM unwind like Ctrl-C, so the work cleans up after itself. The
    # interrupt can be swallowed on the way (``exporter.interrupts``): the record says it was
    # an interrupt all the same, and the next stage boundary raises it again.
    interrupts.record(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def stop_unwinding() -> None:
    """From now on, SIGINT and SIGTERM end the process at once, as by default."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is _interrupt:
            signal.signal(signum, signal.SIG_DFL)


def usage_error(message: str) -> NoReturn:
    """Print ``error: message`` as one line on standard error; exit 2.

    A command that must write something else first (``check --json``: one JSON object on
    standard output, whatever happens) gives ``start`` an ``on_usage_error``.
    """
    for hook in _on_usage_error:
        hook(message)
    fail(message, USAGE_ERROR)


def fail(message: str, status: int = FAILED) -> NoReturn:
    """Print ``error: message`` as one line on standard error; exit with ``status``."""
    print(f"error: {' '.join(message.strip().splitlines())}", file=sys.stderr)
    sys.exit(status)


def exit_interrupted(message: str = "interrupted.") -> NoReturn:
    """Print ``error: message``; exit 128 + the signal (130 for Ctrl-C)."""
    fail(message, 128 + (interrupted() or signal.SIGINT))


def print_help(full: bool = False) -> None:
    """The command's docstring, then its own flags (``full``: every flag, absl's and
    TensorFlow's too), on standard output."""
    app.usage(shorthelp=not full, writeto_stdout=True)
    if not full:
        print("absl's and TensorFlow's own flags: --helpfull.")


def parse(argv: Sequence[str], known_only: bool = False) -> list[str]:
    """Parse ``argv`` into absl's FLAGS; on a usage error, one line and exit 2.

    ``--help`` (``-h``, ``--helpshort``) prints the command's own flags and ``--helpfull``
    every flag, both then exit 0. ``known_only`` leaves flags the command does not define
    in the returned list (embed passes them to Beam), instead of refusing them.
    """
    args = list(argv[1:])
    # --flagfile may bring more flags; a help request before "--" is honoured anywhere.
    before = args[: args.index("--")] if "--" in args else args
    if any(arg in _HELP_FULL for arg in before):
        print_help(full=True)
        sys.exit(SUCCESS)
    if any(arg in _HELP for arg in before):
        print_help()
        sys.exit(SUCCESS)
    try:
        return flags.FLAGS(list(argv), known_only=known_only)
    except flags.Error as error:
        usage_error(f"{error}; see --help.")


def start(
    main: Callable[[list[str]], int | None],
    known_only: bool = False,
    on_usage_error: Callable[[str], None] | None = None,
) -> None:
    """Run ``main`` as a command: parsed by ``parse``, interrupted as ``exit_interrupted``.

    ``main`` gets the arguments left after the flags (``argv[0]`` first) and returns the
    exit status (None: 0), or exits itself. ``on_usage_error(message)`` runs before a usage
    error's line is printed, whether the parser or ``main`` found it.
    """
    if on_usage_error is not None:
        _on_usage_error.append(on_usage_error)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    app.run(_guarded(main), flags_parser=functools.partial(parse, known_only=known_only))


def _guarded(main: Callable[[list[str]], int | None]) -> Callable[[list[str]], int | None]:
    @functools.wraps(main)
    def run(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except KeyboardInterrupt:
            exit_interrupted()

    return run


def positional_arguments(argv: list[str], expected: int = 0, what: str = "") -> list[str]:
    """The arguments after the program's name, if there are ``expected`` of them; a usage
    error otherwise (``what`` names them, e.g. "one SavedModel directory (EXPORT)")."""
    rest = argv[1:]
    if len(rest) == expected:
        return rest
    if expected == 0:
        usage_error(f"unexpected arguments {rest}; flags take the form --name=value.")
    usage_error(f"expected {what}; received {len(rest)} arguments {rest}; see --help.")


def require(*flag_holders: flags.FlagHolder) -> None:
    """A usage error naming every one of these flags that is not set."""
    missing = [f"--{holder.name}" for holder in flag_holders if holder.value in (None, "")]
    if missing:
        usage_error(f"{' and '.join(missing)} required; see --help.")
