"""The ``quantreg`` command (also ``python -m pytest_quantreg``) for work outside a pytest run."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

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
    args = parser.parse_args(argv)
    try:
        return _build_example(force=args.force, progress=not args.quiet)
    except QuantregError as exc:
        print(f"quantreg: error: {exc}", file=sys.stderr)
        return 2


def _build_example(force: bool, progress: bool) -> int:
    from pytest_quantreg.example import example_model, read_manifest

    started = time.perf_counter()
    folder = example_model(force=force, progress=progress)
    manifest = read_manifest(folder)
    print(f"held-out accuracy: {float(manifest['heldout_accuracy']):.2%} on {manifest['heldout_samples']} tweets")  # type: ignore[arg-type]
    print(f"weights sha256: {manifest['weights_sha256']}")
    print(f"build time: {manifest['build_seconds']} s; this command took {time.perf_counter() - started:.1f} s")
    print(folder)
    return 0
