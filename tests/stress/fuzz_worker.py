"""A long-lived ``python -m exporter.check``: imports TensorFlow once, then checks path after path.

Started by ``fuzz_driver.Worker``. Reads one SavedModel path per line on stdin and answers each
with one JSON line on the protocol pipe (the stdout it was started with):
``{"code": exit status, "stdout": ..., "stderr": ..., "traceback": text or null, "seconds": s}``.

Each path runs through ``exporter.check.run``, the same two functions (flag parsing, then
``main``) that ``python -m exporter.check PATH`` runs through ``absl.app.run``. An exception
that escapes them is what would print a traceback on the command line: it is answered with
``"traceback"`` set and no exit status. A crash or hang ends or stalls this process; the
parent sees that.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback


def main() -> None:
    # TensorFlow's C++ side may write to file descriptor 1: keep the answers on their own pipe.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)

    from exporter import check

    answers.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        path = line.rstrip("\n")
        out, err = io.StringIO(), io.StringIO()
        code, trace = None, None
        start = time.monotonic()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = check.run(["exporter.check", path])
        except SystemExit as stop:  # What the command line would exit with.
            code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        except Exception:  # On the command line: a traceback.
            trace = traceback.format_exc()
        answer = {
            "code": code,
            "stdout": out.getvalue(),
            "stderr": err.getvalue(),
            "traceback": trace,
            "seconds": time.monotonic() - start,
        }
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
