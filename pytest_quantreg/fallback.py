"""The fallback search: the smallest set of units to keep in FP32 so that a precision passes its
accuracy gates (drop, relative accuracy, flip rate, KL; significance-aware where ``alpha`` is set).

The sample is split in two halves, stratified by label. Every decision is made on the search half:
the units are ranked there (:mod:`pytest_quantreg.sensitivity`), the shortest prefix of the
ranking that passes the gates is found (doubling the prefix, then bisecting), then each unit of the
set is tried without (least sensitive first) and dropped when the gates still pass, so that no
single unit can be left out. On the search half the gates are judged
with headroom (each limit tightened by ``--quantreg-fallback-headroom`` percent): a set that just
scrapes through on one half often fails on the other. The set found is then confirmed on the
other half, which took no part in choosing it, at the gates' own limits. A set stored with the
baseline is checked first: when it still passes both halves there is no search. A budget in forward
passes and seconds bounds the work; when it runs out the best set so far is reported as such.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_quantreg.probe import BudgetExhausted, Probe
from pytest_quantreg.sensitivity import Sensitivity, focus_samples, rank_units
from pytest_quantreg.stats import Agreement
from pytest_quantreg.units import Unit, count, set_change

Judge = Callable[[np.ndarray, Sequence[int], bool], tuple[Agreement, list[str]]]  # rows, samples, with headroom


@dataclass(frozen=True)
class Trial:
    """A set of units restored to FP32, judged by the gates on one part of the sample."""

    units: tuple[str, ...]
    part: str
    passes: bool
    n: int
    accuracy: float
    metric_drop_pp: float
    flip_rate: float
    flips: int
    kl_mean: float
    failures: tuple[str, ...]

    def describe(self) -> str:
        verdict = "passes" if self.passes else "fails: " + "; ".join(self.failures)
        return (
            f"accuracy {self.accuracy:.2%}, drop {self.metric_drop_pp:.2f} pp, flips {self.flip_rate:.2%} ({self.flips}/{self.n}), "
            f"mean KL {self.kl_mean:.4f}: {verdict}"
        )


@dataclass(frozen=True)
class Fallback:
    """What the search found for one precision."""

    precision: str
    needed: bool  # False: the precision passes its gates as it is, so there was no search
    sensitivity: Sensitivity
    units: tuple[Unit, ...]
    found: Trial | None  # the set on the search half
    confirmed: Trial | None  # the set on the held-out half
    source: str  # "search", "stored" (the baseline's set still passes) or "none"
    stopped: str | None  # why the search stopped short of a passing, pruned set
    stored: tuple[str, ...] | None
    passes_used: int
    seconds: float
    samples: int  # the samples of one ordinary pass
    set_share: float  # the set's share of the model's Linear parameters
    kept_share: float  # with the layers the run keeps in FP32 anyway
    settings: dict[str, str] = field(default_factory=dict)
    backend: str = ""  # the precision's backend: which of ``settings`` applies to it
    strategy: str = "swap"

    @property
    def passes(self) -> bool:
        """Whether the set passes the gates on both halves."""
        return self.found is not None and self.found.passes and self.confirmed is not None and self.confirmed.passes

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer for unit in self.units for layer in unit.layers)

    def change(self) -> str | None:
        """How the set differs from the one stored with the baseline, or None when nothing is stored."""
        if self.stored is None:
            return None
        if self.source == "stored":
            return f"the stored set ({count(len(self.stored))}) still passes"
        change = set_change(self.stored, [unit.name for unit in self.units])
        return f"the set stored with the baseline no longer passes; {change}" if change else None

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "needed": self.needed,
            "passes": self.passes,
            "source": self.source,
            "stopped": self.stopped,
            "units": [unit.name for unit in self.units],
            "layers": list(self.layers),
            "set_share": self.set_share,
            "kept_share": self.kept_share,
            "found": _trial_json(self.found),
            "confirmed": _trial_json(self.confirmed),
            "stored": list(self.stored) if self.stored is not None else None,
            "change": self.change(),
            "settings": self.settings,
            "backend": self.backend,
            "strategy": self.strategy,
            "cost": {"forward_passes": self.passes_used, "seconds": round(self.seconds, 3), "ordinary_pass": self.samples},
            "sensitivity": {
                "focus_samples": len(self.sensitivity.focus),
                "focus_flips": self.sensitivity.focus_flips,
                "focus_kl": self.sensitivity.focus_kl,
                "stopped": self.sensitivity.stopped,
                "units": [
                    {
                        "rank": rank,
                        "unit": e.unit.name,
                        "layers": list(e.unit.layers),
                        "parameters": e.unit.parameters,
                        "kl_recovered": e.kl_recovered,
                        "flips_fixed": e.flips_fixed,
                        "flips_added": e.flips_added,
                        "min_snr_db": e.min_snr_db,
                    }
                    for rank, e in enumerate(self.sensitivity.effects, 1)
                ],
            },
        }


def _trial_json(trial: Trial | None) -> dict[str, Any] | None:
    if trial is None:
        return None
    return {
        "part": trial.part,
        "n": trial.n,
        "passes": trial.passes,
        "accuracy": trial.accuracy,
        "metric_drop_pp": trial.metric_drop_pp,
        "flip_rate": trial.flip_rate,
        "kl_mean": trial.kl_mean,
        "failures": list(trial.failures),
    }


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

    def run(self, cap: int | None, stored: Sequence[str] | None) -> dict[str, Any]:
        """Unless the precision already passes, check the ``stored`` set, then rank the units and search;
        a precision that passes gets its ranking only. Returns the fields of :class:`Fallback` the search decides."""
        everything = list(range(len(self.labels)))
        needed = not self.trial((), "all", everything).passes
        search_half, held_out = halves(self.labels)
        result: dict[str, Any] = {"needed": needed, "units": (), "found": None, "confirmed": None, "source": "none", "stopped": None}
        result["stored"] = tuple(stored) if stored is not None else None
        if needed and stored:
            try:
                kept = self._stored_still_passes(stored, cap, search_half, held_out)
            except BudgetExhausted as exc:
                return {**result, "sensitivity": Sensitivity((), (), 0, 0.0, stopped=str(exc)), "stopped": str(exc)}
            if kept is not None:
                unranked = Sensitivity((), (), 0, 0.0, stopped="the set stored with the baseline still passes")
                return {**result, "sensitivity": unranked, "units": kept[0], "found": kept[1], "confirmed": kept[2], "source": "stored"}
        quantized = self.probe.logits(frozenset(), everything)
        focus = focus_samples(quantized, self.fp32_probs, self.fp32_labels, search_half)
        sensitivity = rank_units(self.probe, self.units, self.fp32_probs, self.fp32_labels, focus)
        result.update(sensitivity=sensitivity, stopped=sensitivity.stopped)
        if not needed:
            return result
        ranking = [effect.unit for effect in sensitivity.effects] + list(sensitivity.unmeasured)
        chosen, found, stopped = self._greedy(ranking, search_half, cap)
        confirmed = None
        if found is not None and stopped is None:
            try:
                confirmed = self.trial(chosen, "held-out", held_out)
            except BudgetExhausted as exc:
                stopped = f"{exc} before the set was confirmed on the held-out half"
        return {**result, "units": tuple(chosen), "found": found, "confirmed": confirmed, "source": "search", "stopped": stopped}

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
