"""What the installed plugin costs a suite that does not use it: wall time of ``pytest`` with the
plugin against ``pytest -p no:quantreg``, alternating, each a fresh process, on a generated
one-test suite and on any suite folders given (for example a checkout of a library's own tests).

For each run with the plugin it also checks what a dormant plugin must not do: print a line of its
own (pytest's list of installed plugins aside), or leave torch imported at the end of the session (a conftest-free witness plugin, loaded
with ``-p``, writes ``sys.modules`` to a file).

    .venv/bin/python benchmarks/dormant.py [--runs 7] [SUITE_DIR [PYTEST_ARGS...]]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from measure import PYTHON

WITNESS = """
import os, sys

def pytest_unconfigure(config):
    with open(os.environ["QUANTREG_WITNESS"], "w") as handle:
        handle.write("torch" if "torch" in sys.modules else "-")
"""


def timed(folder: Path, args: list[str], witness: Path, plugin: bool) -> tuple[float, str, str]:
    """One pytest process in ``folder``: wall seconds, its output, and what the witness saw."""
    command = [PYTHON, "-m", "pytest", "-p", "quantreg_witness", "-p", "no:cacheprovider", *args]
    if not plugin:
        command += ["-p", "no:quantreg"]
    env = {**os.environ, "PYTHONPATH": str(witness.parent), "QUANTREG_WITNESS": str(witness)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return time.perf_counter() - start, result.stdout + result.stderr, witness.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each side (default: 7)")
    parser.add_argument("suite", nargs="*", help="a suite folder and its pytest arguments (default: a generated one-test suite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        (scratch / "quantreg_witness.py").write_text(WITNESS)
        suites = [(scratch / "one", [])]
        (scratch / "one").mkdir()
        (scratch / "one" / "test_one.py").write_text("def test_x():\n    assert 1 + 1 == 2\n")
        if args.suite:
            suites.append((Path(args.suite[0]).resolve(), shlex.split(" ".join(args.suite[1:]))))
        print("| suite | with the plugin, median s | -p no:quantreg, median s | difference | quantreg lines | torch imported |")
        print("|---|---|---|---|---|---|")
        for folder, extra in suites:
            walls: dict[bool, list[float]] = {True: [], False: []}
            lines, torch = 0, 0
            for _ in range(args.runs):
                for plugin in (True, False):
                    wall, output, seen = timed(folder, extra, scratch / "witness.txt", plugin)
                    walls[plugin].append(wall)
                    if plugin:
                        lines += sum(line.lower().startswith("quantreg") or "QUANTREG" in line for line in output.splitlines())
                        torch += seen == "torch"
            on, off = statistics.median(walls[True]), statistics.median(walls[False])
            name = f"{folder.name} {' '.join(extra)}".strip()
            difference = f"{on - off:+.2f} s ({on / off - 1:+.1%})"
            print(f"| {name} | {on:.2f} | {off:.2f} | {difference} | {lines} | {torch} of {args.runs} |", flush=True)


if __name__ == "__main__":
    main()
