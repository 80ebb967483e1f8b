"""One precision's fallback search put together from the run: its models, FP32's stored outcome, the
gates and the budget; the result, and the precision measured with the set applied."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pytest_quantreg import probe, units
from pytest_quantreg.evaluation import Inputs, Measurement
from pytest_quantreg.fallback import Fallback, Search
from pytest_quantreg.gates import Limit, gate_failures
from pytest_quantreg.metrics import Metric
from pytest_quantreg.sensitivity import Sensitivity, softmax
from pytest_quantreg.stats import Agreement, Reference, compare
from pytest_quantreg.weights import weight_report


@dataclass(frozen=True)
class Gates:
    """What a set is judged by: FP32's outcome in the baseline, the gates' limits and the metric."""

    reference: Reference
    limits: Mapping[str, Limit]
    metric: Metric
    class_names: Sequence[str]
    headroom: float  # percent by which the search half's limits are tightened

    def judge(self, label: str, inputs: Inputs) -> Callable[[np.ndarray, Sequence[int], bool], tuple[Agreement, list[str]]]:
        """The search's judge: logits of some samples -> their statistics and the gates they fail."""
        strict = {key: with_headroom(key, limit, self.headroom) for key, limit in self.limits.items()}

        def judge(rows: np.ndarray, indices: Sequence[int], headroom: bool) -> tuple[Agreement, list[str]]:
            stats = compare(outcome(label, rows, indices, inputs), self.reference, self.metric, self.class_names)
            return stats, [message for _, message in gate_failures(stats, strict if headroom else self.limits)[0]]

        return judge


@dataclass(frozen=True)
class Subject:
    """The precision searched: its label and backend, its model, how to rebuild it keeping more layers in
    FP32, the Linear layers it keeps in FP32 already and the setting that named them."""

    label: str
    backend: str
    model: Any
    rebuild: Callable[[tuple[str, ...]], torch.nn.Module]
    kept: tuple[str, ...]
    tokens: tuple[str, ...]


def find_fallback(
    subject: Subject,
    fp32_model: torch.nn.Module,
    fp32_weights: Mapping[str, torch.Tensor],
    inputs: Inputs,
    measured: Measurement,
    gates: Gates,
    budget: probe.Budget,
    cap: int | None,
    stored: Sequence[str] | None,
) -> tuple[Fallback, Measurement | None]:
    """Search ``subject``; return what was found and, when a set passes the search half, the precision
    measured with that set applied (``label[fallback]``)."""
    candidates = units.model_units(fp32_model, subject.kept)
    layers = [layer for unit in candidates for layer in unit.layers]
    if probe.swappable(subject.model, fp32_model, layers):
        restored, strategy = probe.swapping(subject.model, fp32_model), "swap"
    else:
        restored, strategy = probe.rebuilding(lambda extra: subject.rebuild((*subject.kept, *sorted(extra)))), "rebuild"
    passes = probe.Probe(restored, inputs, budget)
    everything = range(len(inputs))
    if measured.batch_size == 1:  # batched logits differ from the probe's per-sample ones
        passes.seed(frozenset(), everything, measured.logits)
    fp32_probs = np.asarray([gates.reference.probabilities[i] for i in inputs.ids], dtype=np.float64)
    fp32_labels = np.asarray([gates.reference.predictions[i] for i in inputs.ids])
    search = Search(passes, candidates, fp32_probs, fp32_labels, inputs.labels, gates.judge(subject.label, inputs))
    decided = search.run(cap, stored)
    decided["sensitivity"] = with_snr(decided["sensitivity"], subject, fp32_weights)
    chosen = [layer for unit in decided["units"] for layer in unit.layers]
    total = units.linear_parameters(fp32_model)
    share = {unit.name: unit.parameters / total for unit in candidates}
    set_share = sum(share[unit.name] for unit in decided["units"])
    result = Fallback(
        precision=subject.label,
        **decided,
        passes_used=budget.used,
        seconds=budget.elapsed,
        samples=len(inputs),
        set_share=set_share,
        kept_share=1 - sum(share.values()) + set_share,
        settings=units.settings((*subject.tokens, *(t for unit in decided["units"] for t in unit.tokens)), (*subject.kept, *chosen)),
        backend=subject.backend,
        strategy=strategy,
    )
    if not chosen or result.found is None or not result.found.passes:
        return result, None
    applied = outcome(f"{subject.label}[fallback]", passes.logits(frozenset(chosen), everything, charge=False), everything, inputs)
    size = passes.size_mb(frozenset(chosen))
    return result, dataclasses.replace(applied, device=measured.device, size_mb=size, kept_fp32=(*subject.kept, *chosen))


def with_headroom(key: str, limit: Limit, percent: float) -> Limit:
    """``limit`` tightened by ``percent``: maxima lowered, the relative-accuracy minimum raised towards 100%."""
    if limit.value is None or key == "alpha" or percent == 0:
        return limit
    scale = 1 - percent / 100
    value = 100 - (100 - limit.value) * scale if key == "min_relative_accuracy" else limit.value * scale
    return Limit(value, f"{limit.source}, less {percent:g}% headroom while searching (--quantreg-fallback-headroom)")


def outcome(label: str, rows: np.ndarray, indices: Sequence[int], inputs: Inputs) -> Measurement:
    """An untimed measurement of the samples ``indices`` from their logits ``rows``."""
    positions = list(indices)
    probs = softmax(rows)
    return Measurement(
        precision=label,
        device="",
        ids=tuple(inputs.ids[i] for i in positions),
        labels=tuple(inputs.labels[i] for i in positions),
        predictions=tuple(int(p.argmax()) for p in probs),
        probabilities=tuple(tuple(float(x) for x in p) for p in probs),
        logits=tuple(tuple(float(x) for x in row) for row in rows),
        size_mb=0.0,
        latencies_s=None,
        timer="not timed (fallback search)",
    )


def with_snr(sensitivity: Sensitivity, subject: Subject, fp32_weights: Mapping[str, torch.Tensor]) -> Sensitivity:
    """The sensitivity with each unit's worst weight SNR (the weight report's, for torch modules and ONNX files
    alike), read side by side with its effect."""
    report = weight_report(subject.label, dict(fp32_weights), subject.model, subject.kept)
    snr = {layer.name: layer.snr_db for layer in report.layers}
    effects = tuple(
        dataclasses.replace(e, min_snr_db=min((snr[n] for n in e.unit.layers if n in snr), default=None)) for e in sensitivity.effects
    )
    return dataclasses.replace(sensitivity, effects=effects)
