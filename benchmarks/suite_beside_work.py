"""The test suite beside other work: runs of pytest, each next to one busy-loop process at ``nice -n 19``.

The loop (``python3 -c 'while True: pass'`` under ``nice -n 19``, bounded in time) is started before each
run and ended by its process id after it, so the suite shares the two cores with work it does not control,
as on a shared CI runner. Each run prints its exit status, its closing line and its wall time; all runs
must pass. Arguments after the options go to pytest (default: the README's test command, whole suite).

    .venv/bin/python benchmarks/suite_beside_work.py --runs 3
    .venv/bin/python benchmarks/suite_beside_work.py --runs 3 tests/test_plugin.py tests/test_environments.py
    .venv/bin/python benchmarks/suite_beside_work.py --runs 3 --ci   # CI itself, from a fresh clone, each time
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import PYTHON, ROOT, run

BUSY_SECONDS = 3600
CLOSING = re.compile(r"^=* ?\d+ (passed|failed|skipped|errors?)\b.* in [\d.]+s")


def beside_busy_loop(command: list[str]) -> tuple[int, str, float]:
    """One run of ``command`` next to a niced busy loop: exit status, closing line (and CI's stage
    times), wall seconds."""
    code = f"import time\nend = time.monotonic() + {BUSY_SECONDS}\nwhile time.monotonic() < end:\n    pass\n"
    loop = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", code])
    try:
        result = run(command)
    finally:
        loop.kill()
        loop.wait()
    lines = result.output.splitlines()
    closing = next((line for line in reversed(lines) if CLOSING.match(line)), "no closing line")
    stages = [line for line in lines if line.startswith("== ci: stages:")]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return result.returncode, "\n".join([closing.strip("= "), *stages, *failures]), result.wall_s


def ci_in_a_fresh_clone() -> list[str]:
    """``bash .ci/run`` in a fresh clone of this repository's committed HEAD (its own venv and caches)."""
    folder = tempfile.mkdtemp(prefix="quantreg-ci-")
    subprocess.run(["git", "clone", "-q", str(ROOT), folder], check=True)
    return ["bash", str(Path(folder) / ".ci" / "run")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="How many runs in a row (default: %(default)s)")
    parser.add_argument("--ci", action="store_true", help="Run `bash .ci/run` in a fresh clone of HEAD each time instead of pytest")
    args, pytest_args = parser.parse_known_args()
    passed = 0
    for index in range(args.runs):
        command = ci_in_a_fresh_clone() if args.ci else [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-q", *pytest_args]
        code, closing, wall = beside_busy_loop(command)
        passed += code == 0
        print(f"run {index + 1}: exit {code} in {wall:.0f} s: {closing}", flush=True)
    print(f"{passed} of {args.runs} runs passed beside a busy loop at nice 19")
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
