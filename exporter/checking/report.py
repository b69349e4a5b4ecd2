"""A checker's verdicts: one ``Result`` per rule, and the ``Report`` that holds them.

Plain data without TensorFlow, so that ``python -m exporter.check`` can print a report that
a bounded child process (``exporter.checking.isolated``) computed.
"""

from __future__ import annotations

import dataclasses
import enum
import json

TASKS = ("image_feature_vector", "image_classification")


class Status(str, enum.Enum):  # noqa: UP042 - enum.StrEnum needs Python 3.11
    """A rule's verdict. A ``str``: it compares equal to, and serializes as, its value."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


PASS, FAIL, WARN, SKIP = Status.PASS, Status.FAIL, Status.WARN, Status.SKIP


PASS, FAIL, WARN, SKIP = Status.PASS, Status.FAIL, Status.WARN, Status.SKIP


@dataclasses.dataclass
class Result:
    """The verdict of one rule."""

    rule: str
    status: Status
    message: str


@dataclasses.dataclass
class Report:
    """Every rule's verdict for one SavedModel."""

    path: str
    task: str | None
    results: list[Result]

    @property
    def ok(self) -> bool:
        return all(r.status != FAIL for r in self.results)

    def failed(self) -> list[str]:
        return [r.rule for r in self.results if r.status == FAIL]

    def to_json(self) -> str:
        return json.dumps(
            {
                "path": self.path,
                "task": self.task,
                "ok": self.ok,
                "rules": [dataclasses.asdict(r) for r in self.results],
            },
            indent=2,
        )

    def to_text(self) -> str:
        width = max((len(r.rule) for r in self.results), default=0)
        lines = [f"{self.path} (task: {self.task or 'unknown'})"]
        lines += [f"  {r.status.upper():4}  {r.rule:{width}}  {r.message}" for r in self.results]
        counts = {s: sum(r.status == s for r in self.results) for s in (PASS, FAIL, WARN, SKIP)}
        lines.append(
            f"{'OK' if self.ok else 'NOT CONFORMING'}: {counts[PASS]} pass, {counts[FAIL]} fail, "
            f"{counts[WARN]} warn, {counts[SKIP]} skip"
        )
        return "\n".join(lines)
