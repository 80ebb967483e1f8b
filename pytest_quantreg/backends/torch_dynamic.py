"""torch.ao's eager dynamic quantization (``quantize_dynamic``, qint8 weights): deprecated in torch 2.13
in favour of torchao (:mod:`.torchao`), and still the fastest int8 path of eager PyTorch on a CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_quantreg.backends.base import Backend, BuildContext, Noise, Precision

if TYPE_CHECKING:
    import torch


def dequantize(module: torch.nn.Module) -> tuple[torch.Tensor, str] | None:
    """A dynamically quantized Linear layer's packed weight in FP32, and its scheme."""
    import torch

    if not isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
        return None
    packed = module.weight()
    scheme = "per-channel" if packed.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) else "per-tensor"
    return packed.dequantize().float().cpu(), f"torch {str(packed.dtype).removeprefix('torch.')} {scheme}"


BACKEND = Backend(
    "torch.ao quantize_dynamic",
    lambda layers: (
        f"keep = {sorted(layers)!r}; quantize_dynamic(model, {{n for n, m in model.named_modules() "
        "if isinstance(m, torch.nn.Linear) and n not in keep}, dtype=torch.qint8)"
    ),
    dequantize,
    noise=Noise(
        warnings=(
            (r".*quantize_dynamic.*deprecated", DeprecationWarning),  # quantize_dynamic -> torchao
            (r".*torch\.ao\.quantization.*deprecated", DeprecationWarning),
            (r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),  # its quantized modules
            (r"torch\.quantize_per_tensor, torch\.quantize_per_channel", UserWarning),
        )
    ),
)


def _int8_dynamic(ctx: BuildContext) -> torch.nn.Module:
    import torch

    model = ctx.load()
    linear = {name for name, module in model.named_modules() if type(module) is torch.nn.Linear and not ctx.keeps(name)}
    return torch.ao.quantization.quantize_dynamic(model, linear, dtype=torch.qint8)


def precisions() -> list[Precision]:
    """int8-dynamic. Its defaults passed the example under all three CPU capabilities with headroom (flips
    15% against 10.59%, drop 6.0 against 4.13 points); its 0.9 latency limit is a speed contract (0.43
    with VNNI, 0.8 with AVX2 only)."""
    return [
        Precision(
            "int8-dynamic",
            _int8_dynamic,
            devices=frozenset({"cpu"}),
            max_drop=6.0,
            description="torch quantize_dynamic (qint8) on the Linear layers",
            max_latency_ratio={"cpu": 0.9},
            max_flip_rate=15.0,
            max_kl=0.1,
            backend=BACKEND.name,
            batch_dependent=True,  # one activation scale per input tensor: the whole batch
        )
    ]
