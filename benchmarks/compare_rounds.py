"""`quantreg compare` across commits with alternated rounds: the same commit against itself, and a
head whose int8-dynamic is about 1.15x slower (changed_precision.py, ``slow-ffn``: the feed-forward
blocks of its first three encoder layers run twice; the change each trial measured is printed).

A scratch git repository holds the example's latency tests; its head commit adds a conftest that
asks changed_precision.py (loaded with ``-p`` on both sides) to slow int8-dynamic. Each trial runs
``quantreg compare-commits --rounds N`` (base, head, base, head, ...) with
``QUANTREG_FAIL_ON=latency=10%`` on ``--precision=fp32,int8-dynamic -k latency``, and prints the
verdict, int8-dynamic's change with its interval, and any note.

    QUANTREG_BENCH_RUNS=10 QUANTREG_BENCH_ROUNDS=3 .venv/bin/python benchmarks/compare_rounds.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from measure import PYTHON, ROOT

SLOW_CONFTEST = 'import os\n\nos.environ["QUANTREG_CHANGE"] = "slow-ffn"  # read by changed_precision (-p) when the run starts\n'
PYTEST_ARGS = ["--precision=fp32,int8-dynamic", "-k", "latency", "-p", "changed_precision", "-p", "no:cacheprovider", "-q"]
PYTEST_ARGS += ["--quantreg-samples=150"]


def git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def scratch(folder: Path) -> tuple[str, str]:
    """The scratch repository: the example's tests (base), then the slowing conftest (head)."""
    shutil.copy(ROOT / "tests" / "test_quantization.py", folder / "test_quantization.py")
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "base")
    base = git(folder, "rev-parse", "HEAD")
    (folder / "conftest.py").write_text(SLOW_CONFTEST)
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "int8-dynamic 1.15x slower")
    return base, git(folder, "rev-parse", "HEAD")


def trial(folder: Path, base: str, head: str, rounds: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    command = [PYTHON, "-m", "pytest_quantreg", "compare-commits", "--rounds", str(rounds), "--out", str(folder / "out")]
    command += ["--fail-on", "latency=10%", base, head, "--", *PYTEST_ARGS]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    data = json.loads((folder / "out" / "compare.json").read_text())
    row = next(r for r in data["rows"] if r["precision"] == "int8-dynamic")
    ratios = [round(r["ratio"], 3) for side in ("base", "head") for r in row[side]["rounds"]]
    said = "; ".join(data["regressions"] + [n for n in data["notes"] if "int8-dynamic" in n]) or "-"
    return result.returncode, f"round ratios (base..., head...) {ratios}: {said}"


def main() -> None:
    runs = int(os.environ.get("QUANTREG_BENCH_RUNS", "10"))
    rounds = int(os.environ.get("QUANTREG_BENCH_ROUNDS", "3"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base, head = scratch(folder)
        verdicts: dict[str, list[int]] = {"same commit": [], "1.15x slower head": []}
        for index in range(runs):
            for label, commit in (("same commit", base), ("1.15x slower head", head)):
                code, text = trial(folder, base, commit, rounds)
                verdicts[label].append(code)
                print(f"trial {index + 1:2d} {label}: exit {code} ({'REGRESSED' if code == 1 else 'no regression'}); {text}", flush=True)
    for label, codes in verdicts.items():
        print(f"{label}: regressed in {codes.count(1)} of {len(codes)} trials ({rounds} rounds each, latency=10%)")


if __name__ == "__main__":
    main()
