"""Which units cause a precision's disagreement with FP32: each unit restored alone, measured on the
samples where the quantized model disagrees most with FP32 (its flips, then the highest KL).

A unit's effect is the share of those samples' KL(FP32 || quantized) that restoring it removes, and
the flips it fixes (and adds). Units are ranked by KL recovered, then by net flips fixed: KL moves
smoothly with each unit, while flips are few and come in steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pytest_quantreg.fallback.probe import BudgetExhausted, Probe
from pytest_quantreg.fallback.units import Unit
from pytest_quantreg.judge.stats import kl_per_sample

FOCUS = 64  # samples measured per unit (all flips when there are more)
NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class UnitEffect:
    """What restoring one unit to FP32 does on the focus samples."""

    unit: Unit
    kl_recovered: float  # share of the focus samples' summed KL removed (negative: restoring it made things worse)
    flips_fixed: int  # focus flips that agree with FP32 once the unit is restored
    flips_added: int  # focus samples that agreed and no longer do
    min_snr_db: float | None = None  # the unit's worst weight SNR, from the weight report


@dataclass(frozen=True)
class Sensitivity:
    """The units ranked, most effect first, and the samples they were measured on."""

    effects: tuple[UnitEffect, ...]
    focus: tuple[int, ...]
    focus_flips: int
    focus_kl: float  # summed KL(FP32 || quantized) over the focus samples
    unmeasured: tuple[Unit, ...] = ()  # units the budget left no passes for, in model order
    stopped: str | None = None  # why some units were not measured


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def focus_samples(
    quantized: np.ndarray, fp32_probs: np.ndarray, fp32_labels: np.ndarray, indices: Sequence[int], size: int = FOCUS
) -> list[int]:
    """Of ``indices`` (rows of the arrays), the flips and then the highest-KL samples: ``size`` of them, or every flip."""
    rows = np.asarray(indices)
    kl = kl_per_sample(fp32_probs[rows], softmax(quantized[rows]))
    flipped = quantized[rows].argmax(axis=1) != fp32_labels[rows]
    order = np.lexsort((-kl, ~flipped))  # flips first, then by KL, highest first
    count = min(len(rows), max(size, int(flipped.sum())))
    return [int(rows[i]) for i in order[:count]]


def rank_units(probe: Probe, units: Sequence[Unit], fp32_probs: np.ndarray, fp32_labels: np.ndarray, focus: Sequence[int]) -> Sensitivity:
    """Each unit restored alone on the ``focus`` samples; the effects ranked (stable in model order on ties)."""
    base = probe.logits(NOTHING, focus)
    target_probs, target = fp32_probs[list(focus)], fp32_labels[list(focus)]
    base_kl = float(kl_per_sample(target_probs, softmax(base)).sum())
    flipped = base.argmax(axis=1) != target
    effects: list[UnitEffect] = []
    for position, unit in enumerate(units):
        try:
            rows = probe.logits(frozenset(unit.layers), focus)
        except BudgetExhausted as exc:
            ranked = _ranked(effects)
            return Sensitivity(ranked, tuple(focus), int(flipped.sum()), base_kl, tuple(units[position:]), str(exc))
        agrees = rows.argmax(axis=1) == target
        kl = float(kl_per_sample(target_probs, softmax(rows)).sum())
        effects.append(
            UnitEffect(
                unit=unit,
                kl_recovered=(base_kl - kl) / base_kl if base_kl > 0 else 0.0,
                flips_fixed=int(np.sum(flipped & agrees)),
                flips_added=int(np.sum(~flipped & ~agrees)),
            )
        )
    return Sensitivity(_ranked(effects), tuple(focus), int(flipped.sum()), base_kl)


def _ranked(effects: list[UnitEffect]) -> tuple[UnitEffect, ...]:
    return tuple(sorted(effects, key=lambda e: (-e.kl_recovered, -(e.flips_fixed - e.flips_added))))
