"""The gates: accuracy drop against the stored FP32 baseline, latency ratio against FP32 in this run.

A failure message carries the numbers, the threshold and where it came from, the baseline file,
and the flag that accepts the change.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pytest_quantreg.baselines import UPDATE_FLAG, Baseline
from pytest_quantreg.evaluation import Measurement

FP32 = "fp32"


@dataclass(frozen=True)
class Limit:
    """A threshold and where it came from (command line, marker, ini or default)."""

    value: float | None
    source: str


def accuracy_drop_pp(measurement: Measurement, baseline: Baseline) -> float:
    """Baseline FP32 accuracy minus this accuracy, in percentage points."""
    return (baseline.accuracy - measurement.accuracy) * 100


def check_accuracy(measurement: Measurement, baseline: Baseline, limit: Limit) -> None:
    """Fail when the accuracy drop exceeds the limit."""
    __tracebackhide__ = True
    drop = accuracy_drop_pp(measurement, baseline)
    if limit.value is None or drop <= limit.value + 1e-9:
        return
    name = measurement.precision
    what = "FP32 drifted from its stored baseline" if name == FP32 else f"{name} lost too much accuracy against FP32"
    pytest.fail(
        f"{what}: accuracy {measurement.accuracy:.2%} vs baseline {baseline.accuracy:.2%}, "
        f"drop {drop:.2f} pp > max {limit.value:.2f} pp ({limit.source})\n"
        f"  samples: {len(measurement.labels)}, baseline: {baseline.path}\n"
        f"  accept it: raise the limit (--quantreg-max-drop={name}=N or @pytest.mark.quantreg(max_drop=N))"
        + (f", or re-record FP32 with {UPDATE_FLAG}" if name == FP32 else ""),
        pytrace=False,
    )


def latency_ratio(measurement: Measurement, reference: Measurement) -> float | None:
    """Median latency over FP32's median in the same run; None when either was not timed."""
    mine, fp32 = measurement.latency, reference.latency
    if mine is None or fp32 is None or fp32.median_ms <= 0:
        return None
    return mine.median_ms / fp32.median_ms


def check_latency(measurement: Measurement, reference: Measurement, limit: Limit) -> float:
    """Fail when the median-latency ratio to FP32 exceeds the limit; skip when it cannot be judged."""
    __tracebackhide__ = True
    name = measurement.precision
    mine, fp32 = measurement.latency, reference.latency
    if mine is None or fp32 is None:
        pytest.skip(
            f"latency gate for {name} not judged: timing is off ({measurement.timer if mine is None else reference.timer}); "
            "pytest-benchmark disables timing with --benchmark-disable and under xdist"
        )
    ratio = mine.median_ms / fp32.median_ms
    if name == FP32:
        return ratio
    if limit.value is None:
        pytest.skip(f"no latency limit for {name} on this device; set one with --quantreg-max-latency-ratio={name}=N")
    if ratio > limit.value:
        pytest.fail(
            f"{name} is too slow against FP32: median {mine.median_ms:.2f} ms vs {fp32.median_ms:.2f} ms, "
            f"ratio {ratio:.3f} > max {limit.value:.3f} ({limit.source})\n"
            f"  accept it: raise the limit (--quantreg-max-latency-ratio={name}=N or @pytest.mark.quantreg(max_latency_ratio=N))",
            pytrace=False,
        )
    return ratio
