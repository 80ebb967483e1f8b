"""FP32 itself and the float casts: the whole model in FP16 or BF16."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_quantreg.precisions import BuildContext, Precision

if TYPE_CHECKING:
    import torch


def _fp32(ctx: BuildContext) -> torch.nn.Module:
    return ctx.load()


def _fp16(ctx: BuildContext) -> torch.nn.Module:
    import torch

    return ctx.load(dtype=torch.float16)


def _bf16(ctx: BuildContext) -> torch.nn.Module:
    import torch

    return ctx.load(dtype=torch.bfloat16)


def precisions() -> list[Precision]:
    """fp32, fp16 and bf16. On a CPU fp16 ran 2.2x FP32 natively and 14.6-17.4x under
    ATEN_CPU_CAPABILITY=default, so the CPU latency limits are ceilings against a catastrophe."""
    return [
        Precision(
            "fp32",
            _fp32,
            description="the FP32 original, checked against its stored baseline",
            max_drop=0.5,
            max_latency_ratio={},
            max_flip_rate=1.0,
            max_kl=0.001,
            compilable=True,
        ),
        Precision(
            "fp16",
            _fp16,
            description="half precision weights and activations",
            max_drop=1.0,
            max_latency_ratio={"cpu": 40.0, "cuda": 1.2},
            max_flip_rate=2.0,
            max_kl=0.005,
            compilable=True,
        ),
        Precision(
            "bf16",
            _bf16,
            description="bfloat16 weights and activations",
            max_drop=3.0,
            max_latency_ratio={"cpu": 40.0, "cuda": 1.2},
            max_flip_rate=3.0,
            max_kl=0.01,
            compilable=True,
        ),
    ]
