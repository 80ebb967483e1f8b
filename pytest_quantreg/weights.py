"""Per-layer weight quantization error: each quantized Linear layer dequantized and compared with FP32.

Supported storages: float casts (fp16, bf16, fp32), torch dynamic int8 packed weights, and
bitsandbytes LLM.int8 and 4-bit (NF4 / FP4) parameters. Errors are computed in float64.
"""

from __future__ import annotations

import math
import re
import statistics
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_INDEX = re.compile(r"\.\d+(?=\.|$)")


@dataclass(frozen=True)
class LayerError:
    """How far one layer's dequantized weight is from its FP32 weight."""

    name: str
    kind: str
    storage: str
    shape: tuple[int, ...]
    rel_l2: float
    snr_db: float
    cosine: float
    max_abs: float


@dataclass(frozen=True)
class KindSummary:
    """The layers of one kind (name with block indices as ``*``) taken together."""

    kind: str
    layers: int
    min_snr_db: float
    mean_snr_db: float
    mean_rel_l2: float
    max_abs: float


@dataclass(frozen=True)
class WeightReport:
    """Every compared Linear layer of one precision, in model order."""

    precision: str
    layers: tuple[LayerError, ...]

    def worst(self, count: int = 5) -> list[LayerError]:
        """The ``count`` layers with the lowest SNR."""
        return sorted(self.layers, key=lambda layer: layer.snr_db)[:count]

    def by_kind(self) -> list[KindSummary]:
        """One summary per layer kind, in model order."""
        groups: dict[str, list[LayerError]] = {}
        for layer in self.layers:
            groups.setdefault(layer.kind, []).append(layer)
        return [
            KindSummary(
                kind=kind,
                layers=len(items),
                min_snr_db=min(i.snr_db for i in items),
                mean_snr_db=statistics.fmean(i.snr_db for i in items) if all(math.isfinite(i.snr_db) for i in items) else math.inf,
                mean_rel_l2=statistics.fmean(i.rel_l2 for i in items),
                max_abs=max(i.max_abs for i in items),
            )
            for kind, items in groups.items()
        ]

    def to_json(self) -> dict[str, Any]:
        """The full table; an infinite SNR (exact weights) is written as null."""
        return {
            "precision": self.precision,
            "layers": [_finite(asdict(layer)) for layer in self.layers],
            "by_kind": [_finite(asdict(summary)) for summary in self.by_kind()],
        }


def error_metrics(reference: torch.Tensor, approx: torch.Tensor) -> tuple[float, float, float, float]:
    """Relative L2 error, SNR in dB, cosine similarity and max absolute error of ``approx``."""
    import torch

    ref = reference.detach().to("cpu", torch.float64).flatten()
    err = approx.detach().to("cpu", torch.float64).flatten() - ref
    signal, noise = float(ref.square().sum()), float(err.square().sum())
    rel = math.sqrt(noise / signal) if signal else math.inf
    snr = 10 * math.log10(signal / noise) if noise else math.inf
    approx64 = ref + err
    norms = float(ref.norm() * approx64.norm())
    cosine = float(ref @ approx64) / norms if norms else 0.0
    return rel, snr, cosine, float(err.abs().max()) if err.numel() else 0.0


def linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """FP32 copies of the weights of every Linear-like layer, by module name."""
    return {name: weight.clone() for name, weight, _ in _dequantized(model)}


def weight_report(precision: str, reference: dict[str, torch.Tensor], model: torch.nn.Module) -> WeightReport:
    """Compare every Linear-like layer of ``model`` with the FP32 weight of the same name."""
    rows = []
    for name, weight, storage in _dequantized(model):
        fp32 = reference.get(name)
        if fp32 is None or fp32.shape != weight.shape:
            continue
        rel, snr, cosine, max_abs = error_metrics(fp32, weight)
        rows.append(LayerError(name, _INDEX.sub(".*", name), storage, tuple(weight.shape), rel, snr, cosine, max_abs))
    return WeightReport(precision, tuple(rows))


def dequantized_weight(module: torch.nn.Module) -> tuple[torch.Tensor, str] | None:
    """The weight of a Linear-like ``module`` as float32 on the CPU and how it is stored; None otherwise."""
    import torch

    bnb = _bitsandbytes_layer(module)
    if bnb is not None:
        return bnb
    if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
        packed = module.weight()
        scheme = "per-channel" if packed.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) else "per-tensor"
        return packed.dequantize().float().cpu(), f"torch {str(packed.dtype).removeprefix('torch.')} {scheme}"
    if isinstance(module, torch.nn.Linear):
        return module.weight.detach().float().cpu(), str(module.weight.dtype).removeprefix("torch.")
    return None


def _bitsandbytes_layer(module: torch.nn.Module) -> tuple[torch.Tensor, str] | None:
    if "bitsandbytes" not in sys.modules:  # a model with bitsandbytes layers has imported it
        return None
    import bitsandbytes as bnb

    weight: Any = getattr(module, "weight", None)
    if isinstance(module, bnb.nn.Linear8bitLt) and getattr(weight, "SCB", None) is not None:
        codes = weight.CB if getattr(weight, "CB", None) is not None else weight.data
        return bnb.functional.int8_vectorwise_dequant(codes, weight.SCB).float().cpu(), "bitsandbytes int8 row-wise"
    if isinstance(module, bnb.nn.Linear4bit) and getattr(weight, "quant_state", None) is not None:
        state = weight.quant_state
        dequantized = bnb.functional.dequantize_4bit(weight.data, state).float().cpu()
        return dequantized, f"bitsandbytes {state.quant_type} block {state.blocksize}"
    return None


def _dequantized(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor, str]]:
    for name, module in model.named_modules():
        found = dequantized_weight(module)
        if found is not None:
            yield name, found[0], found[1]


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}
