"""Missing or broken pieces, other timing set-ups, pytest-xdist and repeat runs: each gives a skip
with the reason, a real verdict or the same numbers; never a pass that tested nothing."""

from __future__ import annotations

import json
import re

import pytest
from custom_precisions import CUSTOM_PRECISIONS
from outcomes import assert_verdicts, until_judged
from projects import record_baseline

NO_QUANTIZED = (
    "quantreg: NO QUANTIZED MODEL WAS TESTED: every test of {names} was skipped (reasons above); this run says nothing about them"
)


def _record(pytester: pytest.Pytester) -> None:
    record_baseline(pytester)


@pytest.mark.parametrize(
    ("module", "precision"),
    [("bitsandbytes", "int8-bnb"), ("accelerate", "int4-nf4")],
)
def test_missing_library_skips_its_precisions_and_says_nothing_quantized_was_tested(
    quantreg_pytester: pytest.Pytester, module: str, precision: str
) -> None:
    quantreg_pytester.makeconftest(f"import sys\nsys.modules[{module!r}] = None  # as if it were not installed\n")
    _record(quantreg_pytester)
    result = quantreg_pytester.runpytest_subprocess(f"--precision=fp32,{precision}", "-rs")
    assert_verdicts(result, passed=2, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            NO_QUANTIZED.format(names=precision),
            f"SKIPPED * {precision} needs the '{module}' package, which is not installed (`pip install {module}`)",
        ]
    )


def test_broken_library_skips_with_the_import_error(quantreg_pytester: pytest.Pytester) -> None:
    broken = quantreg_pytester.mkdir("broken") / "bitsandbytes"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('CUDA Setup failed despite GPU being available')\n")
    quantreg_pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(broken.parent)!r})\n")
    _record(quantreg_pytester)
    result = quantreg_pytester.runpytest_subprocess("--precision=fp32,int8-bnb,int8-dynamic", "-rs")
    assert_verdicts(result, passed=4, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED * int8-bnb needs 'bitsandbytes', which is installed but fails to import "
            "(RuntimeError: CUDA Setup failed despite GPU being available); reinstall it*",
        ]
    )
    assert "NO QUANTIZED MODEL WAS TESTED" not in result.stdout.str()  # int8-dynamic was tested
    assert "Traceback" not in result.stdout.str()


def test_without_pytest_benchmark_latency_is_still_judged(quantreg_pytester: pytest.Pytester) -> None:
    quantreg_pytester.makeconftest(CUSTOM_PRECISIONS)
    args = ("-p", "no:benchmark", "--precision=fp32,slow", "-k", "latency", "--quantreg-max-latency-ratio=slow=1.5")
    result = until_judged(lambda: quantreg_pytester.runpytest(*args))
    result.assert_outcomes(passed=1, failed=1)  # timed by the plugin's own perf_counter loop, and the 5x slowdown caught
    result.stdout.fnmatch_lines(["*slow is too slow against FP32: latency ratio *", "  - the whole interval is above max 1.500*"])
    assert "benchmark:" not in result.stdout.str()  # pytest-benchmark really was off


def test_benchmark_skip_skips_latency_and_still_gates_accuracy(quantreg_pytester: pytest.Pytester) -> None:
    _record(quantreg_pytester)
    result = quantreg_pytester.runpytest("--precision=fp32,int8", "--benchmark-skip", "-rs")
    assert_verdicts(result, passed=2, skipped=2)
    result.stdout.fnmatch_lines(["accuracy (%) *", "SKIPPED * Benchmarks are skipped (--benchmark-skip was used)."])

    only_latency = quantreg_pytester.runpytest("--precision=fp32,int8", "--benchmark-skip", "-k", "latency")
    assert_verdicts(only_latency, skipped=2)
    only_latency.stdout.fnmatch_lines([NO_QUANTIZED.format(names="int8-dynamic")])


def _rows(output: str) -> list[str]:
    """The summary table's rows that must not depend on how the tests were distributed."""
    keep = ("model size", "accuracy (%)", "avg confidence", "drop vs FP32", "McNemar", "flip rate", "mean KL", "max |logit")
    return [re.sub(r" +", " ", line) for line in output.splitlines() if line.startswith(keep)]


def test_xdist_gives_the_serial_accuracy_and_skips_latency_with_the_reason(quantreg_pytester: pytest.Pytester) -> None:
    _record(quantreg_pytester)
    args = ("--precision=fp32,fp16,int8", "-p", "no:cacheprovider")
    serial = quantreg_pytester.runpytest_subprocess(*args)
    assert_verdicts(serial, passed=6)
    parallel = quantreg_pytester.runpytest_subprocess(*args, "-n", "2", "-rs")
    assert_verdicts(parallel, passed=3, skipped=3)
    parallel.stdout.fnmatch_lines(
        [
            "SKIPPED * latency gate for * not judged under pytest-xdist: pytest-benchmark does not time in workers "
            "and parallel workers share the CPU; run the latency tests without -n*",
        ]
    )
    rows = _rows(parallel.stdout.str())
    assert len(rows) == 8
    assert rows == _rows(serial.stdout.str())  # the workers' results reach the controller's table, unchanged


def test_two_runs_give_identical_predictions_and_sizes(quantreg_pytester: pytest.Pytester) -> None:
    _record(quantreg_pytester)
    runs = []
    for name in ("first", "second"):
        result = quantreg_pytester.runpytest_subprocess(
            "--precision=fp32,int8,int4-nf4",
            "--quantreg-update-baselines",
            f"--benchmark-json={name}.json",
            "--quantreg-max-drop=int4-nf4=100",  # the untrained tiny model loses 7 of 60 to NF4: not what this test is about
            "--quantreg-max-flip-rate=int4-nf4=100",
        )
        assert_verdicts(result, passed=6)
        runs.append((result, json.loads((quantreg_pytester.path / f"{name}.json").read_text())))
    for result, _ in runs:  # FP32's predictions, accuracy and size are identical to the recording run's
        result.stdout.fnmatch_lines(["quantreg: baseline unchanged: *"])
    keys = ("accuracy", "size_mb", "flip_rate", "kl_mean", "max_logit_change", "avg_confidence")

    def outcome(document: dict) -> dict[str, list[float]]:
        return {b["extra_info"]["precision"]: [b["extra_info"].get(k) for k in keys] for b in document["benchmarks"]}

    first, second = outcome(runs[0][1]), outcome(runs[1][1])
    assert sorted(first) == ["fp32", "int4-nf4", "int8-dynamic"]
    assert first == second
    assert first["int8-dynamic"][2] > 0  # the quantized predictions do differ from FP32's: the equality is not trivial
