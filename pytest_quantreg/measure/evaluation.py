"""One measurement pass: warmup, then every sample once at batch size 1 (untimed passes may use
length-bucketed batches: ``--quantreg-batch-size``).

The pass yields predictions, probabilities and per-sample latencies together, as in the seed's
protocol. Timing comes from pytest-benchmark (``benchmark.pedantic``, one round per sample) when
a test asks for it, from a ``perf_counter`` loop with the same protocol otherwise, and is absent
when timing is disabled (``--benchmark-disable``): accuracy never depends on timing.

A timed pass given a ``partner`` (FP32) also times a pair on a spread of samples, between its
rounds: FP32, then this precision, on the same sample, each after the process has gone quiet
(no runtime's threads left spinning) and each read for the time it waited for a CPU
(:mod:`pytest_quantreg.measure.timing`). The latency ratio is taken over these back-to-back pairs, so a
machine that speeds up or slows down during the run moves both sides of each pair alike and the
ratio stays put; a pair that another process disturbed is timed again, and left out if it stays
disturbed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_quantreg.measure import runners
from pytest_quantreg.measure.inputs import Inputs

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LatencyStats:
    """Per-sample latency statistics in milliseconds."""

    mean_ms: float
    median_ms: float
    std_ms: float
    rounds: int

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> LatencyStats:
        ms = [s * 1000 for s in seconds]
        return cls(
            mean_ms=statistics.fmean(ms),
            median_ms=statistics.median(ms),
            std_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
            rounds=len(ms),
        )


@dataclass(frozen=True)
class Measurement:
    """What one pass of one precision produced."""

    precision: str
    device: str
    ids: tuple[str, ...]
    labels: tuple[int, ...]
    predictions: tuple[int, ...]
    probabilities: tuple[tuple[float, ...], ...]
    logits: tuple[tuple[float, ...], ...]
    size_mb: float
    latencies_s: tuple[float, ...] | None
    timer: str
    batch_size: int = 1
    paired_s: tuple[tuple[float, float], ...] | None = None  # (this precision, partner FP32) seconds, timed back to back, undisturbed
    paired_ids: tuple[str, ...] = ()  # the samples of paired_s
    pairs_wanted: int = 0  # samples paired with FP32, disturbed ones included
    pairs_retimed: int = 0  # pairs timed again because another process took the CPU from them
    repetitions: int = 1  # forwards per paired timing (short forwards are timed several at a time)
    pair_wait_share: float | None = None  # share of the paired forwards' time spent waiting for a CPU
    rounds_disturbed: float | None = None  # share of this pass's own timed rounds that waited for a CPU
    kept_fp32: tuple[str, ...] = ()  # Linear layers this precision left in FP32 (--quantreg-keep-fp32)

    @property
    def accuracy(self) -> float:
        return sum(p == y for p, y in zip(self.predictions, self.labels, strict=True)) / len(self.labels)

    @property
    def avg_confidence(self) -> float:
        return statistics.fmean(max(p) for p in self.probabilities)

    @property
    def latency(self) -> LatencyStats | None:
        return LatencyStats.from_seconds(self.latencies_s) if self.latencies_s else None


def measure(
    model: torch.nn.Module,
    inputs: Inputs,
    *,
    precision: str,
    size_mb: float,
    warmup: int,
    benchmark: Any | None = None,
    timed: bool = True,
    batch_size: int = 1,
    partner: torch.nn.Module | None = None,
    pairs: int = 0,
) -> Measurement:
    """Run the pass. A ``benchmark`` fixture times the rounds (none when it is disabled); without
    one, ``timed`` selects a ``perf_counter`` loop or no timing at all. An untimed pass runs in
    length-bucketed batches of ``batch_size``; timed passes are always per sample. A timed pass
    with a ``partner`` times it too, back to back, on ``pairs`` samples spread over the sample."""
    import torch

    from pytest_quantreg.measure.loading import device_of, is_compiled

    device = device_of(model)
    inputs = inputs.to(device)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    logits: list[torch.Tensor | None] = [None] * len(inputs)

    def forward(index: int) -> None:
        logits[index] = model(**inputs.encodings[index]).logits
        sync()

    warm = warmup_indices(inputs, warmup, every_shape=is_compiled(model))
    rounds = runners.Rounds(forward, inputs, partner, set(spread(len(inputs), pairs)), len(warm), sync)
    run = runners.Pass(model, inputs, forward, warm + list(range(len(inputs))), len(warm), rounds, logits)
    with torch.inference_mode():
        latencies, timer, used_batch = _runner(run, benchmark, timed, batch_size)
    raw = [t.float()[0].cpu() for t in logits if t is not None]
    probs = [torch.softmax(t, dim=-1) for t in raw]
    return Measurement(
        precision=precision,
        device=str(device),
        ids=inputs.ids,
        labels=inputs.labels,
        predictions=tuple(int(p.argmax()) for p in probs),
        probabilities=tuple(tuple(float(x) for x in p) for p in probs),
        logits=tuple(tuple(float(x) for x in t) for t in raw),
        size_mb=size_mb,
        latencies_s=latencies,
        timer=timer,
        batch_size=used_batch,
        **(rounds.summary(latencies) if latencies else {}),
    )


def _runner(run: runners.Pass, benchmark: Any | None, timed: bool, batch_size: int) -> runners.Outcome:
    """The pass in the timing mode asked for."""
    if benchmark is not None:
        disabled = getattr(benchmark, "disabled", False)
        return runners.benchmark_disabled(run, benchmark) if disabled else runners.pytest_benchmark_rounds(run, benchmark)
    if timed:
        return runners.perf_counter_rounds(run)
    return runners.untimed_batches(run, batch_size) if batch_size > 1 else runners.untimed(run)


def warmup_indices(inputs: Inputs, warmup: int, every_shape: bool = False) -> list[int]:
    """The samples of the warmup passes: the first ``warmup``, and with ``every_shape`` (a compiled
    model) also one sample of each token count not yet among them, so that compilation for every
    input shape happens before the timed rounds."""
    indices = [i % len(inputs) for i in range(warmup)]
    if every_shape:
        seen = {inputs.encodings[i]["input_ids"].shape for i in indices}
        for index, encoding in enumerate(inputs.encodings):
            if encoding["input_ids"].shape not in seen:
                seen.add(encoding["input_ids"].shape)
                indices.append(index)
    return indices


def spread(n: int, pairs: int) -> list[int]:
    """``pairs`` sample indices spread evenly over ``0..n-1`` (all of them when ``pairs >= n``)."""
    if pairs >= n:
        return list(range(n))
    return [i * n // pairs for i in range(pairs)]
