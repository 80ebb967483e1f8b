"""The fallback search: the smallest set of units to keep in FP32 so that a precision passes its
accuracy gates (drop, relative accuracy, flip rate, KL; significance-aware where ``alpha`` is set).

The sample is split in two halves, stratified by label. Every decision is made on the search half:
the units are ranked there (:mod:`pytest_quantreg.fallback.sensitivity`), the shortest prefix of the
ranking that passes the gates is found (doubling the prefix, then bisecting), then each unit of the
set is tried without (least sensitive first) and dropped when the gates still pass, so that no
single unit can be left out. On the search half the gates are judged
with headroom (each limit tightened by ``--quantreg-fallback-headroom`` percent): a set that just
scrapes through on one half often fails on the other. The set found is then confirmed on the
other half, which took no part in choosing it, at the gates' own limits. A set stored with the
baseline is checked first: when it still passes both halves there is no search. A budget in forward
passes and seconds bounds the work; when it runs out the best set so far is reported as such.

:func:`find_fallback` puts one precision's search together from the run (its models, FP32's stored
outcome, the gates and the budget) and returns the result, and the precision measured with the set
applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pytest_quantreg.backends.base import RestoresLayers
from pytest_quantreg.backends.registry import dequantizers, keep_settings
from pytest_quantreg.fallback import probe, units
from pytest_quantreg.fallback.probe import BudgetExhausted, Probe
from pytest_quantreg.fallback.result import Decision, Fallback, Trial
from pytest_quantreg.fallback.sensitivity import Sensitivity, focus_samples, rank_units, softmax
from pytest_quantreg.fallback.units import Unit
from pytest_quantreg.judge.gates import Limit, gate_failures
from pytest_quantreg.judge.metrics import Metric
from pytest_quantreg.judge.stats import Agreement, Reference, compare
from pytest_quantreg.measure.evaluation import Measurement
from pytest_quantreg.measure.inputs import Inputs
from pytest_quantreg.measure.weights import weight_report

Judge = Callable[[np.ndarray, Sequence[int], bool], tuple[Agreement, list[str]]]  # rows, samples, with headroom


def halves(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """The sample split in two, stratified: each label's samples go alternately to the search and the held-out half."""
    seen: dict[int, int] = {}
    search: list[int] = []
    held_out: list[int] = []
    for index, label in enumerate(labels):
        (search if seen.get(label, 0) % 2 == 0 else held_out).append(index)
        seen[label] = seen.get(label, 0) + 1
    return search, held_out


@dataclass
class Search:
    """One precision's search: its probe, its units, FP32's outcome and the gates."""

    probe: Probe
    units: Sequence[Unit]
    fp32_probs: np.ndarray
    fp32_labels: np.ndarray
    labels: Sequence[int]
    judge: Judge

    def trial(self, units: Sequence[Unit], part: str, indices: Sequence[int]) -> Trial:
        """Judge ``units`` restored to FP32 on ``indices`` (charged against the budget)."""
        rows = self.probe.logits(_layers(units), indices)
        stats, failures = self.judge(rows, indices, part == "search")
        return Trial(
            units=tuple(unit.name for unit in units),
            part=part,
            passes=not failures,
            n=stats.n,
            accuracy=stats.accuracy,
            metric_drop_pp=stats.metric_drop_pp,
            flip_rate=stats.flip_rate,
            flips=stats.flips,
            kl_mean=stats.kl_mean,
            failures=tuple(failures),
        )

    def run(self, cap: int | None, stored: Sequence[str] | None) -> Decision:
        """Unless the precision already passes, check the ``stored`` set, then rank the units and search;
        a precision that passes gets its ranking only."""
        everything = list(range(len(self.labels)))
        needed = not self.trial((), "all", everything).passes
        search_half, held_out = halves(self.labels)
        stored = tuple(stored) if stored is not None else None
        if needed and stored:
            try:
                kept = self._stored_still_passes(stored, cap, search_half, held_out)
            except BudgetExhausted as exc:
                return Decision(needed, Sensitivity((), (), 0, 0.0, stopped=str(exc)), stopped=str(exc), stored=stored)
            if kept is not None:
                unranked = Sensitivity((), (), 0, 0.0, stopped="the set stored with the baseline still passes")
                return Decision(needed, unranked, *kept, source="stored", stored=stored)
        quantized = self.probe.logits(frozenset(), everything)
        focus = focus_samples(quantized, self.fp32_probs, self.fp32_labels, search_half)
        sensitivity = rank_units(self.probe, self.units, self.fp32_probs, self.fp32_labels, focus)
        if not needed:
            return Decision(needed, sensitivity, stopped=sensitivity.stopped, stored=stored)
        ranking = [effect.unit for effect in sensitivity.effects] + list(sensitivity.unmeasured)
        chosen, found, stopped = self._greedy(ranking, search_half, cap)
        confirmed = None
        if found is not None and stopped is None:
            try:
                confirmed = self.trial(chosen, "held-out", held_out)
            except BudgetExhausted as exc:
                stopped = f"{exc} before the set was confirmed on the held-out half"
        return Decision(needed, sensitivity, tuple(chosen), found, confirmed, "search", stopped, stored)

    def _stored_still_passes(
        self, stored: Sequence[str], cap: int | None, search_half: Sequence[int], held_out: Sequence[int]
    ) -> tuple[tuple[Unit, ...], Trial, Trial] | None:
        """The stored set with its two trials when it still passes both halves (one pass), else None."""
        by_name = {unit.name: unit for unit in self.units}
        if not all(name in by_name for name in stored) or (cap is not None and len(stored) > cap):
            return None
        chosen = tuple(by_name[name] for name in stored)
        found = self.trial(chosen, "search", search_half)
        if not found.passes:
            return None
        confirmed = self.trial(chosen, "held-out", held_out)
        return (chosen, found, confirmed) if confirmed.passes else None

    def _greedy(self, ranking: Sequence[Unit], indices: Sequence[int], cap: int | None) -> tuple[list[Unit], Trial | None, str | None]:
        """The shortest passing prefix of the ranking, then pruning; stops at ``cap`` units or the budget."""
        chosen, found, stopped = self._shortest_prefix(ranking, indices, cap)
        if stopped:
            return chosen, found, stopped
        try:
            for unit in reversed(list(chosen)):
                if len(chosen) == 1:
                    break
                without = [u for u in chosen if u is not unit]
                trial = self.trial(without, "search", indices)
                if trial.passes:
                    chosen, found = without, trial
        except BudgetExhausted as exc:
            return chosen, found, f"{exc} while pruning: the set may hold units it can do without"
        return chosen, found, None

    def _shortest_prefix(
        self, ranking: Sequence[Unit], indices: Sequence[int], cap: int | None
    ) -> tuple[list[Unit], Trial | None, str | None]:
        """The ranked additions: the shortest prefix of ``ranking`` that passes on ``indices``, found by
        doubling the prefix and then bisecting (about 2 log2 k trials where adding one unit at a time
        takes k; the same set while passing only grows with the prefix)."""
        limit = len(ranking) if cap is None else min(cap, len(ranking))
        failed, passed = 0, 0  # the longest prefix known to fail, the shortest known to pass (0: none yet)
        best: tuple[list[Unit], Trial | None] = ([], None)
        size = 1
        try:
            while not passed and failed < limit:
                size = min(size, limit)
                trial = self.trial(ranking[:size], "search", indices)
                best = (list(ranking[:size]), trial)
                if trial.passes:
                    passed = size
                else:
                    failed, size = size, size * 2
            if not passed:
                if limit < len(ranking):
                    return best[0], best[1], f"the quantreg marker allows at most {cap} units in FP32 (max_fp32_units) and they do not pass"
                return best[0], best[1], "no set passes: even every unit in FP32 fails the gates"
            while passed - failed > 1:
                middle = (failed + passed) // 2
                trial = self.trial(ranking[:middle], "search", indices)
                if trial.passes:
                    passed, best = middle, (list(ranking[:middle]), trial)
                else:
                    failed = middle
        except BudgetExhausted as exc:
            passing = best[1] is not None and best[1].passes
            return best[0], best[1], f"{exc} {'while bisecting: a shorter prefix may pass' if passing else 'before any set passed'}"
        return best[0], best[1], None


def _layers(units: Sequence[Unit]) -> frozenset[str]:
    return frozenset(layer for unit in units for layer in unit.layers)


@dataclass(frozen=True)
class Gates:
    """What a set is judged by: FP32's outcome in the baseline, the gates' limits and the metric."""

    reference: Reference
    limits: Mapping[str, Limit]
    metric: Metric
    class_names: Sequence[str]
    headroom: float  # percent by which the search half's limits are tightened

    def judge(self, label: str, inputs: Inputs) -> Judge:
        """The search's judge: logits of some samples -> their statistics and the gates they fail."""
        strict = {key: with_headroom(key, limit, self.headroom) for key, limit in self.limits.items()}

        def judge(rows: np.ndarray, indices: Sequence[int], headroom: bool) -> tuple[Agreement, list[str]]:
            stats = compare(outcome(label, rows, indices, inputs), self.reference, self.metric, self.class_names)
            return stats, [message for _, message in gate_failures(stats, strict if headroom else self.limits)[0]]

        return judge


@dataclass(frozen=True)
class Searched:
    """The precision searched: its label and backend, its model, how to rebuild it keeping more layers in
    FP32, the Linear layers it keeps in FP32 already and the setting that named them."""

    label: str
    backend: str
    model: Any
    rebuild: Callable[[tuple[str, ...]], torch.nn.Module]
    kept: tuple[str, ...]
    tokens: tuple[str, ...]


def find_fallback(
    subject: Searched,
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
    elif isinstance(subject.model, RestoresLayers):  # restores layers itself, without quantizing again
        model = subject.model
        restored, strategy = probe.rebuilding(lambda extra: model.with_fp32(extra, fp32_weights)), "restore"
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
    decided = dataclasses.replace(decided, sensitivity=with_snr(decided.sensitivity, subject, fp32_weights))
    chosen = [layer for unit in decided.units for layer in unit.layers]
    total = units.linear_parameters(fp32_model)
    share = {unit.name: unit.parameters / total for unit in candidates}
    set_share = sum(share[unit.name] for unit in decided.units)
    result = Fallback(
        **vars(decided),
        precision=subject.label,
        passes_used=budget.used,
        seconds=budget.elapsed,
        samples=len(inputs),
        set_share=set_share,
        kept_share=1 - sum(share.values()) + set_share,
        settings=keep_settings((*subject.tokens, *(t for unit in decided.units for t in unit.tokens)), (*subject.kept, *chosen)),
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


def with_snr(sensitivity: Sensitivity, subject: Searched, fp32_weights: Mapping[str, torch.Tensor]) -> Sensitivity:
    """The sensitivity with each unit's worst weight SNR (the weight report's, for torch modules and Classifiers
    alike), read side by side with its effect."""
    report = weight_report(subject.label, dict(fp32_weights), subject.model, subject.kept, dequantizers())
    snr = {layer.name: layer.snr_db for layer in report.layers}
    effects = tuple(
        dataclasses.replace(e, min_snr_db=min((snr[n] for n in e.unit.layers if n in snr), default=None)) for e in sensitivity.effects
    )
    return dataclasses.replace(sensitivity, effects=effects)
