"""Check that a SavedModel keeps the reusable image API, before sharing or using it.

Usage:
    python -m exporter.check PATH [--task=image_feature_vector|image_classification]
        [--json] [--allow_unsafe_ops] [--timeout_s=S] [--memory_limit_gib=G]

The graph is scanned before anything is loaded: a model with an op that is not on the
allowlist of pure computation is refused unless --allow_unsafe_ops is given. The rules run
in a child process with a time limit per rule and a memory limit
(``exporter.checking.isolated``): a model that hangs, crashes or runs out of memory gets a
FAIL line saying which, and the rest of the report still prints.

Exit status: 0 when every rule passes (warnings allowed), 1 when any rule is violated,
2 when the SavedModel cannot be read or on a usage error, 130 when interrupted. With
--json, stdout is always one JSON object: the report, or {"path", "ok": false, "error"}
when it cannot be read or the command is misused.
"""

import json
import sys

from absl import flags

from exporter import command, console
from exporter.checking import isolated
from exporter.checking.report import TASKS

_TASK = flags.DEFINE_enum(
    "task", None, list(TASKS), "The task to check as; default: from the metadata."
)
_JSON = flags.DEFINE_bool("json", False, "Print the report as JSON instead of text.")
_ALLOW_UNSAFE_OPS = flags.DEFINE_bool(
    "allow_unsafe_ops", False, "Load and run the model even if it has unsafe ops."
)
_LIST_RULES = flags.DEFINE_bool("list_rules", False, "Print every rule and what it checks.")
_TIMEOUT_S = flags.DEFINE_float(
    "timeout_s", isolated.TIMEOUT_S, "The most seconds one rule may run the model.", lower_bound=1
)
_MEMORY_LIMIT_GIB = flags.DEFINE_float(
    "memory_limit_gib",
    None,
    "The checker's memory limit (address space) in GiB; default: half of the physical memory.",
    lower_bound=1,
)

USAGE_ERROR, NOT_CONFORMING = command.USAGE_ERROR, 1


def _parse(argv: list[str]) -> list[str]:
    return command.parse(argv)


def _wants_json(argv: list[str]) -> bool:
    # Read from the arguments: a usage error may come before --json is parsed.
    return any(arg in ("--json", "-json", "--json=true", "--json=1") for arg in argv[1:])


def _json_usage_error(message: str) -> None:
    if _wants_json(sys.argv):
        path = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
        print(json.dumps({"path": path, "ok": False, "error": message}, indent=2))


def main(argv: list[str], bounded: bool = True) -> int:
    console.quiet_python_logs()
    if _LIST_RULES.value:
        from exporter.checking import conformance  # TensorFlow: only what needs it.

        for rule, text in conformance.RULES.items():
            print(f"{rule}: {text}")
        return 0
    (path,) = command.positional_arguments(argv, 1, "one SavedModel directory")
    try:
        report = _check(path, bounded)
    except isolated.UnreadableError as error:
        if _JSON.value:  # A script that parses stdout gets an object, whatever happened.
            print(json.dumps({"path": path, "ok": False, "error": str(error)}, indent=2))
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    print(
        report.to_json()
        if _JSON.value
        else console.as_flags(report.to_text(), ("allow_unsafe_ops",))
    )
    return 0 if report.ok else NOT_CONFORMING


def _check(path: str, bounded: bool):
    if bounded:
        limit = _MEMORY_LIMIT_GIB.value
        return isolated.check(
            path,
            task=_TASK.value,
            allow_unsafe_ops=_ALLOW_UNSAFE_OPS.value,
            timeout_s=_TIMEOUT_S.value,
            memory_limit=None if limit is None else int(limit * (1 << 30)),
        )
    from exporter.checking import conformance  # TensorFlow, in this process.

    try:
        return conformance.check(path, task=_TASK.value, allow_unsafe_ops=_ALLOW_UNSAFE_OPS.value)
    except conformance.UnreadableError as error:
        raise isolated.UnreadableError(str(error)) from None


def run(argv: list[str]) -> int:
    """What ``python -m exporter.check ARGS`` does, in this process and without its bounds:
    ``argv[0]`` is the program.

    For callers that check many SavedModels without starting Python and TensorFlow for each
    (the fuzz tests, which restart their process after a crash); the command line runs the
    rules in a bounded child process (``exporter.checking.isolated``).
    """
    return main(_parse(argv), bounded=False)


if __name__ == "__main__":
    command.start(main, on_usage_error=_json_usage_error)
