"""What a pytester run of the plugin may end with on a shared machine.

The plugin never judges a disturbed timing: when other work took the CPU while a precision was timed,
its latency test skips with "the machine was busy". The tests that are not about load accept that skip
in place of the pass or failure they expect (its reason read from the ``-rs`` summary); the tests whose
point is a latency verdict run again until one is judged, and skip saying so if the machine stays busy.
The busy-machine logic itself has its own tests, under a load they start and end (tests/test_timing.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

BUSY_SKIP = re.compile(r"^SKIPPED \[(\d+)\] .*latency gate for \S+ not judged: the machine was busy", re.MULTILINE)
JUDGED_TRIES = 3


def busy_skips(output: str) -> int:
    """How many latency tests skipped because the machine was busy, read from a run's ``output`` (run with ``-rs``)."""
    return sum(int(count) for count in BUSY_SKIP.findall(output))


def assert_verdicts(result: pytest.RunResult, *, passed: int = 0, failed: int = 0, skipped: int = 0, errors: int = 0) -> int:
    """``result.assert_outcomes(...)``, except that a latency test skipped because the machine was busy may
    stand in for a test expected to pass or fail; returns how many did."""
    __tracebackhide__ = True
    outcomes = result.parseoutcomes()
    got = {key: outcomes.get(key, 0) for key in ("passed", "failed", "skipped", "errors")}
    busy = busy_skips(result.stdout.str())
    assert got["skipped"] - busy == skipped, (got, f"{busy} skipped as busy")
    assert got["errors"] == errors, got
    assert got["passed"] <= passed, got
    assert got["failed"] <= failed, got
    assert got["passed"] + got["failed"] + busy == passed + failed, (got, f"{busy} skipped as busy")
    return busy


def until_judged(run: Callable[[], pytest.RunResult], tries: int = JUDGED_TRIES) -> pytest.RunResult:
    """``run()`` until none of its latency tests skipped because the machine was busy; skip the calling
    test, with the figures, when the machine stayed busy ``tries`` times."""
    __tracebackhide__ = True
    for attempt in range(tries):
        result = run()
        if not busy_skips(result.stdout.str()):
            return result
        if attempt < tries - 1:
            time.sleep(2.0)  # a passing neighbour may be gone
    reasons = [line for line in result.stdout.lines if BUSY_SKIP.match(line)]
    pytest.skip(f"the machine stayed busy in {tries} runs, so no latency verdict could be checked: {reasons[0]}")
