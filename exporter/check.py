"""Check that a SavedModel keeps the reusable image API, before sharing or using it.

Usage:
    python -m exporter.check PATH [--task=image_feature_vector|image_classification]
        [--json] [--allow_unsafe_ops]

The graph is scanned for ops that touch files, processes, the network or Python before
anything is loaded; such a model is refused unless --allow_unsafe_ops is given.

Exit status: 0 when every rule passes (warnings allowed), 1 when any rule is violated,
2 when the SavedModel cannot be read or on a usage error. With --json, stdout is always one
JSON object: the report, or {"path", "ok": false, "error"} when it cannot be read.
"""

import json
import sys

from absl import app, flags

from exporter import console
from exporter.checking import conformance

_TASK = flags.DEFINE_enum(
    "task", None, list(conformance.TASKS), "The task to check as; default: from the metadata."
)
_JSON = flags.DEFINE_bool("json", False, "Print the report as JSON instead of text.")
_ALLOW_UNSAFE_OPS = flags.DEFINE_bool(
    "allow_unsafe_ops", False, "Load and run the model even if it has unsafe ops."
)
_LIST_RULES = flags.DEFINE_bool("list_rules", False, "Print every rule and what it checks.")

USAGE_ERROR, NOT_CONFORMING = 2, 1


def _parse(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def main(argv: list[str]) -> int:
    console.quiet_python_logs()
    if _LIST_RULES.value:
        for rule, text in conformance.RULES.items():
            print(f"{rule}: {text}")
        return 0
    if len(argv) != 2:
        print("error: expected one SavedModel directory; see --help.", file=sys.stderr)
        return USAGE_ERROR
    try:
        report = conformance.check(
            argv[1], task=_TASK.value, allow_unsafe_ops=_ALLOW_UNSAFE_OPS.value
        )
    except conformance.UnreadableError as error:
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


def run(argv: list[str]) -> int:
    """What ``python -m exporter.check ARGS`` does, in this process: ``argv[0]`` is the program.

    For callers that check many SavedModels without starting Python and TensorFlow for each
    (the fuzz tests); the command line runs the same two functions through ``app.run``.
    """
    return main(_parse(argv))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
