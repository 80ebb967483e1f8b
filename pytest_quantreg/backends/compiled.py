"""Any torch-module precision under ``torch.compile``: ``NAME+compile``.

The model is compiled with dynamic shapes, in place (its module names stay FP32's, so
``--quantreg-keep-fp32``, the weight report and the fallback search see the same layers). Compilation
happens on the first forward pass of each new input shape: the measurement's warmup runs one
sample of every token count first (:func:`pytest_quantreg.measure.evaluation.warmup_indices`), so no timed
round ever includes it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from typing import Any

from pytest_quantreg.backends.base import COMPILE_SUFFIX, BuildContext, Precision
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.measure.loading import COMPILED

COMPILERS = ("g++", "c++", "clang++")


def compiled(precision: Precision) -> Precision:
    """``precision`` built, then compiled with ``torch.compile(dynamic=True)``; named ``NAME+compile``."""

    def build(ctx: BuildContext) -> Any:
        import torch

        model = precision.build(ctx)
        if not isinstance(model, torch.nn.Module):
            raise QuantregError(f"{precision.name} does not build a torch module, so it cannot run under torch.compile")
        if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
            _scalar_code()
        model.compile(dynamic=True)
        setattr(model, COMPILED, True)
        return model

    return dataclasses.replace(
        precision,
        name=precision.name + COMPILE_SUFFIX,
        build=build,
        description=f"{precision.description}, under torch.compile (compiled in the warmup)",
        unsupported=_needs_compiler(precision.unsupported),
        compilable=False,
    )


def _scalar_code() -> None:
    """Let inductor emit scalar C++ where torch's kernels run without SIMD (``ATEN_CPU_CAPABILITY=default``):
    it picks its vector code by the CPU's own features, and torch 2.13's headers then lack ``at::vec``
    (seen: ``'at::vec' has not been declared`` compiling the example's torchao int8 model on an AVX-512 CPU).
    A CPU without SIMD gets scalar code too, so the emulated run gives that CPU's verdict."""
    import torch._inductor.config

    torch._inductor.config.cpp.simdlen = 1


def _needs_compiler(inner: Callable[[str], str | None] | None) -> Callable[[str], str | None]:
    """torch.compile's CPU code generator (inductor) builds C++: a CPU run needs a C++ compiler."""

    def reason(device_type: str) -> str | None:
        found = inner(device_type) if inner is not None else None
        if found is not None or device_type != "cpu":
            return found
        if os.environ.get("CXX") or any(shutil.which(name) for name in COMPILERS):
            return None
        return (
            f"torch.compile on a CPU needs a C++ compiler ({', '.join(COMPILERS)} or $CXX), and none is on PATH; "
            "install one (e.g. `apt install g++`)"
        )

    return reason
