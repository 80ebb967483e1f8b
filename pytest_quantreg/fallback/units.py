"""Units of a model for the fallback search, and a set of them written as each backend's setting.

A unit is what a fallback keeps in FP32 as one piece: the attention's query, key and value
projections of one block together, or any other Linear layer alone (attention output, FFN in,
FFN out, pooler, head). Unit names are module names, as in the weight report, so a unit is also a
valid ``--quantreg-keep-fp32`` token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_quantreg.measure import keep

if TYPE_CHECKING:
    import torch

QKV = frozenset({"query", "key", "value", "q_proj", "k_proj", "v_proj", "q_lin", "k_lin", "v_lin", "q", "k", "v"})


@dataclass(frozen=True)
class Unit:
    """Linear layers kept in FP32 together, with their parameter count."""

    name: str
    layers: tuple[str, ...]
    parameters: int

    @property
    def tokens(self) -> tuple[str, ...]:
        """How ``--quantreg-keep-fp32`` names this unit: its module, or its layers when they share one with others."""
        return self.layers if self.name.endswith("}") else (self.name,)


def model_units(model: torch.nn.Module, kept: Iterable[str] = ()) -> list[Unit]:
    """The units of ``model``'s Linear layers (works on the meta device), those in ``kept`` left out, in model order."""
    layers = [name for name, _ in keep.linear_layers(model)]
    modules = dict(model.named_modules())
    groups: dict[str, list[str]] = {}
    for name in layers:
        if name in kept:
            continue
        parent, _, leaf = name.rpartition(".")
        groups.setdefault(f"{parent}\0qkv" if leaf in QKV and parent else name, []).append(name)
    units = []
    for key, names in groups.items():
        name = key
        if key.endswith("\0qkv"):
            parent = key.removesuffix("\0qkv")
            under = [layer for layer in layers if layer.startswith(parent + ".")]
            name = parent if under == names else f"{parent}.{{{','.join(n.rpartition('.')[2] for n in names)}}}"
        units.append(Unit(name, tuple(names), sum(_parameters(modules[n]) for n in names)))
    return units


def linear_parameters(model: torch.nn.Module) -> int:
    """Weights and biases of every Linear layer of ``model``."""
    modules = dict(model.named_modules())
    return sum(_parameters(modules[name]) for name, _ in keep.linear_layers(model))


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def count(units: int) -> str:
    """``1 unit``, ``2 units``."""
    return f"{units} unit" if units == 1 else f"{units} units"


def set_change(before: Sequence[str], after: Sequence[str]) -> str | None:
    """How the unit set ``after`` differs from ``before`` (size, units new and left), or None when it is the same."""
    parts = []
    if len(after) != len(before):
        parts.append(f"{'grew' if len(after) > len(before) else 'shrank'} from {len(before)} to {count(len(after))}")
    new = [name for name in after if name not in before]
    if new:
        parts.append(f"new: {', '.join(new)}")
    gone = [name for name in before if name not in after]
    if gone:
        parts.append(f"left: {', '.join(gone)}")
    return "; ".join(parts) or None
