"""The ``quantreg`` command (also ``python -m pytest_quantreg``) for work outside a pytest run."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pytest_quantreg.errors import QuantregError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a user mistake)."""
    parser = argparse.ArgumentParser(prog="quantreg", description="pytest-quantreg helper commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build-example",
        help="Build (or reuse) the embedded example model and print its folder",
        description="Fine-tune the example sentiment model once into the cache ($QUANTREG_CACHE_DIR) and print its folder last.",
    )
    build.add_argument("--force", action="store_true", help="Rebuild even when a cached model exists")
    build.add_argument("--quiet", action="store_true", help="No progress bar")
    _add_compare(commands)
    _add_compare_commits(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "compare-commits":
            from pytest_quantreg.commits import compare_commits

            pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
            return compare_commits(args.base, args.head, pytest_args, args.rounds, args.out, args.fail_on)
        return _build_example(force=args.force, progress=not args.quiet)
    except QuantregError as exc:
        print(f"quantreg: error: {exc}", file=sys.stderr)
        return 2


def _add_compare(commands: argparse._SubParsersAction) -> None:
    from pytest_quantreg.report.compare import DEFAULT_FAIL_ON, METRICS

    metrics = "; ".join(f"{name}: {what}" for name, what in METRICS.items())
    compare = commands.add_parser(
        "compare",
        help="Compare two runs (--benchmark-json files or --benchmark-autosave ids) and fail on regressions",
        description="Match quantreg benchmarks of two runs by model, data set, precision and device; "
        "exit 0 when nothing regressed, 1 on a regression, 2 on bad input.",
    )
    compare.add_argument(
        "base",
        metavar="BASE",
        help="the run to compare against: a JSON file, or a saved run's id such as 0001; "
        "several runs of the same commit (rounds) separated by commas",
    )
    compare.add_argument("head", metavar="HEAD", help="the run under test, in the same forms")
    compare.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC=N",
        help=f"fail when a metric regresses by more than N (repeatable; default {DEFAULT_FAIL_ON}). {metrics}".replace("%", "%%"),
    )
    compare.add_argument("--storage", default=".benchmarks", type=Path, help="where saved runs live (default: %(default)s)")
    output = compare.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="print Markdown (for a CI step summary)")
    output.add_argument("--json", action="store_true", help="print JSON")


def _add_compare_commits(commands: argparse._SubParsersAction) -> None:
    recipe = commands.add_parser(
        "compare-commits",
        help="Run the pytest suite on two commits of this repository, then compare; the CI recipe",
        description="Run pytest (the arguments after --) on BASE and HEAD in git worktrees on this machine, alternating for "
        "--rounds rounds, then gate with quantreg compare. Exit 1 when HEAD's own pytest gates fail, whatever the "
        "comparison says, or when the comparison finds a regression; 0 otherwise; 2 on bad input.",
    )
    recipe.add_argument("base", metavar="BASE", help="the commit to compare against, e.g. origin/main")
    recipe.add_argument("head", metavar="HEAD", help="the commit under test, e.g. HEAD")
    recipe.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="run base and head N times each, alternating, so that compare sees how far latency moves between runs (default: 1)",
    )
    recipe.add_argument(
        "--out",
        type=Path,
        default=Path("quantreg-compare"),
        metavar="DIR",
        help="where base-K.json, head-K.json, compare.md and compare.json go (default: %(default)s)",
    )
    recipe.add_argument("--fail-on", action="append", default=[], metavar="METRIC=N", help="as for quantreg compare (repeatable)")
    recipe.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS", help="the suite to run, after --")


def _compare(args: argparse.Namespace) -> int:
    from pytest_quantreg.report import compare
    from pytest_quantreg.report.benchmark_info import load_rounds

    thresholds = compare.parse_fail_on(args.fail_on)
    result = compare.compare_runs(load_rounds(args.base, args.storage), load_rounds(args.head, args.storage), thresholds)
    render = compare.render_markdown if args.markdown else compare.render_json if args.json else compare.render_text
    print(render(result))
    return 1 if result.regressions else 0


def _build_example(force: bool, progress: bool) -> int:
    from pytest_quantreg.measure.example import example_model, read_manifest

    started = time.perf_counter()
    folder = example_model(force=force, progress=progress)
    manifest = read_manifest(folder)
    print(f"held-out accuracy: {float(manifest['heldout_accuracy']):.2%} on {manifest['heldout_samples']} tweets")  # type: ignore[arg-type]
    print(f"weights sha256: {manifest['weights_sha256']}")
    print(f"build time: {manifest['build_seconds']} s; this command took {time.perf_counter() - started:.1f} s")
    print(folder)
    return 0
