"""The built-in precisions, one module per quantization backend.

Each module's ``precisions()`` lists what it offers: :mod:`.casts` (FP32, FP16, BF16),
:mod:`.torch_ao` (``quantize_dynamic``), :mod:`.bnb` (bitsandbytes), :mod:`.torchao` and
:mod:`.ort` (ONNX Runtime; optional extras). Adding a backend is one module here and one line below.
"""

from __future__ import annotations

from pytest_quantreg.backends import bnb, casts, ort, torch_ao, torchao
from pytest_quantreg.precisions import Registry


def builtin_registry() -> Registry:
    """The built-in precisions with their documented default gates, in the order ``all`` runs them.

    The gates of the seed's precisions were set from the example measured under
    ATEN_CPU_CAPABILITY=default, avx2 and AVX512 on one machine (benchmarks/capabilities.py;
    benchmarks/RESULTS.md, section 8): every default passes all three with headroom, and a broken
    int8 fails on all three. Latency ratios are medians of per-sample ratios to FP32 timed back to
    back in the same run; a slowdown of any precision is caught by ``max_latency_increase`` against
    the ratio recorded for the same hardware class.
    """
    return Registry([*casts.precisions(), *torch_ao.precisions(), *bnb.precisions(), *torchao.precisions(), *ort.precisions()])
