"""One measurement pass: warmup, then every sample once at batch size 1 (untimed passes may use
length-bucketed batches: ``--quantreg-batch-size``).

The pass yields predictions, probabilities and per-sample latencies together, as in the seed's
protocol. Timing comes from pytest-benchmark (``benchmark.pedantic``, one round per sample) when
a test asks for it, from a ``perf_counter`` loop with the same protocol otherwise, and is absent
when timing is disabled (``--benchmark-disable``): accuracy never depends on timing.

A timed pass given a ``partner`` (FP32) also times a pair on a spread of samples, between its
rounds: FP32, then this precision, on the same sample, each after the process has gone quiet
(no runtime's threads left spinning) and each read for the time it waited for a CPU
(:mod:`pytest_quantreg.timing`). The latency ratio is taken over these back-to-back pairs, so a
machine that speeds up or slows down during the run moves both sides of each pair alike and the
ratio stays put; a pair that another process disturbed is timed again, and left out if it stays
disturbed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_quantreg import timing
from pytest_quantreg.data import Sample

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Inputs:
    """A tokenized sample: one encoding per example, batch size 1, no padding (``pad_id`` pads batches)."""

    ids: tuple[str, ...]
    labels: tuple[int, ...]
    encodings: tuple[dict[str, torch.Tensor], ...]
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> Inputs:
        if all(t.device == _as_device(device) for enc in self.encodings for t in enc.values()):
            return self
        return Inputs(self.ids, self.labels, tuple({k: t.to(device) for k, t in enc.items()} for enc in self.encodings), self.pad_id)


def tokenize(tokenizer: PreTrainedTokenizerBase, sample: Sample, max_length: int) -> Inputs:
    """Tokenize every example of the sample once (truncated to ``max_length``)."""
    encodings = tuple(dict(tokenizer(e.text, truncation=True, max_length=max_length, return_tensors="pt")) for e in sample.examples)
    return Inputs(tuple(e.id for e in sample.examples), tuple(e.label for e in sample.examples), encodings, tokenizer.pad_token_id or 0)


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

    from pytest_quantreg.models import device_of, is_compiled

    device = device_of(model)
    inputs = inputs.to(device)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    logits: list[torch.Tensor | None] = [None] * len(inputs)

    def forward(index: int) -> None:
        logits[index] = model(**inputs.encodings[index]).logits
        sync()

    warm = warmup_indices(inputs, warmup, every_shape=is_compiled(model))
    warmup = len(warm)
    stream = warm + list(range(len(inputs)))
    rounds = _Rounds(forward, inputs, partner, set(spread(len(inputs), pairs)), warmup, sync)

    latencies: tuple[float, ...] | None = None
    used_batch = 1  # per sample unless the untimed batched branch runs
    with torch.inference_mode():
        if benchmark is not None and getattr(benchmark, "disabled", False):
            # --benchmark-disable or xdist: pedantic runs the target once, untimed; we run the rest
            feed = iter(stream)
            benchmark.pedantic(forward, setup=lambda: ((next(feed),), {}))
            for index in feed:
                forward(index)
            timer = "disabled by pytest-benchmark"
        elif benchmark is not None:
            latencies, timer = _pedantic(benchmark, forward, stream, warmup, rounds), "pytest-benchmark"
        elif timed:
            latencies, timer = _perf_counter_loop(forward, stream, warmup, rounds), "perf_counter"
        elif batch_size > 1:
            used_batch = min(batch_size, len(inputs))
            for chunk in length_buckets(inputs, used_batch):
                batch_logits = model(**_padded(inputs, chunk)).logits
                for row, index in enumerate(chunk):
                    logits[index] = batch_logits[row : row + 1]
            timer = f"not timed (batches of {used_batch})"
        else:
            for index in stream:
                forward(index)
            timer = "not timed"
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


def length_buckets(inputs: Inputs, batch_size: int) -> list[list[int]]:
    """Sample indices sorted by token count and cut into batches: each batch pads little."""
    order = sorted(range(len(inputs)), key=lambda i: (inputs.encodings[i]["input_ids"].shape[1], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _padded(inputs: Inputs, chunk: list[int]) -> dict[str, torch.Tensor]:
    """The encodings of ``chunk`` right-padded to the longest (``pad_id`` for ids, 0 for masks and types)."""
    import torch

    width = max(inputs.encodings[i]["input_ids"].shape[1] for i in chunk)
    batch = {}
    for key in inputs.encodings[chunk[0]]:
        value = inputs.pad_id if key == "input_ids" else 0
        rows = [inputs.encodings[i][key] for i in chunk]
        batch[key] = torch.cat([torch.nn.functional.pad(row, (0, width - row.shape[1]), value=value) for row in rows])
    return batch


class _Rounds:
    """What happens between the timed rounds of a pass (untimed): the FP32 partner warmed up with the
    warmup rounds and timed in a pair with this precision on the paired samples, and the CPU wait of
    each timed round read, so that a round another process disturbed is known."""

    def __init__(
        self,
        forward: Callable[[int], None],
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


def _pedantic(benchmark: Any, forward: Callable[[int], None], stream: list[int], warmup: int, rounds: _Rounds) -> tuple[float, ...]:
    """One pytest-benchmark round per sample; setup (untimed) feeds the next sample, warmup rounds too."""
    feed = enumerate(stream)

    def setup() -> tuple[tuple[int], dict[str, Any]]:
        position, index = next(feed)
        rounds.before(position, index)
        return (index,), {}

    benchmark.pedantic(forward, setup=setup, rounds=len(stream) - warmup, warmup_rounds=warmup, iterations=1)
    rounds.after()
    return tuple(benchmark.stats.stats.data)


def _perf_counter_loop(forward: Callable[[int], None], stream: list[int], warmup: int, rounds: _Rounds) -> tuple[float, ...]:
    latencies: list[float] = []
    for position, index in enumerate(stream):
        rounds.before(position, index)
        start = time.perf_counter()
        forward(index)
        if position >= warmup:
            latencies.append(time.perf_counter() - start)
    rounds.after()
    return tuple(latencies)


def _as_device(device: torch.device | str) -> torch.device:
    import torch

    return torch.device(device)
