"""FP32 itself and the float casts: the whole model in FP16 or BF16."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_quantreg.backends.base import BuildContext, Precision

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


def bf16_blocked(capability: str, amx: bool) -> bool:
    """Whether torch 2.13's bf16 matmul fails here: on a CPU with AMX whose torch kernels are capped
    below AVX-512 it raises 'pack_vnni2 is only supported when avx512 is supported'."""
    return amx and capability.lower() in ("default", "avx2")


@functools.cache
def _cpu_has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _bf16_unsupported(device_type: str) -> str | None:
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "")
    if device_type == "cpu" and bf16_blocked(capability, _cpu_has_amx()):
        return (
            f"torch's bf16 matmul fails on this CPU with AMX when its kernels are capped below AVX-512 "
            f"(ATEN_CPU_CAPABILITY={capability}: 'pack_vnni2 is only supported when avx512 is supported'); "
            "run without the cap, or leave bf16 out"
        )
    return None


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
            quantizes_linear=False,
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
            quantizes_linear=False,
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
            quantizes_linear=False,
            unsupported=_bf16_unsupported,
        ),
    ]
