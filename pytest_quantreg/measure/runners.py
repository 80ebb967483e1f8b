"""The runners of a measurement pass, one per timing mode, and what happens between timed rounds.

Every runner calls ``forward(index)`` for the samples of the stream (warmup first) and returns the
per-sample latencies of the timed rounds (None when untimed) and how they were timed:
- :func:`pytest_benchmark_rounds`: one pytest-benchmark round per sample (``benchmark.pedantic``);
- :func:`benchmark_disabled`: pytest-benchmark present but disabled (``--benchmark-disable``, xdist);
- :func:`perf_counter_rounds`: the same protocol timed with ``time.perf_counter``;
- :func:`untimed`: every sample once; :func:`untimed_batches`: length-bucketed batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_quantreg.measure import timing
from pytest_quantreg.measure.inputs import Inputs, length_buckets, padded

if TYPE_CHECKING:
    import torch

Forward = Callable[[int], None]
Outcome = tuple[tuple[float, ...] | None, str, int]  # latencies, timer, batch size used


class Rounds:
    """What happens between the timed rounds of a pass (untimed): the FP32 partner warmed up with the
    warmup rounds and timed in a pair with this precision on the paired samples, and the CPU wait of
    each timed round read, so that a round another process disturbed is known."""

    def __init__(
        self,
        forward: Forward,
        inputs: Inputs,
        partner: Any | None,
        paired_at: set[int],
        warmup: int,
        sync: Callable[[], None],
    ) -> None:
        self._forward, self._inputs, self._partner, self._sync = forward, inputs, partner, sync
        self._paired_at = paired_at if partner is not None else set()
        self._warmup = warmup
        self._count = 0  # forwards per paired timing, set at the first pair
        self.pairs: dict[int, timing.Pair] = {}
        self._opened: float | None = None
        self._waits: list[float | None] = []

    def _fp32(self, index: int) -> None:
        assert self._partner is not None
        self._partner(**self._inputs.encodings[index])
        self._sync()

    def before(self, position: int, index: int) -> None:
        """Close the round just timed, warm or pair the partner on this sample, open this sample's round."""
        self.after()
        if position < self._warmup:
            if self._partner is not None:
                self._fp32(index)
            return
        if index in self._paired_at and not self._busy():
            mine, fp32 = (lambda: self._forward(index)), (lambda: self._fp32(index))
            if not self._count:
                timing.settle()
                self._count = timing.repetitions(min(timing.timed(mine).seconds, timing.timed(fp32).seconds))
            self.pairs[index] = timing.time_pair(mine, fp32, self._count)
        self._opened = timing.cpu_wait_s()

    def _busy(self) -> bool:
        """Whether so many pairs stayed disturbed that the ratio cannot be judged: the rest are not timed."""
        disturbed = sum(pair.disturbed for pair in self.pairs.values())
        return disturbed > (1 - timing.MIN_CLEAN_SHARE) * len(self._paired_at)

    def after(self) -> None:
        """Close the round just timed (its CPU wait), if one is open."""
        if self._opened is not None:
            now = timing.cpu_wait_s()
            self._waits.append(now - self._opened if now is not None else None)
        self._opened = None

    def summary(self, latencies: Sequence[float]) -> dict[str, Any]:
        """The pass's pair and disturbance fields of :class:`Measurement`."""
        rounds = [timing.Timing(s, w) for s, w in zip(latencies, self._waits, strict=False)]
        known = [r for r in rounds if r.waited is not None]
        final = [t for pair in self.pairs.values() for t in (pair.mine, pair.fp32)]
        clean = {i: p for i, p in sorted(self.pairs.items()) if not p.disturbed}
        return {
            "paired_s": tuple((p.mine.seconds, p.fp32.seconds) for p in clean.values()) or None,
            "paired_ids": tuple(self._inputs.ids[i] for i in clean),
            "pairs_wanted": len(self._paired_at),
            "pairs_retimed": sum(p.attempts > 1 for p in self.pairs.values()),
            "repetitions": self._count or 1,
            "pair_wait_share": timing.wait_share(final),
            "rounds_disturbed": sum(r.disturbed for r in known) / len(known) if known else None,
        }


@dataclass
class Pass:
    """One pass's parts: the model's forward on a sample, the samples in order (warmup first), how many
    of them warm up, what happens between rounds, and the logits each forward leaves."""

    model: Any
    inputs: Inputs
    forward: Forward
    stream: list[int]
    warmup: int
    rounds: Rounds
    logits: list[torch.Tensor | None]


def pytest_benchmark_rounds(run: Pass, benchmark: Any) -> Outcome:
    """One pytest-benchmark round per sample; setup (untimed) feeds the next sample, warmup rounds too."""
    feed = enumerate(run.stream)

    def setup() -> tuple[tuple[int], dict[str, Any]]:
        position, index = next(feed)
        run.rounds.before(position, index)
        return (index,), {}

    benchmark.pedantic(run.forward, setup=setup, rounds=len(run.stream) - run.warmup, warmup_rounds=run.warmup, iterations=1)
    run.rounds.after()
    return tuple(benchmark.stats.stats.data), "pytest-benchmark", 1


def benchmark_disabled(run: Pass, benchmark: Any) -> Outcome:
    """pytest-benchmark disabled: pedantic runs the target once, untimed; the rest run here."""
    feed = iter(run.stream)
    benchmark.pedantic(run.forward, setup=lambda: ((next(feed),), {}))
    for index in feed:
        run.forward(index)
    return None, "disabled by pytest-benchmark", 1


def perf_counter_rounds(run: Pass) -> Outcome:
    """The pytest-benchmark protocol timed with ``time.perf_counter``."""
    latencies: list[float] = []
    for position, index in enumerate(run.stream):
        run.rounds.before(position, index)
        start = time.perf_counter()
        run.forward(index)
        if position >= run.warmup:
            latencies.append(time.perf_counter() - start)
    run.rounds.after()
    return tuple(latencies), "perf_counter", 1


def untimed(run: Pass) -> Outcome:
    """Every sample once, per sample."""
    for index in run.stream:
        run.forward(index)
    return None, "not timed", 1


def untimed_batches(run: Pass, batch_size: int) -> Outcome:
    """Length-bucketed batches of ``batch_size``: each sample's logits are its row of its batch's."""
    used = min(batch_size, len(run.inputs))
    for chunk in length_buckets(run.inputs, used):
        batch_logits = run.model(**padded(run.inputs, chunk)).logits
        for row, index in enumerate(chunk):
            run.logits[index] = batch_logits[row : row + 1]
    return None, f"not timed (batches of {used})", used
