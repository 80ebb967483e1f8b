"""Graded regressions against the regression gate: which changes of int8-dynamic its own record catches.

For each CPU capability (native, and torch's kernels capped at ``avx2`` and ``default``: each its own
hardware class) one pytest process runs the example's accuracy tests at int8-dynamic and at its graded
changes (changed_precision.py, ``QUANTREG_GRADED``): seeded Gaussian noise of a few relative strengths
on the weights it quantizes (several seeds each) and a recipe change (the output head quantized too).
Each change is judged against int8-dynamic's own outcome record for that hardware class (copied under
the change's name into a temporary copy of the baselines) and against FP32 with int8-dynamic's gates.
It prints, per change, the predictions that moved against the record and both verdicts. The unchanged
int8-dynamic must pass in each of ``--unchanged`` fresh processes; a change that moves 1% of the
sample's predictions or more must fail every time.

    .venv/bin/python benchmarks/graded_regressions.py [--sigmas 0.005,0.01,0.02,0.05] [--seeds 10] [--unchanged 3]

The baselines must hold int8-dynamic's record for these hardware classes (``--quantreg-record``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from measure import PYTHON, ROOT, run

from pytest_quantreg.backends.registry import capability_env

NAME = "int8-dynamic"
BASELINE = "quantreg-example-minilm-tweets__tweets__n387-seed0-len128__cpu.json"


def one_run(folder: Path, capability: str | None, graded: str, names: list[str], label: str) -> dict:
    out = folder / f"{label}.json"
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]),
        "QUANTREG_BENCH_OUT": str(out),
        "QUANTREG_GRADED": graded,
        **(capability_env(capability) if capability else {}),
    }
    precisions = ",".join([NAME, *names]) if graded else NAME
    command = [PYTHON, "-m", "pytest", "tests/test_quantization.py", "-k", "accuracy", "-p", "changed_precision", "-p", "no:cacheprovider"]
    command += ["-q", f"--quantreg-baseline-dir={folder / 'baselines'}", f"--precision={precisions}"]
    result = run(command, env=env)
    if not out.exists():
        raise SystemExit(f"{label}: no results ({result.returncode}):\n{result.output[-3000:]}")
    return {**json.loads(out.read_text()), "wall_s": result.wall_s}


def give_records(folder: Path, names: list[str]) -> None:
    """Each graded change gets int8-dynamic's outcome record, in every hardware class that has one."""
    path = folder / "baselines" / BASELINE
    document = json.loads(path.read_text())
    for entry in document.get("outcome_records", {}).values():
        precisions = entry["precisions"]
        if NAME in precisions:
            precisions.update({name: precisions[NAME] for name in names})
    path.write_text(json.dumps(document))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", default="0.005,0.01,0.02,0.05", help="Relative noise strengths (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=10, help="Noise seeds per strength (default: %(default)s)")
    parser.add_argument("--unchanged", type=int, default=3, help="Fresh processes of the unchanged int8-dynamic (default: %(default)s)")
    parser.add_argument("--capabilities", default="native,avx2,default", help="Which to run (default: %(default)s)")
    args = parser.parse_args()
    graded = f"{args.sigmas}:{args.seeds}"
    names = [f"{NAME}.noise{s}-s{seed}" for s in args.sigmas.split(",") for seed in range(args.seeds)] + [f"{NAME}.keep-none"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "baselines", folder / "baselines")
        give_records(folder, names)
        for capability in args.capabilities.split(","):
            cap = None if capability == "native" else capability
            unchanged = [one_run(folder, cap, "", [], f"{capability}-unchanged-{i}") for i in range(args.unchanged)]
            key = f"tests/test_quantization.py::test_accuracy[{NAME}]"
            failed = sum(u["outcomes"].get(key, {}).get("outcome") != "passed" for u in unchanged)
            judged = sum(NAME in u["drift"] for u in unchanged)
            print(f"{capability}: unchanged {NAME} did not pass in {failed} of {len(unchanged)} fresh runs ({judged} judged by its record)")
            data = one_run(folder, cap, graded, names, f"{capability}-graded")
            tally: dict[str, list[tuple[int, str, bool]]] = defaultdict(list)
            for name in names:
                outcome = data["outcomes"].get(f"tests/test_quantization.py::test_accuracy[{name}]", {})
                message = outcome.get("message", "")
                moved = data["drift"].get(name, {}).get("changed", -1)
                group = name.rsplit("-s", 1)[0] if ".noise" in name else name
                tally[group].append((moved, outcome.get("outcome", "?"), "regressed against FP32" in message))
            print(f"{capability} ({data['hardware_class']}; {data['wall_s']:.0f} s):")
            for group, rows in tally.items():
                moved = sorted(r[0] for r in rows)
                fails = sum(r[1] == "failed" for r in rows)
                big = [r for r in rows if r[0] >= 4]
                print(
                    f"  {group}: moved {moved[0]}-{moved[-1]} of 387 (median {moved[len(moved) // 2]}); failed {fails} of {len(rows)}; "
                    f"moving >= 4: {len(big)}, of them failed {sum(r[1] == 'failed' for r in big)}; "
                    f"the FP32-relative gates alone failed {sum(r[2] for r in rows)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
