"""bitsandbytes through transformers' ``BitsAndBytesConfig``: LLM.int8 and 4-bit NF4 / FP4 weights."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from pytest_quantreg.backends.base import Backend, BuildContext, Builder, KnownFailure, Noise, Precision

if TYPE_CHECKING:
    import torch

REQUIRES = ("bitsandbytes", "accelerate")


def dequantize(module: torch.nn.Module) -> tuple[torch.Tensor, str] | None:
    """An LLM.int8 or 4-bit layer's weight in FP32 (the CPU-packed 4-bit layout included), and its storage."""
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


BACKEND = Backend(
    "bitsandbytes",
    lambda layers: f"BitsAndBytesConfig(..., llm_int8_skip_modules={sorted(layers)!r})",
    dequantize,
    libraries=REQUIRES,
    known_failures=(
        KnownFailure(
            "bitsandbytes",
            "N must be divisible by block_n",
            "bitsandbytes' 4-bit path for CPUs with AVX-512 BF16 needs layers with a multiple of 32 output rows; "
            "keep the smaller ones in FP32 with --quantreg-keep-fp32 (the default, head, keeps the output head)",
        ),
        KnownFailure(
            "bitsandbytes",
            "is invalid for input of size",
            "bitsandbytes' 4-bit path for CPUs with AVX-512 BF16 needs layers with at least 64 (the block size) inputs; "
            "keep the smaller ones in FP32 with --quantreg-keep-fp32",
        ),
    ),
    noise=Noise(
        warnings=((r"MatMul8bitLt: inputs will be cast", UserWarning),),  # on every int8 call
        # LLM.int8 on every forward with FP32 activations: 14,504 lines in one failing test's report
        log_records=(("bitsandbytes.autograd._functions", r"MatMul8bitLt: inputs will be cast"),),
    ),
)


def _bnb(**config: Any) -> Builder:
    def build(ctx: BuildContext) -> torch.nn.Module:
        import torch
        from transformers import BitsAndBytesConfig

        options = dict(config)
        if options.get("load_in_4bit"):
            options["bnb_4bit_compute_dtype"] = torch.float16 if ctx.device.startswith("cuda") else torch.float32
        options["llm_int8_skip_modules"] = list(ctx.keep_fp32)  # [] quantizes all: None would add transformers' own picks
        device_map: dict[str, Any] = {"": torch.device(ctx.device)}
        model: torch.nn.Module = ctx.load(quantization_config=BitsAndBytesConfig(**options), device_map=device_map)
        return model

    return build


# Their CPU paths' speed in a whole-suite process moves between runs of the same machine more than 10%:
# int4-nf4 1.35 and 1.59 times FP32, int8-bnb 2.73 and 4.43 (same hardware class, quiet machine), as eager torchao's does
LATENCY_INCREASE = 40.0


def precisions() -> list[Precision]:
    """int8-bnb, int4-nf4 and int4-fp4. On a CPU their latency limits are ceilings against a catastrophe."""
    return [
        Precision(
            "int8-bnb",
            _bnb(load_in_8bit=True),
            requires=REQUIRES,
            max_drop=3.0,
            description="bitsandbytes LLM.int8 (BitsAndBytesConfig(load_in_8bit=True))",
            max_latency_ratio={"cpu": 8.0, "cuda": 4.0},
            max_flip_rate=3.0,
            max_kl=0.01,
            backend=BACKEND.name,
            max_latency_increase=LATENCY_INCREASE,
        ),
        *(
            Precision(
                f"int4-{kind}",
                _bnb(load_in_4bit=True, bnb_4bit_quant_type=kind),
                requires=REQUIRES,
                max_drop=10.0,
                description=f"bitsandbytes 4-bit {what} weights",
                max_latency_ratio={"cpu": 4.0, "cuda": 4.0},
                max_flip_rate=10.0,
                max_kl=0.1,
                backend=BACKEND.name,
                max_latency_increase=LATENCY_INCREASE,
                # its CPU kernels for AVX-512 BF16 crash on layers with fewer than 64 inputs (ELECTRA's and ALBERT's
                # embedding projections, any hidden-32 model); kept in FP32 on every CPU, the verdict stays portable
                min_linear_inputs=64,
            )
            for kind, what in (("nf4", "NormalFloat"), ("fp4", "float"))
        ),
    ]
