"""Target 9: what the fallback search costs, against one ordinary pass of the same precision.

One pytest run per model, int8-dynamic held to a flip gate it fails: the latency test times
int8-dynamic's ordinary pass (pytest-benchmark, one round per sample), then the accuracy test fails
and the search runs (``--quantreg-fallback=report``). The search's forward passes and seconds come
from its report; one ordinary pass is the timed pass of the same run (mean latency x samples), so the
ratio does not depend on how busy the machine was between runs.

Models: the example (387 samples, flip gate 5%) and a random-init IndoBERT-base-shaped classifier
(benchmarks/scale.py's shape: 12 blocks, so 49 units; 788 tweets; flip gate 8%). Its weights are
drawn with std 0.2, not BERT's 0.02: at 0.02 the untrained model predicts one class for every tweet
and int8 flips none, so there would be nothing to search; at 0.2 int8 flips 16 of the first 120.

    .venv/bin/python benchmarks/fallback_cost.py [--example-only]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from measure import PYTHON, run
from scale import SAMPLES, write_model, write_tweets


def search(name: str, options: list[str], folder: Path) -> None:
    """Run the suite with the search and print its cost against the ordinary timed pass."""
    report, bench = folder / f"{name}-fallback.json", folder / f"{name}-bench.json"
    command = [PYTHON, "-m", "pytest", "tests/test_quantization.py", "-p", "no:cacheprovider", "-q", "--precision=fp32,int8-dynamic"]
    command += [*options, "--quantreg-fallback=report", f"--quantreg-fallback-report={report}", f"--benchmark-json={bench}"]
    result = run(command)
    print(f"{name}: pytest exit {result.returncode} (1: int8-dynamic fails the gate it was held to), {result.wall_s:.1f} s wall")
    found = json.loads(report.read_text(encoding="utf-8"))["precisions"][0]
    stats = {b["extra_info"]["precision"]: b["stats"] for b in json.loads(bench.read_text(encoding="utf-8"))["benchmarks"]}
    timed = stats["int8-dynamic"]
    ordinary_s = timed["mean"] * timed["rounds"]
    cost = found["cost"]
    units = len(found["sensitivity"]["units"])
    print(f"  units ranked: {units}; set: {found['units']} (passes on both halves: {found['passes']}; stopped: {found['stopped']})")
    print(
        f"  cost: {cost['forward_passes']} forward passes = {cost['forward_passes'] / cost['ordinary_pass']:.1f} ordinary passes "
        f"of {cost['ordinary_pass']} samples; {cost['seconds']:.1f} s = {cost['seconds'] / ordinary_s:.1f} x one ordinary pass "
        f"({ordinary_s:.1f} s: {timed['rounds']} rounds x {timed['mean'] * 1000:.2f} ms, timed in the same run)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        search("example", ["--quantreg-max-flip-rate=int8-dynamic=5"], folder)
        if "--example-only" in sys.argv:
            return
        model, tweets = folder / "indobert-base-shape", folder / "tweets.csv"
        write_model(model, initializer_range=0.2)
        write_tweets(tweets)
        large = [f"--quantreg-model={model}", f"--quantreg-dataset={tweets}", f"--quantreg-samples={SAMPLES}"]
        large += [f"--quantreg-baseline-dir={tmp}/baselines", "--quantreg-update-baselines", "--quantreg-max-flip-rate=int8-dynamic=8"]
        large += ["--quantreg-fallback-max-seconds=1200"]
        search("indobert-base-shape", large, folder)


if __name__ == "__main__":
    main()
