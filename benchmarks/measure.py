"""Shared by the benchmark scripts: run a command as a whole process, return wall time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_rss_gb: float
    returncode: int
    output: str


def run(args: list[str], env: dict[str, str] | None = None) -> Run:
    """Run ``args`` in the repository root; wall seconds and the child's peak RSS (wait4's ru_maxrss)."""
    start = time.perf_counter()
    with open(os.devnull, "rb") as stdin:
        child = subprocess.Popen(
            args, cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        assert child.stdout is not None
        output = child.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return Run(time.perf_counter() - start, usage.ru_maxrss / 2**20, child.returncode, output)
