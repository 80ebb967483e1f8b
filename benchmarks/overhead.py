"""Target 1: the plugin's per-sample latency against a bare ``torch.inference_mode()`` loop.

Runs inside one pytest session on the embedded example (cached), for fp32, int8-dynamic and the
torchao and ONNX Runtime precisions (``QUANTREG_BENCH_PRECISIONS`` to choose others). Each round
times the same model over the same pre-tokenized inputs twice, in alternating order: a bare loop
(``perf_counter`` around ``model(**encoding)``) and the plugin's timed pass (pytest-benchmark
``pedantic``, one round per sample, as ``quantreg.check_latency`` runs it). It prints the ratio
of the two medians per round and the median ratio.

    QUANTREG_BENCH_ROUNDS=6 .venv/bin/python benchmarks/overhead.py

A compiled precision (``+compile``) compiles in the plugin's pass of round 0, which runs first: its
warmup covers every token count, so both loops time compiled code from then on.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import pytest

RATIOS: dict[str, list[float]] = {}
PRECISIONS = "fp32,int8-dynamic,torchao-int8-dynamic,torchao-int8-dynamic+compile,torchao-int8-weight,onnx-fp32,onnx-int8-dynamic"


def _bare(model, inputs) -> float:
    """Median seconds per sample of a bare inference loop (5 warmup passes, like the plugin's default)."""
    import torch

    latencies = []
    with torch.inference_mode():
        for encoding in inputs.encodings[:5]:
            model(**encoding)
        for encoding in inputs.encodings:
            start = time.perf_counter()
            model(**encoding)
            latencies.append(time.perf_counter() - start)
    return statistics.median(latencies)


@pytest.mark.parametrize("round_", range(int(os.environ.get("QUANTREG_BENCH_ROUNDS", "6"))))
def test_overhead(quantreg_run, quantreg_precision, quantreg_model, benchmark, round_) -> None:
    from pytest_quantreg.measure.evaluation import measure

    inputs = quantreg_run.subject.inputs

    def plugin() -> float:
        result = measure(quantreg_model, inputs, precision=quantreg_precision, size_mb=0.0, warmup=5, benchmark=benchmark)
        return statistics.median(result.latencies_s)

    if round_ % 2:
        bare, harness = _bare(quantreg_model, inputs), plugin()
    else:
        harness, bare = plugin(), _bare(quantreg_model, inputs)
    RATIOS.setdefault(quantreg_precision, []).append(harness / bare)
    print(f"\n{quantreg_precision} round {round_}: plugin {harness * 1e3:.3f} ms, bare {bare * 1e3:.3f} ms, ratio {harness / bare:.4f}")


def main() -> int:
    precisions = os.environ.get("QUANTREG_BENCH_PRECISIONS", PRECISIONS)
    code = pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider", f"--precision={precisions}", "--device=cpu"])
    ratios_by_precision = sys.modules[Path(__file__).stem].RATIOS  # the copy pytest imported and ran
    for precision, ratios in ratios_by_precision.items():
        print(
            f"overhead {precision}: median plugin/bare ratio {statistics.median(ratios):.4f} over {len(ratios)} rounds "
            f"(min {min(ratios):.4f}, max {max(ratios):.4f})"
        )
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
