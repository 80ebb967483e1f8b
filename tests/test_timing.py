"""Latency you can trust: runtimes timed next to each other, and a busy machine, on real models."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from projects import record_baseline

from pytest_quantreg.measure import timing
from pytest_quantreg.measure.data import draw_sample, load_file, parse_sample_spec
from pytest_quantreg.measure.evaluation import measure
from pytest_quantreg.measure.inputs import Inputs, tokenize
from pytest_quantreg.measure.loading import load_classifier, load_tokenizer

BUSY_SECONDS = 240  # the neighbours end by themselves at the latest after this


@contextmanager
def busy_neighbours(count: int | None = None) -> Iterator[None]:
    """``count`` (default: one per core) busy-loop processes beside this one, bounded in time, ended on exit."""
    import os

    code = f"import time\nend = time.monotonic() + {BUSY_SECONDS}\nwhile time.monotonic() < end:\n    pass\n"
    loops = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count or os.cpu_count() or 2)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@pytest.fixture(scope="module")
def tiny_inputs(tiny_model_dir: Path, tiny_dataset: Path) -> Inputs:
    sample = draw_sample(load_file(tiny_dataset, ("negative", "positive")), parse_sample_spec("all"), 0)
    return tokenize(load_tokenizer(tiny_model_dir), sample, 64)


def test_a_thread_kept_from_the_cpu_is_seen_waiting() -> None:
    def spin() -> None:
        import time

        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass

    quiet = timing.timed(spin)
    if quiet.waited is None:
        pytest.skip("this operating system does not report the time a thread waits for a CPU")
    with busy_neighbours():
        busy = timing.timed(spin)
    assert busy.waited is not None
    assert busy.disturbed
    assert busy.waited > 0.02  # of 0.2 s spent spinning, with every core also taken by a busy loop
    assert busy.waited > quiet.waited


def test_repetitions_make_each_timing_last_long_enough() -> None:
    assert timing.repetitions(0.010) == 1
    assert timing.repetitions(0.001) == 5
    assert timing.repetitions(0.0) == timing.MAX_REPETITIONS


def test_onnx_runtime_next_to_fp32_leaves_fp32_its_own_speed(tiny_model_dir: Path, tiny_inputs: Inputs) -> None:
    """ONNX Runtime's pool, if left spinning, took the CPU from FP32's partner forwards (1 ms became 50)."""
    pytest.importorskip("onnxruntime")
    from pytest_quantreg.backends.base import BuildContext
    from pytest_quantreg.backends.registry import builtin_registry

    fp32 = load_classifier(tiny_model_dir)
    onnx = builtin_registry()["onnx-fp32"].build(BuildContext(tiny_model_dir, "cpu"))
    seen = []
    for _ in range(2):  # the same forwards, measured again once: see below
        alone = measure(fp32, tiny_inputs, precision="fp32", size_mb=0.0, warmup=5, timed=True)
        paired = measure(onnx, tiny_inputs, precision="onnx-fp32", size_mb=0.0, warmup=5, timed=True, partner=fp32, pairs=len(tiny_inputs))
        assert alone.latency is not None
        if (alone.rounds_disturbed or 0) > 1 - timing.MIN_CLEAN_SHARE:
            pytest.skip("the machine was busy while FP32 was timed alone: no reference to compare with")
        assert paired.paired_s is not None
        partner_ms = statistics.median(fp32_s for _, fp32_s in paired.paired_s) * 1000
        seen.append(f"partner {partner_ms:.3f} ms, alone {alone.latency.median_ms:.3f} ms")
        # What a spinning pool does is slow the partner down by an order of magnitude. Forwards of 2 ms on this
        # shared machine moved by more than the 15% this test once allowed, both ways and at the previous commit
        # too (partner 2.1 against 2.8 ms alone, 2.8 against 1.6; once 7.1 against 2.3): the fine check is
        # benchmarks/isolation.py's, and one measurement of the two may be off.
        if partner_ms <= alone.latency.median_ms * 2:
            return
    pytest.fail(f"FP32's partner forwards next to ONNX Runtime ran more than twice FP32's own time, twice: {'; '.join(seen)}")


def test_a_busy_machine_skips_the_latency_gate_with_the_figures(quantreg_pytester: pytest.Pytester) -> None:
    """Every core taken by a busy loop: the latency tests say the machine was busy, none passes or fails."""
    record_baseline(quantreg_pytester)
    with busy_neighbours(2 * (__import__("os").cpu_count() or 2)):
        result = quantreg_pytester.runpytest(
            "--precision=fp32,int8", "-k", "latency", "-rs", "--quantreg-max-latency-ratio=int8=0.0001", "--quantreg-report=report"
        )
    result.assert_outcomes(skipped=2)  # the busy logic itself: the skips are the verdict
    result.stdout.fnmatch_lines(
        [
            "*latency gate for fp32 not judged: the machine was busy: *% of FP32's timed forwards waited for a CPU*",
            "*latency gate for int8-dynamic not judged: the machine was busy: only * of * pairs with FP32 were timed without "
            "waiting for a CPU*",
        ]
    )
    result.stdout.fnmatch_lines(["*latency ratio, paired*busy machine*"])
    assert "no latency ratio recorded" not in result.stdout.str()  # nothing judged them: no note says their limits did
    report = (quantreg_pytester.path / "report" / "report.md").read_text(encoding="utf-8")
    assert "The machine was busy while fp32, int8-dynamic were timed" in report
    assert "tradeoff.png is not drawn" in report
    assert not (quantreg_pytester.path / "report" / "tradeoff.png").exists()  # no ratio was judged: none is plotted


def test_short_forwards_are_timed_several_at_a_time_and_the_run_says_so(quantreg_pytester: pytest.Pytester) -> None:
    """The tiny model's forward takes about a millisecond: each side of a pair is timed several at a time."""
    import json

    result = quantreg_pytester.runpytest("--precision=fp32,int8", "-k", "latency", "--benchmark-json=out.json")
    assert result.ret == 0  # passed, or skipped when the machine was busy: never failed
    result.stdout.fnmatch_lines(["quantreg: int8-dynamic's forwards (or FP32's) take under 5 ms, too short to time one at a time: *"])
    data = json.loads((quantreg_pytester.path / "out.json").read_text())
    info = next(b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["precision"] == "int8-dynamic")
    assert info["latency_repetitions"] > 1
    assert info["latency_pairs_wanted"] == 50
