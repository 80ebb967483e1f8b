"""Per-layer weight quantization error: each quantized Linear layer dequantized and compared with FP32.

Supported storages: float casts (fp16, bf16, fp32), torch dynamic int8 packed weights, torchao's
quantized tensors, ONNX Runtime's int8 initializers with their scales, and bitsandbytes LLM.int8
and 4-bit (NF4 / FP4) parameters, including the layout bitsandbytes repacks
4-bit weights into on CPUs with AVX-512 BF16 at their first forward pass. Layers kept in FP32
(``--quantreg-keep-fp32``) are listed as such. Errors are computed in float64.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_quantreg.fileio import file_sha256

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


def weight_report(precision: str, reference: dict[str, torch.Tensor], model: Any, kept_fp32: tuple[str, ...] = ()) -> WeightReport:
    """Compare every Linear-like layer of ``model`` with the FP32 weight of the same name; ``kept_fp32``
    names the layers the precision kept in FP32 on purpose."""
    rows = []
    for name, weight, storage in _dequantized(model):
        fp32 = reference.get(name)
        if fp32 is None or fp32.shape != weight.shape:
            continue
        rel, snr, cosine, max_abs = error_metrics(fp32, weight)
        storage = f"{storage}, kept in FP32" if name in kept_fp32 else storage
        rows.append(LayerError(name, _INDEX.sub(".*", name), storage, tuple(weight.shape), rel, snr, cosine, max_abs))
    return WeightReport(precision, tuple(rows), kept_fp32)


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
    if isinstance(module, torch.nn.Linear) and type(module.weight.data) is not torch.Tensor and hasattr(module.weight, "dequantize"):
        weight: Any = module.weight  # a torchao quantized tensor (Int8Tensor, ...)
        return weight.dequantize().float().cpu(), f"torchao {type(weight.data).__name__}"
    if isinstance(module, torch.nn.Linear):
        return module.weight.detach().float().cpu(), str(module.weight.dtype).removeprefix("torch.")
    return None


def _bitsandbytes_layer(module: torch.nn.Module) -> tuple[torch.Tensor, str] | None:
    if "bitsandbytes" not in sys.modules:  # a model with bitsandbytes layers has imported it
        return None
    import bitsandbytes as bnb

    weight: Any = getattr(module, "weight", None)
    if isinstance(module, bnb.nn.Linear8bitLt):
        state = getattr(module, "state", None)  # the first forward pass moves the row scales there
        scales = getattr(weight, "SCB", None)
        scales = scales if scales is not None else getattr(state, "SCB", None)
        if scales is not None:
            codes = weight.CB if getattr(weight, "CB", None) is not None else weight.data
            return bnb.functional.int8_vectorwise_dequant(codes, scales).float().cpu(), "bitsandbytes int8 row-wise"
    if isinstance(module, bnb.nn.Linear4bit) and getattr(weight, "quant_state", None) is not None:
        state = weight.quant_state
        storage = f"bitsandbytes {state.quant_type} block {state.blocksize}"
        if getattr(state, "packing_format_for_cpu", False):
            return _unpack_cpu_4bit(weight.data, state).cpu(), storage + " (CPU-packed, bf16 scales)"
        return bnb.functional.dequantize_4bit(weight.data, state).float().cpu(), storage
    return None


def _unpack_cpu_4bit(packed: torch.Tensor, state: Any, block_n: int = 32) -> torch.Tensor:
    """Dequantize the layout bitsandbytes repacks 4-bit weights into on AVX-512 BF16 CPUs.

    ``packed`` is ``[N, K/2]`` bytes: per group of ``block_n`` rows, column pairs interleaved, low
    nibbles for the group's first 32 values of a byte pair run and high nibbles for the next 32;
    ``state.absmax`` is ``[K / blocksize, N]`` in bfloat16 (transposed, one scale per row block).
    """
    import torch

    rows, half = packed.shape
    nibbles = packed.reshape(-1, 32)
    codes = torch.cat([nibbles & 0xF, nibbles >> 4], dim=-1)  # each run of 64: 32 low nibbles, then 32 high
    codes = codes.reshape(rows // block_n, half, block_n, 2).transpose(1, 2).reshape(rows, half * 2)
    values = state.code.float().cpu()[codes.long()]
    scales = state.absmax.float().T.repeat_interleave(state.blocksize, dim=1)  # [N, K]
    return values * scales


def _dequantized(model: Any) -> Iterator[tuple[str, torch.Tensor, str]]:
    import torch

    if not isinstance(model, torch.nn.Module):  # a precision that is not a torch module reads its own (ONNX initializers)
        yield from getattr(model, "dequantized_weights", lambda: iter(()))()
        return
    for name, module in model.named_modules():
        found = dequantized_weight(module)
        if found is not None:
            yield name, found[0], found[1]


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}
