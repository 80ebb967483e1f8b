"""A busy runner gives no false verdict: the example's latency tests next to busy-loop processes.

Each run starts one busy-loop process per core (``python3 -c 'while True: pass'``, bounded in time
and ended by its process id), then runs the example's latency tests in a fresh pytest process:
unchanged runs at ``QUANTREG_BENCH_PRECISIONS`` (default: every built-in precision), and runs with
int8-dynamic about 1.25x slower (changed_precision.py) at fp32,int8-dynamic. It prints each run's
outcome per precision: an unchanged precision must never fail (a false alarm), and the slowed one
must fail or be skipped as disturbed, never pass. The baselines' latency records for this hardware
class are taken from a quiet record run first, on a copy of the baselines.

    QUANTREG_BENCH_RUNS=10 .venv/bin/python benchmarks/busy_neighbour.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from measure import PYTHON, ROOT, run

NAME = "int8-dynamic"
BUSY_SECONDS = 1800


def one_run(folder: Path, label: str, precisions: str, slow: bool, busy: bool, *options: str) -> dict:
    out = folder / f"{label}.json"
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]),
        "QUANTREG_BENCH_OUT": str(out),
        "QUANTREG_CHANGE": "slow" if slow else "",
    }
    command = [PYTHON, "-m", "pytest", "tests/test_quantization.py", "-k", "latency", f"--precision={precisions}", "-rs"]
    command += ["-p", "changed_precision", "-p", "no:cacheprovider", "-q", f"--quantreg-baseline-dir={folder / 'baselines'}", *options]
    code = f"import time\nend = time.monotonic() + {BUSY_SECONDS}\nwhile time.monotonic() < end:\n    pass\n"
    loops = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)] if busy else []
    try:
        result = run(command, env=env)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    data = json.loads(out.read_text())
    data["wall_s"] = result.wall_s
    return data


def outcomes(data: dict) -> dict[str, str]:
    """precision -> passed, failed or skipped (busy: skipped because the machine was busy)."""
    found = {}
    for test, outcome in data["outcomes"].items():
        name = test.split("[", 1)[1].rstrip("]")
        verdict = outcome["outcome"]
        found[name] = verdict
    return found


def main() -> None:
    runs = int(os.environ.get("QUANTREG_BENCH_RUNS", "10"))
    precisions = os.environ.get("QUANTREG_BENCH_PRECISIONS", "all")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "baselines", folder / "baselines")
        one_run(folder, "record", precisions, False, False, "--quantreg-record-latency")
        tallies: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
        for index in range(runs):
            for slow in (False, True):
                data = one_run(folder, f"run{index}-{slow}", f"fp32,{NAME}" if slow else precisions, slow, True)
                found = outcomes(data)
                kind = "slowed   " if slow else "unchanged"
                listed = ", ".join(f"{name} {verdict}" for name, verdict in found.items())
                print(f"run {index + 1:2d} {kind} ({data['wall_s']:.0f} s): {listed}", flush=True)
                tallies[slow].update(f"{name} {verdict}" for name, verdict in found.items() if not slow or name == NAME)
    print(f"unchanged, {runs} runs: {dict(sorted(tallies[False].items()))}")
    print(f"slowed {NAME}, {runs} runs: {dict(sorted(tallies[True].items()))}")
    false_alarms = sum(count for key, count in tallies[False].items() if key.endswith(" failed"))
    missed = tallies[True][f"{NAME} passed"]
    print(f"false alarms: {false_alarms}; slowed {NAME} passed: {missed}")


if __name__ == "__main__":
    main()
