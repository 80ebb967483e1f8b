"""The regression gate: a precision against its own outcome recorded on this hardware class.

On one CPU class a precision's predictions are the same run after run, so any change in them is a fact,
not noise: an upgrade, a new recipe, new weights or a new tokenizer. The gate compares, sample by sample,
this run's predictions with the recorded ones (both directions of change counted and named), the
accuracy change with an exact McNemar test on the discordant pairs, and the mean KL divergence of this
run's probabilities from the recorded ones. Its defaults are as tight as FP32's own drift gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_quantreg.judge.stats import kl_mean, mcnemar_exact
from pytest_quantreg.judge.verdict import Verdict, failed, passed
from pytest_quantreg.measure.evaluation import Measurement

RECORD_FLAG = "--quantreg-record"
DRIFT_KEYS = ("max_drift_flip_rate", "max_drift_kl")
SHOWN_SAMPLES = 3  # samples whose prediction moved, quoted in a failure
SHOWN_TEXT = 80  # characters of each
_SLACK = 1e-9


@dataclass(frozen=True)
class OutcomeRecord:
    """A precision's per-sample outcome recorded on one hardware class, and what it was recorded with."""

    predictions: Mapping[str, int]  # by sample id
    probabilities: Mapping[str, tuple[float, ...]]
    size_mb: float
    batch_size: int
    provenance: Mapping[str, Any]  # library versions, weights, calibration texts, keep setting
    recorded: str


@dataclass(frozen=True)
class Drift:
    """This run's predictions against the recorded ones, on the same samples."""

    n: int
    changed: tuple[tuple[str, int, int], ...]  # (sample id, recorded prediction, this run's), in sample order
    right_to_wrong: int
    wrong_to_right: int
    recorded_accuracy: float
    accuracy: float
    mcnemar_p: float
    kl_mean: float

    @property
    def flip_rate(self) -> float:
        return len(self.changed) / self.n if self.n else 0.0

    def describe(self) -> str:
        return (
            f"{len(self.changed)} of {self.n} predictions differ from the record ({self.right_to_wrong} right -> wrong, "
            f"{self.wrong_to_right} wrong -> right); accuracy {self.recorded_accuracy:.2%} -> {self.accuracy:.2%} "
            f"(exact McNemar p {self.mcnemar_p:.3g}); mean KL vs the record {self.kl_mean:.6f}"
        )


def drift(measurement: Measurement, record: OutcomeRecord) -> Drift | None:
    """``measurement`` against ``record`` on the same sample; None when the record holds other samples."""
    if set(measurement.ids) != set(record.predictions):
        return None
    labels = np.asarray(measurement.labels)
    now, then = np.asarray(measurement.predictions), np.asarray([record.predictions[i] for i in measurement.ids])
    now_right, then_right = now == labels, then == labels
    right_to_wrong, wrong_to_right = int(np.sum(then_right & ~now_right)), int(np.sum(~then_right & now_right))
    moved = np.flatnonzero(now != then)
    return Drift(
        n=len(labels),
        changed=tuple((measurement.ids[i], int(then[i]), int(now[i])) for i in moved),
        right_to_wrong=right_to_wrong,
        wrong_to_right=wrong_to_right,
        recorded_accuracy=float(np.mean(then_right)),
        accuracy=float(np.mean(now_right)),
        mcnemar_p=mcnemar_exact(right_to_wrong, wrong_to_right),
        kl_mean=kl_mean(
            np.asarray([record.probabilities[i] for i in measurement.ids], dtype=np.float64),
            np.asarray(measurement.probabilities, dtype=np.float64),
        ),
    )


def headroom(found: Drift, limit: float | None) -> int | None:
    """How many more predictions may change before the flip limit (percent) fails; None when not gated."""
    if limit is None:
        return None
    return max(int(limit / 100 * found.n + _SLACK) - len(found.changed), 0)


def judge_drift(
    name: str,
    found: Drift,
    limits: Mapping[str, Any],
    changes: Sequence[str],
    texts: Mapping[str, str],
    class_names: Sequence[str],
    where: str,
) -> Verdict:
    """The regression gate's verdict on ``found``: failed when more predictions changed than
    ``max_drift_flip_rate`` (percent) allows, or the mean KL from the record is above ``max_drift_kl``.
    ``changes`` says what differs since the record, ``texts`` quotes the samples by id, ``where``
    names the record (file and hardware class)."""
    failures = []
    flips, kl = limits["max_drift_flip_rate"], limits["max_drift_kl"]
    if flips.value is not None and found.flip_rate * 100 > flips.value + _SLACK:
        failures.append(
            (
                "max_drift_flip_rate",
                f"changed predictions {found.flip_rate:.2%} ({len(found.changed)}/{found.n}) > max {flips.value:.2f}% ({flips.source})",
            )
        )
    if kl.value is not None and found.kl_mean > kl.value + _SLACK:
        failures.append(("max_drift_kl", f"mean KL vs the record {found.kl_mean:.6f} > max {kl.value:.6f} ({kl.source})"))
    if not failures:
        return passed(name, "drift", headroom(found, flips.value))

    def named(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else str(label)

    moved = [f"    id {sample}: {named(then)} -> {named(now)}: {_quoted(texts.get(sample, ''))}" for sample, then, now in found.changed]
    more = [f"    ... and {len(moved) - SHOWN_SAMPLES} more"] if len(moved) > SHOWN_SAMPLES else []
    samples = "".join(f"{line}\n" for line in ["  samples whose prediction moved:", *moved[:SHOWN_SAMPLES], *more]) if moved else ""
    fix = ", ".join(f"--quantreg-{key.replace('_', '-')}={name}=N" for key, _ in failures)
    what = "; ".join(changes) if changes else "nothing this plugin tracks (library versions, weights, data, recipe, settings)"
    message = (
        f"{name} changed since its record on this hardware class: {found.describe()}\n"
        + "".join(f"  - {text}\n" for _, text in failures)
        + f"  changed since the record: {what}\n"
        + samples
        + f"  record: {where}\n"
        f"  accept it: re-record this hardware class with {RECORD_FLAG} (then commit the baseline), or raise the limit ({fix})"
    )
    return failed(name, "drift", message, tuple(key for key, _ in failures))


def _quoted(text: str) -> str:
    flat = " ".join(text.split())  # one line in the failure; the text evaluated is the sample's own
    return repr(flat if len(flat) <= SHOWN_TEXT else flat[: SHOWN_TEXT - 3] + "...")


def differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between the record's provenance and this run's: ``torch 2.13.0 -> 2.14.0``."""
    found = []
    for key in sorted(set(recorded) | set(now)):
        before, after = recorded.get(key), now.get(key)
        if before == after:
            continue
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            if key == "versions":  # a library one side does not track is not a change (an installed one says "not installed")
                before, after = ({k: v for k, v in side.items() if k in before and k in after} for side in (before, after))
            found += [f"{key} {change}" if key != "versions" else change for change in differences(before, after)]
        else:
            found.append(f"{key} {_short(before)} -> {_short(after)}")
    return found


def _short(value: Any) -> str:
    text = "none" if value is None else str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
