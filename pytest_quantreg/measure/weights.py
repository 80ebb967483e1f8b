"""Per-layer weight quantization error: each quantized Linear layer dequantized and compared with FP32.

A torch module's layers are read by the backends' dequantizers (each backend module's
``BACKEND.dequantize``), plain Linear layers (float casts) by their dtype; a model that is not a torch
module reads its own (``dequantized_weights()``). Layers kept in FP32 (``--quantreg-keep-fp32``) are
listed as such. Errors are computed in float64.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pytest_quantreg.fileio import file_sha256

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.backends.base import Classifier, Dequantizer

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
    kept_fp32: tuple[str, ...] = ()

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
            "kept_fp32": list(self.kept_fp32),
            "layers": [_finite(asdict(layer)) for layer in self.layers],
            "by_kind": [_finite(asdict(summary)) for summary in self.by_kind()],
        }


def weights_sha256(folder: Path) -> str:
    """The digest of a model folder's weights: its safetensors file's sha256, or for a sharded folder the
    sha256 of its files' digests in name order (what a baseline's provenance records)."""
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()


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


def linear_weights(model: Any) -> dict[str, torch.Tensor]:
    """FP32 copies of the weights of every Linear-like layer, by module name."""
    return {name: weight.clone() for name, weight, _ in _dequantized(model)}


def weight_report(
    precision: str,
    reference: dict[str, torch.Tensor],
    model: Any,
    kept_fp32: tuple[str, ...] = (),
    dequantizers: Sequence[Dequantizer] = (),
) -> WeightReport:
    """Compare every Linear-like layer of ``model`` (read back by the backends' ``dequantizers``) with the
    FP32 weight of the same name; ``kept_fp32`` names the layers the precision kept in FP32 on purpose."""
    rows = []
    for name, weight, storage in _dequantized(model, dequantizers):
        fp32 = reference.get(name)
        if fp32 is None or fp32.shape != weight.shape:
            continue
        rel, snr, cosine, max_abs = error_metrics(fp32, weight)
        storage = f"{storage}, kept in FP32" if name in kept_fp32 else storage
        rows.append(LayerError(name, _INDEX.sub(".*", name), storage, tuple(weight.shape), rel, snr, cosine, max_abs))
    return WeightReport(precision, tuple(rows), kept_fp32)


def dequantized_weight(module: torch.nn.Module, dequantizers: Sequence[Dequantizer] = ()) -> tuple[torch.Tensor, str] | None:
    """The weight of a Linear-like ``module`` as float32 on the CPU and how it is stored (the first of the
    backends' ``dequantizers`` that reads it, else a plain ``nn.Linear``'s); None otherwise."""
    import torch

    for dequantize in dequantizers:
        found = dequantize(module)
        if found is not None:
            return found
    if isinstance(module, torch.nn.Linear):
        return module.weight.detach().float().cpu(), str(module.weight.dtype).removeprefix("torch.")
    return None


def _dequantized(model: Any, dequantizers: Sequence[Dequantizer] = ()) -> Iterator[tuple[str, torch.Tensor, str]]:
    import torch

    if not isinstance(model, torch.nn.Module):  # a Classifier reads its own (from the file it runs)
        yield from cast("Classifier", model).dequantized_weights()
        return
    for name, module in model.named_modules():
        found = dequantized_weight(module, dequantizers)
        if found is not None:
            yield name, found[0], found[1]


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}
