"""The paired statistics against independent computations and simulated data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_quantreg.judge.stats import (
    Reference,
    compare,
    kl_mean,
    latency_ratio,
    mcnemar_exact,
    median_ci_ranks,
    paired_drop_ci95,
)
from pytest_quantreg.measure.evaluation import Measurement


def measurement(predictions: list[int], labels: list[int], probs: list[list[float]] | None = None) -> Measurement:
    probs = probs or [[0.9, 0.1] if p == 0 else [0.1, 0.9] for p in predictions]
    logits = [[math.log(x) for x in row] for row in probs]
    return Measurement(
        precision="q",
        device="cpu",
        ids=tuple(f"id{i}" for i in range(len(labels))),
        labels=tuple(labels),
        predictions=tuple(predictions),
        probabilities=tuple(tuple(row) for row in probs),
        logits=tuple(tuple(row) for row in logits),
        size_mb=1.0,
        latencies_s=None,
        timer="not timed",
    )


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 1/2, summed by hand: the probabilities no larger than P(k)."""
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in pmf if p <= pmf[k] * (1 + 1e-7)))


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 0), (5, 5), (12, 3), (2, 9), (40, 25)])
def test_mcnemar_matches_the_binomial_sum(b: int, c: int) -> None:
    expected = binomial_two_sided(b, b + c) if b + c else 1.0
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)
    worse = sum(math.comb(b + c, i) for i in range(b, b + c + 1)) / 2 ** (b + c) if b + c else 1.0
    assert mcnemar_exact(b, c, alternative="greater") == pytest.approx(worse, rel=1e-9)


def test_compare_counts_discordant_pairs_flips_and_accuracy() -> None:
    labels = [0, 0, 1, 1, 0, 1, 0, 1]
    fp32 = [0, 0, 1, 1, 1, 1, 0, 0]  # 6/8 right
    mine = [0, 1, 1, 0, 0, 1, 0, 0]  # 5/8 right: wrong on 1, 3 (FP32 right), right on 4 (FP32 wrong)
    stats = compare(measurement(mine, labels), Reference.from_measurement(measurement(fp32, labels)))
    assert (stats.fp32_only, stats.quantized_only, stats.flips, stats.n) == (2, 1, 3, 8)
    assert stats.fp32_accuracy == 0.75
    assert stats.accuracy == 0.625
    assert stats.accuracy_drop_pp == pytest.approx(12.5)
    assert stats.relative_accuracy_pct == pytest.approx(62.5 / 75 * 100)
    assert stats.flip_rate == 3 / 8
    assert stats.mcnemar_p == pytest.approx(1.0)  # 2 vs 1 discordant pairs is no evidence
    assert stats.max_logit_change == pytest.approx(math.log(0.9) - math.log(0.1))
    assert "flip rate 37.50% (3/8)" in stats.describe()


def test_identical_predictions_have_no_difference() -> None:
    m = measurement([0, 1, 1, 0], [0, 1, 0, 0])
    stats = compare(m, Reference.from_measurement(m))
    assert (stats.flips, stats.kl_mean, stats.max_logit_change, stats.accuracy_drop_ci95) == (0, 0.0, 0.0, (0.0, 0.0))
    assert stats.mcnemar_p == 1.0


def test_kl_matches_scipy_entropy() -> None:
    from scipy.stats import entropy

    rng = np.random.default_rng(3)
    p = rng.dirichlet([1, 1, 1], size=50)
    q = rng.dirichlet([1, 1, 1], size=50)
    assert kl_mean(p, q) == pytest.approx(float(np.mean(entropy(p, q, axis=1))), rel=1e-9)
    assert kl_mean(p, p) == 0.0


def test_bootstrap_interval_is_deterministic_and_near_the_closed_form() -> None:
    n, b, c = 400, 30, 10
    low, high = paired_drop_ci95(b, c, n)
    assert (low, high) == paired_drop_ci95(b, c, n)
    drop = (b - c) / n
    se = math.sqrt(((b + c) / n - drop**2) / n)  # Wald interval for paired proportions
    assert low == pytest.approx((drop - 1.96 * se) * 100, abs=0.5)
    assert high == pytest.approx((drop + 1.96 * se) * 100, abs=0.5)
    assert low < drop * 100 < high


def test_significance_rule_keeps_false_alarms_below_alpha() -> None:
    """With quantized and FP32 equally good, the one-sided exact test rejects at most alpha of the time."""
    rng = np.random.default_rng(0)
    alpha, trials = 0.05, 2000
    discordant = rng.binomial(400, 0.08, size=trials)  # about 8% of 400 samples disagree
    fp32_only = rng.binomial(discordant, 0.5)
    alarms = sum(mcnemar_exact(int(b), int(d - b), alternative="greater") < alpha for b, d in zip(fp32_only, discordant, strict=True))
    assert alarms / trials <= alpha
    worse = rng.binomial(discordant, 0.75)  # quantized wrong on three of four disagreements: found most of the time
    power = sum(mcnemar_exact(int(b), int(d - b), alternative="greater") < alpha for b, d in zip(worse, discordant, strict=True))
    assert power / trials > 0.8


def test_median_interval_covers_the_true_median() -> None:
    rng = np.random.default_rng(1)
    n, trials = 60, 1000
    low, high = median_ci_ranks(n)
    covered = 0
    for _ in range(trials):
        values = np.sort(rng.lognormal(0.0, 0.5, size=n))  # true median exp(0) = 1
        covered += values[low] <= 1.0 <= values[high]
    assert covered / trials >= 0.93
    assert median_ci_ranks(3) == (0, 2)  # too few samples for 95%: the whole range


def test_latency_ratio_pairs_by_sample() -> None:
    rng = np.random.default_rng(2)
    fp32 = rng.uniform(0.01, 0.05, size=200)  # long and short texts
    slower = fp32 * 1.3 * rng.uniform(0.97, 1.03, size=200)
    ratio = latency_ratio(list(zip(slower, fp32, strict=True)))
    assert ratio is not None
    assert ratio.ratio == pytest.approx(1.3, rel=0.01)
    assert ratio.ci95[0] < ratio.ratio < ratio.ci95[1]
    assert ratio.ci95[1] - ratio.ci95[0] < 0.02  # pairing removes the spread of text lengths
    assert ratio.n == 200
    assert latency_ratio([]) is None
    assert latency_ratio(None) is None
