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
2 when the SavedModel cannot be read or on a usage error. With --json, stdout is always one
JSON object: the report, or {"path", "ok": false, "error"} when it cannot be read.
"""

import json
import sys

from absl import app, flags

from exporter import console
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

USAGE_ERROR, NOT_CONFORMING = 2, 1


def _parse(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def main(argv: list[str], bounded: bool = True) -> int:
    console.quiet_python_logs()
    if _LIST_RULES.value:
        from exporter.checking import conformance  # TensorFlow: only what needs it.

        for rule, text in conformance.RULES.items():
            print(f"{rule}: {text}")
        return 0
    if len(argv) != 2:
        print("error: expected one SavedModel directory; see --help.", file=sys.stderr)
        return USAGE_ERROR
    try:
        report = _check(argv[1], bounded)
    except isolated.UnreadableError as error:
        if _JSON.value:  # A script that parses stdout gets an object, whatever happened.
            print(json.dumps({"path": argv[1], "ok": False, "error": str(error)}, indent=2))
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
    app.run(main, flags_parser=_parse)
