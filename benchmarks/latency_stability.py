"""Target 5: stable latency verdicts on any CPU. On a copy of the baselines, the example's latency
tests first record int8-dynamic's paired ratio for this machine's hardware class
(``--quantreg-record-latency``), as a team adding a CI runner would. Then ten runs with the
unchanged int8-dynamic and ten with a slowed one (changed_precision.py: the same name, about 1.25x
the work), alternating, each a fresh pytest process with the default pairing. It prints each
run's verdict, ratio and which gate failed, how often each failed, the CI widths, and the verdicts
the same runs give with fewer pairs (subsampled).

    QUANTREG_BENCH_RUNS=10 .venv/bin/python benchmarks/latency_stability.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from measure import PYTHON, ROOT, run

from pytest_quantreg.backends.registry import builtin_registry
from pytest_quantreg.judge.stats import LatencyRatio, latency_ratio
from pytest_quantreg.measure.evaluation import spread

NAME = "int8-dynamic"
TEST = f"tests/test_quantization.py::test_latency[{NAME}]"
PRECISION = builtin_registry()[NAME]
LIMIT = PRECISION.default_limit("max_latency_ratio", "cpu")
INCREASE = PRECISION.default_limit("max_latency_increase", "cpu")
SUITE = [PYTHON, "-m", "pytest", "tests/test_quantization.py", "-k", "latency", f"--precision=fp32,{NAME}"]
SUITE += ["-p", "changed_precision", "-p", "no:cacheprovider", "-q"]


def one_run(folder: Path, name: str, slow: bool, *options: str) -> dict:
    out = folder / f"{name}.json"
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]),
        "QUANTREG_BENCH_OUT": str(out),
        "QUANTREG_CHANGE": "slow" if slow else "",
    }
    result = run([*SUITE, f"--quantreg-baseline-dir={folder / 'baselines'}", *options], env=env)
    data = json.loads(out.read_text())
    data["wall_s"] = result.wall_s
    data["outcome"] = data["outcomes"].get(TEST, {"outcome": "not run", "message": ""})
    return data


def gates(data: dict) -> str:
    """Which latency gates a run failed: fixed, recorded, both or none."""
    message = data["outcome"]["message"]
    failed = [gate for gate, text in (("fixed", "is above max"), ("recorded", "recorded for this hardware class")) if text in message]
    return "+".join(failed) or "-"


def ratio(pairs: list[list[float]], n: int | None = None) -> LatencyRatio:
    chosen = pairs if n is None else [pairs[i] for i in spread(len(pairs), n)]
    result = latency_ratio([(mine, fp32) for mine, fp32 in chosen])
    assert result is not None
    return result


def main() -> None:
    runs = int(os.environ.get("QUANTREG_BENCH_RUNS", "10"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "baselines", folder / "baselines")
        recorded = ratio(one_run(folder, "record", False, "--quantreg-record-latency")["pairs"][NAME])
        ceiling = recorded.ratio * (1 + INCREASE / 100)
        print(f"recorded {NAME} on this hardware: {_cell(recorded)}; gates: fixed max {LIMIT}, recorded + {INCREASE:g}% = {ceiling:.3f}")
        results: dict[bool, list[dict]] = {False: [], True: []}
        for index in range(runs):
            for slow in (False, True):
                data = one_run(folder, f"run{index}-{slow}", slow)
                results[slow].append(data)
                r = ratio(data["pairs"][NAME])
                kind = "slowed   " if slow else "unchanged"
                verdict = data["outcome"]["outcome"]
                print(f"run {index + 1:2d} {kind} ({data['wall_s']:.0f} s): {verdict} {_cell(r)} gates failed: {gates(data)}", flush=True)
        print(f"hardware class: {results[False][0]['hardware_class']}")
    for slow, label in ((False, "unchanged"), (True, "slowed")):
        failed = sum(d["outcome"]["outcome"] == "failed" for d in results[slow])
        ratios = [ratio(d["pairs"][NAME]) for d in results[slow]]
        print(
            f"{label}: {failed}/{runs} latency-gate failures; ratios {min(r.ratio for r in ratios):.3f}-"
            f"{max(r.ratio for r in ratios):.3f}; "
            f"CI width median {statistics.median(_width(r) for r in ratios):.3f}"
        )
    unchanged = statistics.median(ratio(d["pairs"][NAME]).ratio for d in results[False])
    slowed = statistics.median(ratio(d["pairs"][NAME]).ratio for d in results[True])
    print(f"slowdown (median ratios): {slowed / unchanged:.3f}x")
    print("pairs | runs whose CI lies above the recorded ratio + tolerance (unchanged / slowed) | above the fixed limit")
    for n in (12, 25, 50):
        above = [[ratio(d["pairs"][NAME], n).ci95[0] for d in results[slow]] for slow in (False, True)]
        recorded_cells = " / ".join(f"{sum(low > ceiling for low in lows)}/{runs}" for lows in above)
        fixed_cells = " / ".join(f"{sum(low > LIMIT for low in lows)}/{runs}" for lows in above)
        print(f"{n:5d} | {recorded_cells} | {fixed_cells}")


def _cell(r: LatencyRatio) -> str:
    return f"{r.ratio:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]"


def _width(r: LatencyRatio) -> float:
    return r.ci95[1] - r.ci95[0]


if __name__ == "__main__":
    main()
