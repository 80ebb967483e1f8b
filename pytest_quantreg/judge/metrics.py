"""Per-class metrics (scikit-learn) and the metric a team ships on, with its paired drop.

Accuracy hides a quantized model drifting toward one class; macro-F1 and a class's recall do not.
``--quantreg-metric`` chooses what the accuracy-drop gates judge: ``accuracy`` (the default),
``macro-f1``, ``weighted-f1``, or ``recall:NAME``, ``precision:NAME``, ``f1:NAME`` of one class.
The drop's 95% interval resamples samples exactly as the accuracy drop's does (paired: one
resample weights FP32's and the precision's predictions alike).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pytest_quantreg.errors import QuantregError

ACCURACY = "accuracy"
AVERAGES = {"macro-f1": "macro-F1", "weighted-f1": "weighted-F1"}
PER_CLASS = ("recall", "precision", "f1")
OPTION = "--quantreg-metric"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_CHUNK = 1_000


@dataclass(frozen=True)
class Metric:
    """What the accuracy-drop gates judge: ``kind`` accuracy, macro-f1, weighted-f1, recall, precision or f1."""

    kind: str = ACCURACY
    label: int | None = None  # the class of recall / precision / f1
    label_name: str | None = None

    @property
    def name(self) -> str:
        """As people write it: accuracy, macro-F1, recall of 'negative'."""
        if self.kind in AVERAGES:
            return AVERAGES[self.kind]
        return self.kind if self.label is None else f"{self.kind} of {self.label_name!r}"

    @property
    def spec(self) -> str:
        """As the option takes it: accuracy, macro-f1, recall:negative."""
        return self.kind if self.label is None else f"{self.kind}:{self.label_name}"


ACCURACY_METRIC = Metric()


def parse_metric(value: str, labels: Sequence[str]) -> Metric:
    """The metric ``value`` names for a model with ``labels``; ``QuantregError`` with the choices otherwise."""
    text = value.strip()
    kind, _, name = text.partition(":")
    kind = kind.strip().lower()
    choices = f"accuracy, macro-f1, weighted-f1, or recall / precision / f1 of a class: {', '.join(f'recall:{n}' for n in labels)}"
    if not name and kind in (ACCURACY, *AVERAGES):
        return Metric(kind)
    if kind in PER_CLASS and name:
        if name.strip() not in labels:
            raise QuantregError(f"{OPTION}={text}: the model has no class {name.strip()!r}; its classes are {', '.join(labels)}")
        return Metric(kind, list(labels).index(name.strip()), name.strip())
    raise QuantregError(f"{OPTION}={text} is not a metric; use {choices}")


@dataclass(frozen=True)
class ClassMetrics:
    """Per-class precision, recall, F1 and support, their macro and weighted F1, and the confusion matrix
    (rows: true class, columns: predicted), from scikit-learn. Classes without a sample are not averaged."""

    labels: tuple[str, ...]
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    macro_f1: float
    weighted_f1: float
    confusion: tuple[tuple[int, ...], ...]

    def value(self, metric: Metric, accuracy: float) -> float:
        """The value of ``metric`` (a fraction)."""
        if metric.kind == ACCURACY:
            return accuracy
        if metric.kind == "macro-f1":
            return self.macro_f1
        if metric.kind == "weighted-f1":
            return self.weighted_f1
        assert metric.label is not None
        return {"recall": self.recall, "precision": self.precision, "f1": self.f1}[metric.kind][metric.label]

    def to_json(self) -> dict[str, object]:
        return {
            "per_class": {
                name: {"precision": p, "recall": r, "f1": f, "support": s}
                for name, p, r, f, s in zip(self.labels, self.precision, self.recall, self.f1, self.support, strict=True)
            },
            "macro_f1": self.macro_f1,
            "weighted_f1": self.weighted_f1,
            "confusion_matrix": [list(row) for row in self.confusion],
        }


def class_metrics(truth: Sequence[int], predicted: Sequence[int], class_names: Sequence[str] = ()) -> ClassMetrics:
    """Per-class figures of ``predicted`` against ``truth`` (class ids indexing ``class_names``; by id without names)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = class_names_of(truth, predicted, class_names)
    everything = list(range(len(labels)))
    present = sorted(set(truth))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=everything, zero_division=0.0)
    return ClassMetrics(
        labels=tuple(labels),
        precision=tuple(float(x) for x in precision),
        recall=tuple(float(x) for x in recall),
        f1=tuple(float(x) for x in f1),
        support=tuple(int(x) for x in support),
        macro_f1=float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0.0)),
        weighted_f1=float(f1_score(truth, predicted, labels=present, average="weighted", zero_division=0.0)),
        confusion=tuple(tuple(int(x) for x in row) for row in confusion_matrix(truth, predicted, labels=everything)),
    )


def class_names_of(truth: Sequence[int], predicted: Sequence[int], class_names: Sequence[str] = ()) -> list[str]:
    """``class_names`` when given, else the class ids as names, as many as the labels and predictions need."""
    if class_names:
        return list(class_names)
    return [str(i) for i in range(max(*truth, *predicted) + 1)]


def check_sample(metric: Metric, truth: Sequence[int], labels: Sequence[str]) -> None:
    """A per-class metric needs its class in the sample (averages use the classes the sample has)."""
    counts = np.bincount(np.asarray(truth, dtype=np.int64), minlength=len(labels))
    if metric.label is not None and counts[metric.label] == 0:
        raise QuantregError(
            f"{OPTION}={metric.spec}: the sample has no example of class {metric.label_name!r}, so its {metric.kind} is undefined; "
            "add examples of it to the data set or draw more with --quantreg-samples"
        )


def paired_drop(
    metric: Metric, truth: Sequence[int], fp32: Sequence[int], mine: Sequence[int], n_classes: int
) -> tuple[float, tuple[float, float], float]:
    """FP32's ``metric`` minus this precision's, in points, its 95% bootstrap interval, and the one-sided
    bootstrap p-value that this precision is not worse (share of resamples where the drop is <= 0).

    Computed once per input: the gate, the benchmark JSON and the summary table all ask for it."""
    return _paired_drop(metric, tuple(truth), tuple(fp32), tuple(mine), n_classes)


@functools.lru_cache(maxsize=64)
def _paired_drop(
    metric: Metric, truth: tuple[int, ...], fp32: tuple[int, ...], mine: tuple[int, ...], n_classes: int
) -> tuple[float, tuple[float, float], float]:
    y = np.asarray(truth, dtype=np.int64)
    a, b = np.asarray(fp32, dtype=np.int64), np.asarray(mine, dtype=np.int64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    drops = []
    for start in range(0, BOOTSTRAP_RESAMPLES, _CHUNK):
        weights = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=min(_CHUNK, BOOTSTRAP_RESAMPLES - start))
        drops.append((_weighted_metric(metric, y, a, weights, n_classes) - _weighted_metric(metric, y, b, weights, n_classes)) * 100)
    resampled = np.concatenate(drops)
    ones = np.ones((1, len(y)), dtype=np.int64)
    point = float((_weighted_metric(metric, y, a, ones, n_classes) - _weighted_metric(metric, y, b, ones, n_classes))[0] * 100)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return point, (float(low), float(high)), float(np.mean(resampled <= 0))


def _weighted_metric(metric: Metric, y: np.ndarray, predicted: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """``metric`` of ``predicted`` on each row of sample ``weights`` (a bootstrap resample each), vectorised."""
    if metric.kind == ACCURACY:
        return weights @ (y == predicted) / weights.sum(axis=1)
    truth = np.stack([y == c for c in range(n_classes)], axis=1)  # samples x classes
    guess = np.stack([predicted == c for c in range(n_classes)], axis=1)
    tp, fp, fn = weights @ (truth & guess), weights @ (~truth & guess), weights @ (truth & ~guess)
    support = tp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    present = truth.any(axis=0)  # classes of the sample: the ones averaged, as in class_metrics
    if metric.kind == "macro-f1":
        return f1[:, present].mean(axis=1)
    if metric.kind == "weighted-f1":
        return (f1 * support)[:, present].sum(axis=1) / support[:, present].sum(axis=1)
    return {"recall": recall, "precision": precision, "f1": f1}[metric.kind][:, metric.label]


def flips_by_class(fp32: Sequence[int], mine: Sequence[int], labels: Sequence[str]) -> dict[str, int]:
    """How many predictions moved from FP32's class a to class b, as ``"a -> b": count``, most first."""
    moves: dict[tuple[int, int], int] = {}
    for before, after in zip(fp32, mine, strict=True):
        if before != after:
            moves[(before, after)] = moves.get((before, after), 0) + 1
    ordered = sorted(moves.items(), key=lambda item: (-item[1], item[0]))
    return {f"{labels[a]} -> {labels[b]}": count for (a, b), count in ordered}
