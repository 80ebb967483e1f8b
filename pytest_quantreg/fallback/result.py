"""What a fallback search found for one precision: the trials it judged, what it decided and the
report of it (:class:`Fallback`, the ``quantreg_fallback`` fixture's value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_quantreg.fallback.sensitivity import Sensitivity
from pytest_quantreg.fallback.units import Unit, count, set_change


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


@dataclass(frozen=True)
class Decision:
    """What the search decided on the sample: whether a set was needed, the ranking, the set and its trials."""

    needed: bool  # False: the precision passes its gates as it is, so there was no search
    sensitivity: Sensitivity
    units: tuple[Unit, ...] = ()
    found: Trial | None = None  # the set on the search half
    confirmed: Trial | None = None  # the set on the held-out half
    source: str = "none"  # "search", "stored" (the baseline's set still passes) or "none"
    stopped: str | None = None  # why the search stopped short of a passing, pruned set
    stored: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Fallback(Decision):
    """What the search found for one precision: its decision, its cost and the settings that apply its set."""

    precision: str
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
