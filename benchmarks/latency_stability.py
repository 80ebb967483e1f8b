"""Target 5: stable latency verdicts. Ten runs of the example's latency tests, each with the
unchanged int8-dynamic and with ``int8-dynamic-slow`` (slow_precision.py: int8-dynamic doing
about 1.3x the work, judged with int8-dynamic's limit). Each run is a fresh pytest process with
the plugin's default pairing; the script prints every run's verdicts and ratios, how often each
gate failed, the width of the ratio's 95% CI, and the width and verdicts with fewer pairs (the
same runs' pairs, subsampled), plus one run that pairs every sample.

    QUANTREG_BENCH_RUNS=10 .venv/bin/python benchmarks/latency_stability.py
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

from measure import PYTHON, ROOT, run

from pytest_quantreg.evaluation import spread
from pytest_quantreg.precisions import builtin_registry
from pytest_quantreg.stats import LatencyRatio, latency_ratio

UNCHANGED, SLOW = "int8-dynamic", "int8-dynamic-slow"
LIMIT = builtin_registry()[UNCHANGED].default_limit("max_latency_ratio", "cpu")
SUITE = [PYTHON, "-m", "pytest", "tests/test_quantization.py", "-k", "latency", f"--precision=fp32,{UNCHANGED},{SLOW}"]
SUITE += ["-p", "slow_precision", "-p", "no:cacheprovider", "-q"]


def one_run(folder: Path, index: int, *options: str) -> dict:
    out = folder / f"run{index}.json"
    result = run([*SUITE, *options], env={"PYTHONPATH": str(ROOT / "benchmarks"), "QUANTREG_BENCH_OUT": str(out)})
    data = json.loads(out.read_text())
    data["wall_s"] = result.wall_s
    return data


def verdict(data: dict, name: str) -> str:
    return data["outcomes"].get(f"tests/test_quantization.py::test_latency[{name}]", "not run")


def ratio(pairs: list[list[float]], n: int | None = None) -> LatencyRatio:
    chosen = pairs if n is None else [pairs[i] for i in spread(len(pairs), n)]
    result = latency_ratio([(mine, fp32) for mine, fp32 in chosen])
    assert result is not None
    return result


def main() -> None:
    runs = int(os.environ.get("QUANTREG_BENCH_RUNS", "10"))
    print(f"limit for both: {LIMIT} (int8-dynamic's default on CPU); a gate fails when the whole 95% CI is above it")
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for index in range(runs):
            data = one_run(Path(tmp), index)
            results.append(data)
            unchanged, slow = ratio(data["pairs"][UNCHANGED]), ratio(data["pairs"][SLOW])
            print(
                f"run {index + 1:2d} ({data['wall_s']:.0f} s): {UNCHANGED} {verdict(data, UNCHANGED)} {_cell(unchanged)}; "
                f"{SLOW} {verdict(data, SLOW)} {_cell(slow)}; slowdown {slow.ratio / unchanged.ratio:.3f}x",
                flush=True,
            )
        full = one_run(Path(tmp), runs, "--quantreg-latency-pairs=100000")
    for name in (UNCHANGED, SLOW):
        failed = sum(verdict(data, name) == "failed" for data in results)
        widths = [_width(ratio(data["pairs"][name])) for data in results]
        print(
            f"{name}: {failed}/{runs} latency-gate failures; {len(results[0]['pairs'][name])} pairs, CI width median "
            f"{statistics.median(widths):.3f} (max {max(widths):.3f})"
        )
    slowdowns = [ratio(d["pairs"][SLOW]).ratio / ratio(d["pairs"][UNCHANGED]).ratio for d in results]
    spread_text = f"min {min(slowdowns):.3f}, max {max(slowdowns):.3f}"
    print(f"slowdown of {SLOW} over {UNCHANGED}: median {statistics.median(slowdowns):.3f}x ({spread_text})")
    print("pairs | CI width median (unchanged / slow) | runs whose CI lies above the limit (unchanged / slow)")
    for n in (6, 12, 25, 50, 100):
        cells = []
        for name in (UNCHANGED, SLOW):
            ratios = [ratio(d["pairs"][name], n) for d in results]
            cells.append((statistics.median(_width(r) for r in ratios), sum(r.ci95[0] > LIMIT for r in ratios)))
        print(f"{n:5d} | {cells[0][0]:.3f} / {cells[1][0]:.3f} | {cells[0][1]}/{runs} / {cells[1][1]}/{runs}")
    unchanged, slow = ratio(full["pairs"][UNCHANGED]), ratio(full["pairs"][SLOW])
    print(
        f"every sample paired ({unchanged.n}), one run: {UNCHANGED} {verdict(full, UNCHANGED)} {_cell(unchanged)}; "
        f"{SLOW} {verdict(full, SLOW)} {_cell(slow)}"
    )


def _cell(r: LatencyRatio) -> str:
    return f"{r.ratio:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]"


def _width(r: LatencyRatio) -> float:
    return r.ci95[1] - r.ci95[0]


if __name__ == "__main__":
    main()
