"""torchao's ``quantize_`` (the successor of torch.ao's eager quantization): int8 dynamic activations with
int8 weights, int8 weight-only, and int4 weight-only where torchao has a kernel for the device.

Layers kept in FP32 (``--quantreg-keep-fp32``) are left out through ``quantize_``'s ``filter_fn``.
Without VNNI, int8 activations are quantized to a reduced range (``reduce_range``), as torchao
advises, so that the int8 products do not overflow: see :func:`pytest_quantreg.measure.hardware.int8_reduce_range`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_quantreg.backends.base import Backend, BuildContext, Builder, Noise, Precision
from pytest_quantreg.backends.compiled import compiled

if TYPE_CHECKING:
    import torch

EXTRA = "torchao"


def dequantize(module: torch.nn.Module) -> tuple[torch.Tensor, str] | None:
    """A Linear layer whose weight is a torchao quantized tensor (Int8Tensor, ...), in FP32, and that tensor's type."""
    import torch

    if not isinstance(module, torch.nn.Linear) or type(module.weight.data) is torch.Tensor or not hasattr(module.weight, "dequantize"):
        return None
    weight: Any = module.weight
    return weight.dequantize().float().cpu(), f"torchao {type(weight.data).__name__}"


BACKEND = Backend(
    "torchao",
    lambda layers: (
        f"keep = {sorted(layers)!r}; quantize_(model, config, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn not in keep)"
    ),
    dequantize,
    libraries=("torchao",),
    noise=Noise(loggers=("torchao",)),  # its CUDA-only extensions that do not load on a CPU (transformers imports it when installed)
)


def _quantized(config: Callable[[BuildContext], Any]) -> Builder:
    def build(ctx: BuildContext) -> torch.nn.Module:
        import torch
        from torchao.quantization import quantize_

        model = ctx.load()
        quantize_(model, config(ctx), filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and not ctx.keeps(fqn))
        return model

    return build


def _int8_dynamic(ctx: BuildContext) -> Any:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    from pytest_quantreg.measure.hardware import int8_reduce_range

    return Int8DynamicActivationInt8WeightConfig(reduce_range=int8_reduce_range(ctx.device))


def _int8_weight(ctx: BuildContext) -> Any:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _int4_weight(ctx: BuildContext) -> Any:
    from torchao.quantization import Int4WeightOnlyConfig

    return Int4WeightOnlyConfig(group_size=128)


def _int4_unsupported(device_type: str) -> str | None:
    if device_type == "cpu":
        return (
            "torchao 0.18's Int4WeightOnlyConfig has no CPU kernel (its packing formats are for CUDA and XPU); "
            "run it with --device=cuda, or use int4-nf4 (bitsandbytes) on a CPU"
        )
    if importlib.util.find_spec("mslk") is None:
        return "torchao's int4 weight-only kernel needs the 'mslk' package (`pip install mslk`)"
    return None


def precisions() -> list[Precision]:
    """torchao-int8-dynamic (and its +compile variant), torchao-int8-weight, torchao-int4-weight.

    On a CPU their latency limits are ceilings against a catastrophe, not speed contracts: eager
    torchao int8 runs 1.0 to 2.2x FP32, and compiled int8 0.49x with AVX-512 VNNI but 1.04 to 1.15x
    with torch's kernels capped at AVX2 or the default (benchmarks/RESULTS.md, section 8). A
    slowdown is caught by the ratio recorded for the hardware class (``max_latency_increase``).
    """
    # eager torchao's speed differs from one process to the next (the paired ratio of int8 dynamic ranged
    # 1.49-1.96 over five runs on one machine, int8 weight-only 1.06-1.38): its recorded-ratio gate allows 40%
    common: dict[str, Any] = {"requires": (EXTRA,), "extra": EXTRA, "backend": BACKEND.name, "compilable": True}
    common["max_latency_increase"] = 40.0
    int8_dynamic = Precision(
        "torchao-int8-dynamic",
        _quantized(_int8_dynamic),
        description="torchao Int8DynamicActivationInt8WeightConfig (per-row int8 weights, per-token int8 activations)",
        max_drop=3.0,
        max_latency_ratio={"cpu": 5.0, "cuda": 4.0},
        max_flip_rate=4.0,
        max_kl=0.02,
        **common,
    )
    return [
        int8_dynamic,
        dataclasses.replace(compiled(int8_dynamic), max_latency_ratio={"cpu": 4.0, "cuda": 2.0}, max_latency_increase=10.0),
        Precision(
            "torchao-int8-weight",
            _quantized(_int8_weight),
            description="torchao Int8WeightOnlyConfig (per-row int8 weights, float activations)",
            max_drop=2.0,
            max_latency_ratio={"cpu": 5.0, "cuda": 2.0},
            max_flip_rate=2.0,
            max_kl=0.01,
            **common,
        ),
        Precision(
            "torchao-int4-weight",
            _quantized(_int4_weight),
            description="torchao Int4WeightOnlyConfig (int4 weights in groups of 128)",
            max_drop=10.0,
            max_latency_ratio={"cuda": 4.0},
            max_flip_rate=10.0,
            max_kl=0.1,
            unsupported=_int4_unsupported,
            **common,
        ),
    ]
