"""Whether two runs of the example suite produced the same outputs, latencies aside.

Run the README's first command twice (say before and after a refactoring), each writing into its own
folder, then compare the folders:

    pytest tests/test_quantization.py --precision=all --benchmark-json=DIR/bench.json \
        --quantreg-weights-report=DIR/weights.json --quantreg-report=DIR/report > DIR/terminal.txt
    python scripts/same-outputs.py BEFORE_DIR AFTER_DIR

Compared: the terminal's quantreg header lines and everything from the comparison summary to the end
(timings masked: the latency rows, pytest's duration, the benchmark tables; DIR itself masked), the
weight report JSON, and each benchmark of the JSON file (name, parameters, group and ``extra_info``
without its ``latency_*`` and ``rounds_disturbed`` entries). Exit status 0 when all are the same, 1
otherwise.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

TIMED_ROWS = ("mean latency", "median latency", "std latency", "latency ratio")
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?%?")


def terminal_lines(folder: Path) -> list[str]:
    """The quantreg lines of a run's terminal output, with timings and the checkout's path masked."""
    lines = (folder / "terminal.txt").read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if "QUANTIZATION COMPARISON SUMMARY" in line), len(lines))
    kept = [line for line in lines[:start] if line.startswith("quantreg")] + lines[start:]
    root = next((m.group(1) for line in kept if (m := re.search(r"against the stored FP32 baseline (.*)/baselines/", line))), None)
    masked = []
    for line in kept:
        line = line.replace(str(folder), "DIR")
        if root:
            line = line.replace(root, "ROOT")
        if line.startswith(TIMED_ROWS) or re.match(r"^=+ .*\d+ passed", line):
            line = re.sub(r"\s+", " ", NUMBER.sub("#", line))  # the columns' widths follow the figures
        masked.append(line)
    return masked


def benchmarks(folder: Path) -> dict[str, dict[str, Any]]:
    """Each benchmark's name, parameters, group and untimed ``extra_info``."""
    data = json.loads((folder / "bench.json").read_text(encoding="utf-8"))
    out = {}
    for bench in data["benchmarks"]:
        info = {k: v for k, v in bench["extra_info"].items() if not k.startswith("latency_") and k != "rounds_disturbed"}
        out[bench["fullname"]] = {"params": bench["params"], "group": bench["group"], "extra_info": info}
    return out


def differences(before: Path, after: Path) -> list[str]:
    found = []
    old, new = terminal_lines(before), terminal_lines(after)
    if old != new:
        found.append("\n".join(difflib.unified_diff(old, new, "before", "after", lineterm="")))
    weights = [json.loads((folder / "weights.json").read_text(encoding="utf-8")) for folder in (before, after)]
    if weights[0] != weights[1]:
        found.append("weight report JSON differs")
    old_b, new_b = benchmarks(before), benchmarks(after)
    for name in sorted(set(old_b) | set(new_b)):
        if old_b.get(name) != new_b.get(name):
            a, b = (old_b.get(name) or {}).get("extra_info", {}), (new_b.get(name) or {}).get("extra_info", {})
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            found.append(f"benchmark {name} differs: {', '.join(keys) or 'name, params or group'}")
    return found


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    found = differences(before, after)
    compared = f"{len(terminal_lines(before))} terminal lines, the weight report, {len(benchmarks(before))} benchmarks"
    if found:
        print("\n".join(found))
        print(f"DIFFERENT ({compared})")
        return 1
    print(f"same outputs, latencies aside ({compared})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
