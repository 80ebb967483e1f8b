"""``quantreg compare-commits``: the CI recipe, shipped with the package so any repository can use it.

It runs the project's pytest suite on two commits of the repository it is called in, on this machine
(git worktrees, the same installed pytest-quantreg), alternating base and head for ``rounds`` rounds,
then gates with ``quantreg compare``. The job fails when the head's own pytest gates fail, whatever the
comparison says, and when the comparison finds a regression. The files go into one folder: each
round's benchmark JSON, and the comparison as text, Markdown (a CI step summary) and JSON.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_quantreg.errors import QuantregError

SIDES = ("base", "head")


def compare_commits(base: str, head: str, pytest_args: Sequence[str], rounds: int, out: Path, fail_on: Sequence[str]) -> int:
    """Run the suite on ``base`` and ``head``, then compare; 0 when head's gates pass and nothing regressed,
    1 otherwise, 2 for bad input."""
    if rounds < 1:
        raise QuantregError(f"--rounds must be 1 or more, got {rounds}")
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    for old in [*out.glob("base-*.json"), *out.glob("head-*.json")]:
        old.unlink()
    trees = {side: out / f"{side}-tree" for side in SIDES}
    try:
        for side, commit in zip(SIDES, (base, head), strict=True):
            _git("worktree", "remove", "--force", str(trees[side]), check=False)
            _git("worktree", "add", "--detach", "--force", str(trees[side]), commit)
        head_status = 0
        for round_ in range(1, rounds + 1):
            for side, commit in zip(SIDES, (base, head), strict=True):
                command = [sys.executable, "-m", "pytest", *pytest_args, f"--benchmark-json={out / f'{side}-{round_}.json'}"]
                status = subprocess.run(command, cwd=trees[side], check=False).returncode
                print(f"quantreg: pytest on {side} ({commit}), round {round_} of {rounds}, exited with {status}", file=sys.stderr)
                head_status = status if side == "head" and status != 0 else head_status
    finally:
        for tree in trees.values():
            _git("worktree", "remove", "--force", str(tree), check=False)
            shutil.rmtree(tree, ignore_errors=True)
    files = {side: ",".join(str(out / f"{side}-{r}.json") for r in range(1, rounds + 1)) for side in SIDES}
    missing = [name for side in SIDES for name in files[side].split(",") if not Path(name).is_file()]
    if missing:
        raise QuantregError(f"pytest wrote no benchmark JSON ({', '.join(missing)}): does the suite select quantreg tests?")
    compared = _compare(files["base"], files["head"], fail_on, out)
    if head_status != 0:
        print(f"quantreg: FAILED: pytest on head ({head}) exited with {head_status}: its own gates failed, whatever the comparison says")
        return 1
    return compared


def _compare(base: str, head: str, fail_on: Sequence[str], out: Path) -> int:
    from pytest_quantreg.report import compare
    from pytest_quantreg.report.benchmark_info import load_rounds

    thresholds = compare.parse_fail_on(list(fail_on))
    result = compare.compare_runs(load_rounds(base, out), load_rounds(head, out), thresholds)
    (out / "compare.json").write_text(compare.render_json(result) + "\n", encoding="utf-8")
    (out / "compare.md").write_text(compare.render_markdown(result) + "\n", encoding="utf-8")
    print(compare.render_text(result))
    return 1 if result.regressions else 0


def _git(*args: str, check: bool = True) -> None:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise QuantregError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
