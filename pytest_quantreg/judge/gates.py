"""The gates: predictions against the stored FP32 baseline, latency against FP32 in this run; each
returns a :class:`~pytest_quantreg.judge.verdict.Verdict`.

Prediction gates: accuracy drop (points), relative accuracy (percent of FP32, MLPerf style),
optionally only when the drop is significant (``alpha``), flip rate and mean KL divergence.
The latency gates fail only when the ratio's 95% confidence interval lies above their limit; the
ratio pairs this precision's timings with FP32's timed back to back on the same samples. One limit
is fixed (the "int8 must be worth it" contract); the other is the ratio recorded in the baseline
for this hardware class plus a tolerance, so a slowdown is caught on any CPU, whatever its int8
speed-up.
A failure message carries the numbers, the statistics, each threshold and where it came from,
the baseline file, and the flag that accepts the change.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.baselines import UPDATE_FLAG, Baseline
from pytest_quantreg.judge.metrics import ACCURACY, ACCURACY_METRIC, Metric
from pytest_quantreg.judge.stats import Agreement, LatencyRatio, compare
from pytest_quantreg.judge.verdict import Verdict, failed, not_judged, passed
from pytest_quantreg.measure.evaluation import Measurement

FP32 = "fp32"
_SLACK = 1e-9


@dataclass(frozen=True)
class Limit:
    """A threshold and where it came from (command line, marker, ini or default)."""

    value: float | None
    source: str


def agreement(measurement: Measurement, baseline: Baseline, metric: Metric = ACCURACY_METRIC, class_names: Sequence[str] = ()) -> Agreement:
    """The paired statistics of ``measurement`` against the baseline's FP32 predictions, on ``metric``.

    A baseline whose stored accuracy disagrees with its own predictions has been edited or damaged:
    it raises ``QuantregError`` rather than being compared.
    """
    stats = compare(measurement, baseline.reference(), metric, class_names)
    if abs(stats.fp32_accuracy - baseline.accuracy) > 1e-9:
        raise QuantregError(
            f"baseline {baseline.path} says FP32 accuracy {baseline.accuracy:.2%} but its predictions score "
            f"{stats.fp32_accuracy:.2%} on this sample; it was edited or damaged: restore it from version control "
            f"or re-record it with {UPDATE_FLAG}"
        )
    return stats


def judge_accuracy(name: str, stats: Agreement, baseline: Baseline, limits: Mapping[str, Limit], context: str = "") -> Verdict:
    """The prediction gates' verdict on ``stats`` (precision ``name`` against the baseline's FP32 predictions).
    ``context`` (lines) goes into the failure message, e.g. what a fallback search found."""
    failures, noise = gate_failures(stats, limits)
    if not failures:
        return passed(name, "accuracy", headroom(stats, limits))
    what = "FP32 drifted from its stored baseline" if name == FP32 else f"{name} regressed against FP32"
    fix = ", ".join(f"--quantreg-{key.replace('_', '-')}={name}=N" for key, _ in failures)
    headline = "" if stats.metric.kind == ACCURACY else f"{stats.metric.name} {stats.metric_value:.2%} vs FP32 {stats.fp32_metric:.2%}, "
    flips = ", ".join(f"{move} {count}" for move, count in stats.class_flips.items())
    message = (
        f"{what}: {headline}accuracy {stats.accuracy:.2%} vs FP32 baseline {stats.fp32_accuracy:.2%} on {stats.n} samples{noise}\n"
        + "".join(f"  - {message}\n" for _, message in failures)
        + (f"  predictions moved from FP32's class: {flips}\n" if flips else "")
        + f"  statistics: {stats.describe()}\n"
        + context
        + f"  baseline: {baseline.path}\n"
        f"  accept it: raise the limit ({fix}, or the quantreg marker)"
        + (f", or re-record FP32 with {UPDATE_FLAG}" if name == FP32 else "")
    )
    return failed(name, "accuracy", message, tuple(key for key, _ in failures))


def headroom(stats: Agreement, limits: Mapping[str, Limit]) -> int | None:
    """How many more of the sample's predictions may move away from FP32's (or from right to wrong) before
    the flip-rate or the accuracy-drop gate fails; None when neither gates it."""
    room = []
    flips, drop = limits["max_flip_rate"].value, limits["max_drop"].value
    if flips is not None:
        room.append(math.floor(flips / 100 * stats.n + _SLACK) - stats.flips)
    if drop is not None and stats.metric.kind == ACCURACY:
        room.append(math.floor(drop / 100 * stats.n + _SLACK) - (stats.fp32_only - stats.quantized_only))
    return max(min(room), 0) if room else None


def gate_failures(stats: Agreement, limits: Mapping[str, Limit]) -> tuple[list[tuple[str, str]], str]:
    """The prediction gates ``stats`` fails, as ``(gate key, message)``, and the note when ``alpha``
    excused a drop that is not significant."""
    failures = _accuracy_failures(stats, limits)
    alpha = limits["alpha"].value
    noise = ""
    if failures and alpha is not None and not stats.significant(alpha):
        test = "McNemar" if stats.metric.kind == ACCURACY else "bootstrap"
        noise = f"; not significant at alpha {alpha:g} (one-sided {test} p {stats.metric_p_worse:.3g}), so not failed"
        failures = []
    return failures + _agreement_failures(stats, limits), noise


def _accuracy_failures(stats: Agreement, limits: Mapping[str, Limit]) -> list[tuple[str, str]]:
    failures = []
    drop, name = limits["max_drop"], stats.metric.name
    if drop.value is not None and stats.metric_drop_pp > drop.value + _SLACK:
        failures.append(("max_drop", f"{name} drop {stats.metric_drop_pp:.2f} pp > max {drop.value:.2f} pp ({drop.source})"))
    relative = limits["min_relative_accuracy"]
    if relative.value is not None and stats.metric_relative_pct < relative.value - _SLACK:
        failures.append(
            (
                "min_relative_accuracy",
                f"relative {name} {stats.metric_relative_pct:.2f}% of FP32 < min {relative.value:.2f}% ({relative.source})",
            )
        )
    return failures


def _agreement_failures(stats: Agreement, limits: Mapping[str, Limit]) -> list[tuple[str, str]]:
    failures = []
    flips = limits["max_flip_rate"]
    if flips.value is not None and stats.flip_rate * 100 > flips.value + _SLACK:
        failures.append(
            ("max_flip_rate", f"flip rate {stats.flip_rate:.2%} ({stats.flips}/{stats.n}) > max {flips.value:.2f}% ({flips.source})")
        )
    kl = limits["max_kl"]
    if kl.value is not None and stats.kl_mean > kl.value + _SLACK:
        failures.append(("max_kl", f"mean KL {stats.kl_mean:.4f} > max {kl.value:.4f} ({kl.source})"))
    return failures


def disturbance(measurement: Measurement) -> str | None:
    """Why the timings of ``measurement`` cannot be judged because other work took the CPU from them
    (pairs still disturbed after their re-timings, or for FP32 its own rounds); None when they can."""
    from pytest_quantreg.measure.timing import MIN_CLEAN_SHARE

    share = f"{measurement.pair_wait_share:.0%}" if measurement.pair_wait_share is not None else "an unknown share"
    if measurement.pairs_wanted:
        clean = len(measurement.paired_s or ())
        if clean >= MIN_CLEAN_SHARE * measurement.pairs_wanted:
            return None
        return (
            f"the machine was busy: only {clean} of {measurement.pairs_wanted} pairs with FP32 were timed without waiting "
            f"for a CPU ({measurement.pairs_retimed} re-timed, the rest not timed once the ratio could not be judged), "
            f"and their threads together waited for a CPU for {share} of the forwards' time; run it on a quiet machine, "
            "or without other work on these cores"
        )
    rounds = measurement.rounds_disturbed
    if measurement.precision == FP32 and rounds is not None and rounds > 1 - MIN_CLEAN_SHARE:
        return (
            f"the machine was busy: {rounds:.0%} of FP32's timed forwards waited for a CPU; "
            "run it on a quiet machine, or without other work on these cores"
        )
    return None


def judge_latency(
    measurement: Measurement, ratio: LatencyRatio | None, limit: Limit, increase: Limit, record: LatencyRatio | None, hardware_class: str
) -> Verdict:
    """The latency gates' verdict on ``ratio`` (this pass's paired timings against FP32): failed when it is
    above the fixed ``limit``, or above the ``record`` for this hardware class by more than ``increase``
    percent, beyond noise; not judged when it cannot be."""
    name = measurement.precision
    if measurement.latencies_s is None:
        why = f"timing is off ({measurement.timer}); pytest-benchmark disables timing with --benchmark-disable and under xdist"
        return not_judged(name, "latency", f"latency gate for {name} not judged: {why}")
    busy = disturbance(measurement)
    if busy:
        return not_judged(name, "latency", f"latency gate for {name} not judged: {busy}", busy=True)
    if name == FP32:
        return passed(name, "latency")
    if ratio is None:
        return not_judged(name, "latency", f"latency gate for {name} not judged: no FP32 timings were paired with its timed pass")
    relative = increase.value is not None and record is not None
    if limit.value is None and not relative:
        why = f"no latency limit for {name} on this device; set one with --quantreg-max-latency-ratio={name}=N"
        return not_judged(name, "latency", why)
    failures = []
    if limit.value is not None and ratio.ci95[0] > limit.value + _SLACK:
        failures.append(("max_latency_ratio", f"the whole interval is above max {limit.value:.3f} ({limit.source})"))
    if increase.value is not None and record is not None:
        ceiling = record.ratio * (1 + increase.value / 100)
        if ratio.ci95[0] > ceiling + _SLACK:
            failures.append(
                (
                    "max_latency_increase",
                    f"the whole interval is above {ceiling:.3f}: the {record.ratio:.3f} recorded for this hardware class "
                    f"+ {increase.value:g}% ({increase.source})",
                )
            )
    if not failures:
        return passed(name, "latency")
    pairs = measurement.paired_s or ()
    mine, fp32 = statistics.median(p[0] for p in pairs) * 1000, statistics.median(p[1] for p in pairs) * 1000
    message = (
        f"{name} is too slow against FP32: {ratio.describe()}\n"
        + "".join(f"  - {failure}\n" for _, failure in failures)
        + f"  paired medians: {mine:.2f} ms vs FP32 {fp32:.2f} ms, timed back to back on the same samples\n"
        f"  hardware class: {hardware_class}\n"
        f"  accept it: raise the limit (--quantreg-max-latency-ratio={name}=N, --quantreg-max-latency-increase={name}=N "
        f"or the quantreg marker), or re-record the ratio on this hardware with {UPDATE_FLAG}"
    )
    return failed(name, "latency", message, tuple(key for key, _ in failures))
