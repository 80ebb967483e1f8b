"""A gate's verdict as a value: passed, failed with its reasons, or not judged and why.

The judge returns verdicts; only the plugin turns them into pytest outcomes (a failed verdict fails
the test, a verdict not judged skips it), so a verdict can also be kept on the run, shown in the
summary and written to the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["passed", "failed", "not judged"]


@dataclass(frozen=True)
class Verdict:
    """One gate's verdict on one precision: ``gate`` is ``accuracy`` or ``latency``; ``message`` holds the
    failure's lines or why the gate did not judge; ``reasons`` the keys of the limits exceeded; ``busy``
    whether the machine's load is why it did not judge; ``headroom`` how many more of the sample's
    predictions may change before a prediction gate fails (None: not a prediction gate, or not gated)."""

    precision: str
    gate: str
    outcome: Outcome
    message: str = ""
    reasons: tuple[str, ...] = ()
    busy: bool = False
    headroom: int | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


def passed(precision: str, gate: str, headroom: int | None = None) -> Verdict:
    return Verdict(precision, gate, "passed", headroom=headroom)


def failed(precision: str, gate: str, message: str, reasons: tuple[str, ...]) -> Verdict:
    return Verdict(precision, gate, "failed", message, reasons, headroom=0)


def not_judged(precision: str, gate: str, why: str, busy: bool = False) -> Verdict:
    return Verdict(precision, gate, "not judged", why, busy=busy)
