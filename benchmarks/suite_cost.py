"""Targets 2 and 4: the whole example suite against bare passes, and its peak memory.

Three processes, one after another, each timed from outside (wall seconds, peak RSS):
1. bare_passes.py: one bare pass per precision (build + one inference pass; see that file);
2. ``pytest tests/test_quantization.py --precision=all``: the regression suite as users run it;
3. the same suite with keep_models.py, which holds every built model until the end: the peak
   without the plugin's release of finished models.

    .venv/bin/python benchmarks/suite_cost.py
"""

from __future__ import annotations

from measure import PYTHON, ROOT, run

PRECISIONS = "fp32,fp16,bf16,int8-dynamic,int8-bnb,int4-nf4,int4-fp4"
SUITE = [PYTHON, "-m", "pytest", "tests/test_quantization.py", f"--precision={PRECISIONS}", "-p", "no:cacheprovider", "-q"]


def main() -> None:
    bare = run([PYTHON, str(ROOT / "benchmarks" / "bare_passes.py"), PRECISIONS])
    suite = run(SUITE)
    kept = run([*SUITE, "-p", "keep_models"], env={"PYTHONPATH": str(ROOT / "benchmarks")})
    for name, result in (("bare passes", bare), ("pytest suite", suite), ("suite, models kept", kept)):
        print(f"{name:20s} exit {result.returncode}  wall {result.wall_s:7.1f} s  peak RSS {result.peak_rss_gb:.2f} GB")
    print(f"suite / bare wall ratio: {suite.wall_s / bare.wall_s:.3f} (target at most 1.2)")
    print(f"peak RSS with release {suite.peak_rss_gb:.2f} GB, without {kept.peak_rss_gb:.2f} GB (target at most 2 GB)")
    lines = suite.output.splitlines()
    table = next((i for i, line in enumerate(lines) if line.startswith("metric ")), len(lines) - 3)
    for line in lines[table:]:
        print("  suite:", line)


if __name__ == "__main__":
    main()
