"""Timing a forward so that the figure belongs to the model, not to its neighbours.

Three things get in the way on a shared CPU, and each is handled here:

- Worker threads of a runtime keep spinning after a call (a runtime's own pools, OpenMP's), and the
  next forward timed, another runtime's, runs against them. :func:`settle` waits until no other thread of
  this process runs before each side of a pair is timed, and the side runs untimed first.
- Other processes take the CPU from ours. Linux counts, per thread, the time it was ready to run
  but waited for a CPU (``/proc/self/task/*/schedstat``); :func:`timed` reads it beside the wall
  time, so a forward that waited is known to be disturbed and can be re-timed or left out.
- A forward of a millisecond or less is mostly call overhead and wake-up jitter: :func:`repetitions`
  times enough of them back to back that each timing lasts :data:`MIN_TIMED_S`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MIN_TIMED_S = 0.005  # a paired timing repeats a shorter forward until it lasts this long
MAX_REPETITIONS = 64
DISTURBED_SHARE = 0.05  # a forward that waited for a CPU more than this share of its time (plus the slack) is disturbed
DISTURBED_SLACK_S = 50e-6
SETTLE_WINDOW_S = 0.0002
SETTLE_QUIET_CHECKS = 2  # consecutive looks that find no other thread running
SETTLE_LIMIT_S = 0.1
SETTLE_FALLBACK_WINDOW_S = 0.005  # longer than a scheduler tick: CPU-time counters of other threads lag by one
QUIET_CPU_SHARE = 0.2  # the process's CPU use over that window, as a share of it, below which it is quiet
WARM_FORWARDS = 2  # untimed forwards before each side of a pair: one left FP32 5% slower than in a block, two 2%
RETRY_PAUSES_S = (0.01, 0.05)  # before each re-timing of a disturbed pair: a passing neighbour may be gone
MIN_CLEAN_SHARE = 0.8  # the latency gate judges only when this share of the pairs was timed undisturbed

_TASKS = "/proc/self/task"


def cpu_wait_s() -> float | None:
    """Seconds this process's threads have spent ready to run but waiting for a CPU, all threads
    together; None where the operating system does not say (not Linux, or no schedstat)."""
    total = 0
    try:
        tasks = os.listdir(_TASKS)
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"{_TASKS}/{task}/schedstat", encoding="ascii") as handle:
                total += int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def running_threads() -> int | None:
    """How many threads of this process, the calling one aside, are running or ready to run now
    (their state in ``/proc``: exact at once, where CPU-time counters lag by up to a scheduler tick);
    None where the operating system does not say."""
    me = threading.get_native_id()
    running = 0
    try:
        tasks = os.listdir(_TASKS)
    except OSError:
        return None
    for task in tasks:
        if task == str(me):
            continue
        try:
            with open(f"{_TASKS}/{task}/stat", encoding="ascii", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue  # a thread that ended meanwhile
        running += text[text.rindex(")") + 2 : text.rindex(")") + 3] == "R"
    return running


def settle(limit_s: float = SETTLE_LIMIT_S) -> None:
    """Wait (at most ``limit_s``) until no other thread of this process runs: the worker threads that
    a runtime leaves spinning after a call (OpenMP's, a runtime's own) have gone to sleep. Where the
    threads' states cannot be read, wait one scheduler tick's worth of quiet CPU time instead."""
    deadline = time.perf_counter() + limit_s
    quiet = 0
    while time.perf_counter() < deadline and quiet < SETTLE_QUIET_CHECKS:
        running = running_threads()
        if running is None:
            cpu, start = time.process_time(), time.perf_counter()
            time.sleep(SETTLE_FALLBACK_WINDOW_S)
            quiet = SETTLE_QUIET_CHECKS if time.process_time() - cpu < QUIET_CPU_SHARE * (time.perf_counter() - start) else 0
            continue
        quiet = quiet + 1 if running == 0 else 0
        time.sleep(SETTLE_WINDOW_S)


@dataclass(frozen=True)
class Timing:
    """One timing: seconds per forward and the seconds per forward its threads waited for a CPU."""

    seconds: float
    waited: float | None

    @property
    def disturbed(self) -> bool:
        """Whether other work took the CPU from this forward long enough to move its time."""
        return self.waited is not None and self.waited > DISTURBED_SHARE * self.seconds + DISTURBED_SLACK_S


def timed(call: Callable[[], object], repetitions: int = 1, untimed: int = 0) -> Timing:
    """Time ``repetitions`` calls back to back after ``untimed`` ones; the figures are per call (the
    wait over all of them, read outside the timed stretch)."""
    before = cpu_wait_s()
    for _ in range(untimed):
        call()
    start = time.perf_counter()
    for _ in range(repetitions):
        call()
    seconds = (time.perf_counter() - start) / repetitions
    after = cpu_wait_s()
    waited = (after - before) / (repetitions + untimed) if before is not None and after is not None else None
    return Timing(seconds, waited)


def repetitions(seconds: float) -> int:
    """How many forwards of ``seconds`` each to time together so that a timing lasts :data:`MIN_TIMED_S`."""
    if seconds <= 0:
        return MAX_REPETITIONS
    return max(1, min(MAX_REPETITIONS, math.ceil(MIN_TIMED_S / seconds)))


@dataclass(frozen=True)
class Pair:
    """This precision and FP32 timed back to back on one sample, each after the process went quiet."""

    mine: Timing
    fp32: Timing
    attempts: int

    @property
    def disturbed(self) -> bool:
        return self.mine.disturbed or self.fp32.disturbed


def time_pair(mine: Callable[[], object], fp32: Callable[[], object], count: int) -> Pair:
    """FP32 then this precision, ``count`` forwards each, re-timed (after a pause) while disturbed.

    Each side starts once the other's threads are quiet and runs :data:`WARM_FORWARDS` untimed forwards
    first, so it is timed as it runs alone: its threads awake and its weights in the caches, not the
    other model's."""
    attempt = 1
    while True:
        fp32_timing = _warm_timed(fp32, count)
        pair = Pair(_warm_timed(mine, count), fp32_timing, attempt)
        if not pair.disturbed or attempt > len(RETRY_PAUSES_S):
            return pair
        time.sleep(RETRY_PAUSES_S[attempt - 1])
        attempt += 1


def _warm_timed(call: Callable[[], object], count: int) -> Timing:
    settle()
    return timed(call, count, untimed=WARM_FORWARDS)


def wait_share(timings: list[Timing]) -> float | None:
    """The share of their time that ``timings`` spent waiting for a CPU; None when not known."""
    known = [t for t in timings if t.waited is not None]
    total = sum(t.seconds for t in known)
    return sum(t.waited or 0.0 for t in known) / total if known and total > 0 else None
