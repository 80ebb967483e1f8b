"""Paired statistics of a precision against FP32 on the same samples.

Predictions: exact McNemar test on the discordant pairs, a bootstrap confidence interval for the
accuracy drop, flip rate, KL divergence and logit change. Latency: the median of the per-sample
latency ratios with a distribution-free confidence interval. Every figure is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.metrics import (
    ACCURACY,
    ACCURACY_METRIC,
    Metric,
    class_metrics,
    class_names_of,
    flips_by_class,
    paired_drop,
)
from pytest_quantreg.measure.evaluation import Measurement

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
_EPS = 1e-12


@dataclass(frozen=True)
class Reference:
    """FP32's per-sample outcome: predicted label, probabilities and (when known) logits by sample id."""

    predictions: Mapping[str, int]
    probabilities: Mapping[str, Sequence[float]]
    logits: Mapping[str, Sequence[float]] | None

    @classmethod
    def from_measurement(cls, measurement: Measurement) -> Reference:
        ids = measurement.ids
        return cls(
            predictions=dict(zip(ids, measurement.predictions, strict=True)),
            probabilities=dict(zip(ids, measurement.probabilities, strict=True)),
            logits=dict(zip(ids, measurement.logits, strict=True)) if measurement.logits else None,
        )


@dataclass(frozen=True)
class Agreement:
    """How a precision's predictions differ from FP32's on the same samples.

    ``fp32_only`` counts samples FP32 got right and this precision wrong, ``quantized_only`` the
    reverse: the discordant pairs of the McNemar test.
    """

    n: int
    fp32_only: int
    quantized_only: int
    flips: int
    fp32_accuracy: float
    accuracy: float
    accuracy_drop_ci95: tuple[float, float]
    mcnemar_p: float
    mcnemar_p_worse: float
    kl_mean: float
    max_logit_change: float | None
    confidence_change_pp: float
    metric: Metric
    fp32_metric: float  # the metric's value (a fraction) for FP32 and for this precision
    metric_value: float
    metric_drop_ci95: tuple[float, float]
    metric_p_worse: float  # one-sided: bootstrap for the F1s and per-class metrics, exact McNemar for accuracy
    class_flips: dict[str, int]  # "a -> b": predictions that moved from FP32's class a to b, most first

    @property
    def metric_drop_pp(self) -> float:
        """FP32's value of the chosen metric minus this precision's, in points."""
        return (self.fp32_metric - self.metric_value) * 100

    @property
    def metric_relative_pct(self) -> float:
        """This precision's value of the chosen metric as a percentage of FP32's."""
        return self.metric_value / self.fp32_metric * 100 if self.fp32_metric else math.inf

    @property
    def accuracy_drop_pp(self) -> float:
        """FP32 accuracy minus this precision's, in percentage points."""
        return (self.fp32_accuracy - self.accuracy) * 100

    @property
    def relative_accuracy_pct(self) -> float:
        """This precision's accuracy as a percentage of FP32's."""
        return self.accuracy / self.fp32_accuracy * 100 if self.fp32_accuracy else math.inf

    @property
    def flip_rate(self) -> float:
        """Share of samples whose predicted label differs from FP32's."""
        return self.flips / self.n

    @property
    def agreement(self) -> float:
        return 1 - self.flip_rate

    def significant(self, alpha: float) -> bool:
        """Whether this precision is worse than FP32 on the chosen metric at level ``alpha`` (one-sided:
        exact McNemar for accuracy, the paired bootstrap for the others)."""
        return self.metric_p_worse < alpha

    def describe(self) -> str:
        """One line of the statistics, for failure messages."""
        low, high = self.accuracy_drop_ci95
        logit = f", max |logit change| {self.max_logit_change:.3f}" if self.max_logit_change is not None else ""
        metric = ""
        if self.metric.kind != ACCURACY:
            m_low, m_high = self.metric_drop_ci95
            metric = f"{self.metric.name} drop 95% CI [{m_low:.2f}, {m_high:.2f}] pp (bootstrap p {self.metric_p_worse:.3g}), accuracy "
        return (
            f"{metric}drop 95% CI [{low:.2f}, {high:.2f}] pp, McNemar p {self.mcnemar_p:.3g} "
            f"({self.fp32_only} FP32-only right, {self.quantized_only} quantized-only right), "
            f"flip rate {self.flip_rate:.2%} ({self.flips}/{self.n}), mean KL {self.kl_mean:.4f}{logit}"
        )


def compare(measurement: Measurement, reference: Reference, metric: Metric = ACCURACY_METRIC, class_names: Sequence[str] = ()) -> Agreement:
    """The paired statistics of ``measurement`` against FP32's outcome on the same sample ids, judged on
    ``metric``, with per-class figures (classes named by ``class_names``, else by id)."""
    missing = [i for i in measurement.ids if i not in reference.predictions]
    if missing:
        raise QuantregError(f"the FP32 reference has no prediction for {len(missing)} sample(s) (e.g. id {missing[0]}); re-record it")
    labels = np.asarray(measurement.labels)
    mine = np.asarray(measurement.predictions)
    fp32 = np.asarray([reference.predictions[i] for i in measurement.ids])
    fp32_right, mine_right = fp32 == labels, mine == labels
    fp32_only = int(np.sum(fp32_right & ~mine_right))
    quantized_only = int(np.sum(~fp32_right & mine_right))
    n = len(labels)
    p = np.asarray([reference.probabilities[i] for i in measurement.ids], dtype=np.float64)
    q = np.asarray(measurement.probabilities, dtype=np.float64)
    names = class_names_of(labels.tolist(), [*mine.tolist(), *fp32.tolist()], class_names)
    n_classes = len(names)
    mine_classes, fp32_classes = class_metrics(labels.tolist(), mine.tolist(), names), class_metrics(labels.tolist(), fp32.tolist(), names)
    fp32_accuracy, accuracy = float(np.mean(fp32_right)), float(np.mean(mine_right))
    drop_ci = paired_drop_ci95(fp32_only, quantized_only, n)
    worse = mcnemar_exact(fp32_only, quantized_only, alternative="greater")
    if metric.kind == ACCURACY:
        metric_ci, metric_worse = drop_ci, worse
    else:
        _, metric_ci, metric_worse = paired_drop(metric, labels.tolist(), fp32.tolist(), mine.tolist(), n_classes)
    return Agreement(
        n=n,
        fp32_only=fp32_only,
        quantized_only=quantized_only,
        flips=int(np.sum(fp32 != mine)),
        fp32_accuracy=fp32_accuracy,
        accuracy=accuracy,
        accuracy_drop_ci95=drop_ci,
        mcnemar_p=mcnemar_exact(fp32_only, quantized_only),
        mcnemar_p_worse=worse,
        kl_mean=kl_mean(p, q),
        max_logit_change=_max_logit_change(measurement, reference),
        confidence_change_pp=float(np.mean(q.max(axis=1)) - np.mean(p.max(axis=1))) * 100,
        metric=metric,
        fp32_metric=fp32_classes.value(metric, fp32_accuracy),
        metric_value=mine_classes.value(metric, accuracy),
        metric_drop_ci95=metric_ci,
        metric_p_worse=metric_worse,
        class_flips=flips_by_class(fp32.tolist(), mine.tolist(), names),
    )


def mcnemar_exact(fp32_only: int, quantized_only: int, alternative: str = "two-sided") -> float:
    """Exact McNemar p-value: a binomial test of ``fp32_only`` out of the discordant pairs at 1/2.

    ``alternative="greater"`` asks whether the quantized model is worse (more FP32-only successes).
    """
    from scipy.stats import binomtest

    discordant = fp32_only + quantized_only
    if discordant == 0:
        return 1.0
    return float(binomtest(fp32_only, discordant, 0.5, alternative=alternative).pvalue)


def paired_drop_ci95(fp32_only: int, quantized_only: int, n: int) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the accuracy drop in points, resampling samples.

    Each sample contributes +1 (FP32-only right), -1 (quantized-only right) or 0, so a resample
    of the n samples is a multinomial draw over those three outcomes; the seed is fixed.
    """
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    shares = [fp32_only / n, quantized_only / n, 1 - (fp32_only + quantized_only) / n]
    counts = rng.multinomial(n, np.clip(shares, 0, 1), size=BOOTSTRAP_RESAMPLES)
    drops = (counts[:, 0] - counts[:, 1]) / n * 100
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(drops, [tail, 100 - tail])
    return float(low), float(high)


def kl_mean(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over samples of KL(p || q) in nats, rows being probability vectors."""
    return float(np.mean(kl_per_sample(p, q)))


def kl_per_sample(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) in nats of each row pair, rows being probability vectors."""
    p = np.clip(p, _EPS, 1.0)
    q = np.clip(q, _EPS, 1.0)
    return np.maximum(np.sum(p * (np.log(p) - np.log(q)), axis=1), 0.0)  # KL >= 0; rounding in stored probabilities can dip below


def _max_logit_change(measurement: Measurement, reference: Reference) -> float | None:
    if reference.logits is None or not measurement.logits:
        return None
    fp32 = np.asarray([reference.logits[i] for i in measurement.ids], dtype=np.float64)
    return float(np.max(np.abs(np.asarray(measurement.logits, dtype=np.float64) - fp32)))


@dataclass(frozen=True)
class LatencyRatio:
    """Median of the per-sample latency ratios (this precision over FP32, timed back to back) with its 95% interval."""

    ratio: float
    ci95: tuple[float, float]
    n: int

    def describe(self) -> str:
        return f"latency ratio {self.ratio:.3f} (95% CI [{self.ci95[0]:.3f}, {self.ci95[1]:.3f}], {self.n} paired samples)"


def latency_ratio(pairs: Sequence[tuple[float, float]] | None) -> LatencyRatio | None:
    """The ratio over ``(this precision, FP32)`` timings of the same samples; None without pairs."""
    if not pairs or min(fp32 for _, fp32 in pairs) <= 0:
        return None
    ratios = np.sort(np.asarray([mine / fp32 for mine, fp32 in pairs], dtype=np.float64))
    low, high = median_ci_ranks(len(ratios))
    return LatencyRatio(ratio=float(np.median(ratios)), ci95=(float(ratios[low]), float(ratios[high])), n=len(ratios))


def median_ci_ranks(n: int) -> tuple[int, int]:
    """0-based order statistics that bound the median with at least 95% coverage (distribution-free).

    The number of samples below the true median is Binomial(n, 1/2); the interval runs from the
    k-th smallest to the k-th largest value, k the largest rank with P(B < k) <= 2.5%.
    """
    from scipy.stats import binom

    k = int(binom.ppf((1 - CONFIDENCE) / 2, n, 0.5))
    while k > 0 and binom.cdf(k - 1, n, 0.5) > (1 - CONFIDENCE) / 2:
        k -= 1
    k = max(k, 1)
    return k - 1, n - k
