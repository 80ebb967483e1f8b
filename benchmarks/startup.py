"""Target 3: start-up. ``pytest --collect-only`` and ``pytest --help`` with the plugin installed,
and the example cache hit, each as a whole process, median of five after one warm-up.

    .venv/bin/python benchmarks/startup.py
"""

from __future__ import annotations

import statistics

from measure import PYTHON, run

COMMANDS = {
    "pytest --collect-only -q tests/test_quantization.py": [PYTHON, "-m", "pytest", "--collect-only", "-q", "tests/test_quantization.py"],
    "pytest --help": [PYTHON, "-m", "pytest", "--help"],
    "example cache hit": [PYTHON, "-c", "from pytest_quantreg.measure.example import example_model; print(example_model())"],
    "python -c 'import pytest' (floor)": [PYTHON, "-c", "import pytest"],
}


def main() -> None:
    for name, args in COMMANDS.items():
        run(args)  # warm-up: file-system caches
        results = [run(args) for _ in range(5)]
        assert all(r.returncode == 0 for r in results), results[0].output
        walls = [r.wall_s for r in results]
        print(
            f"{name:45s} median {statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f})"
            f"  peak RSS {max(r.peak_rss_gb for r in results) * 1024:.0f} MB"
        )


if __name__ == "__main__":
    main()
