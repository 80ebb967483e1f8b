"""Target 8: the same verdicts on every CPU generation. Under ``ATEN_CPU_CAPABILITY=default``,
``avx2`` (with oneDNN's and OpenVINO's caps to match: ``capability_env``) and the machine's own
capability (fresh processes, one after another) it runs the example
suite at every precision, then int8-dynamic corrupted (its accuracy tests) and slowed (its latency
test; changed_precision.py). It prints each run's verdict, per precision and capability what the
gates judge (accuracy drop, flip rate, mean KL, paired latency ratio), and the headroom each
default limit leaves over the worst capability. ``--record`` first records each capability's
latency ratios in baselines/ (``--quantreg-record-latency``), which the slowed run is judged against.

    [QUANTREG_BENCH_PRECISIONS=fp32,NAME,...] .venv/bin/python benchmarks/capabilities.py [--record]
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

from measure import PYTHON, ROOT, run

from pytest_quantreg.backends.registry import builtin_registry, capability_env, kernel_env
from pytest_quantreg.measure.hardware import TORCH_KERNEL_ENV

CAPABILITIES = ("default", "avx2", "native")
PRECISIONS = os.environ.get("QUANTREG_BENCH_PRECISIONS", "all")  # e.g. fp32,openvino-int8-static: only those
SUITE = [PYTHON, "-m", "pytest", "tests/test_quantization.py", "-p", "no:cacheprovider", "-q"]
GATES = (  # (extra_info key, gate, scale to the gate's unit, cell format)
    ("accuracy_drop_pp", "max_drop", 1, "{:.2f}"),
    ("flip_rate", "max_flip_rate", 100, "{:.2f}"),
    ("kl_mean", "max_kl", 1, "{:.4f}"),
    ("latency_ratio", "max_latency_ratio", 1, "{:.2f}"),
)


def suite(capability: str, folder: Path, record: bool) -> tuple[str, dict[str, dict]]:
    """One run of the suite under ``capability``: its pytest summary line and each precision's extra_info."""
    env = {} if capability == "native" else capability_env(capability)
    out = folder / f"{capability}.json"
    args = [*SUITE, f"--precision={PRECISIONS}", f"--benchmark-json={out}", *(["--quantreg-record-latency"] if record else [])]
    result = run(args, env=env)
    for line in re.findall(r"^FAILED .*$", result.output, re.MULTILINE):
        print(f"  {capability}: {line}", flush=True)
    summary = re.findall(r"(\d+ (?:passed|failed).*) in [\d.]+s", result.output)
    infos = {b["extra_info"]["precision"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    return (summary[-1] if summary else f"exit {result.returncode}"), infos


def changed(capability: str, change: str, test: str) -> str:
    """The verdict of int8-dynamic changed by ``change`` (changed_precision.py) in its ``test``, under ``capability``."""
    env = {"PYTHONPATH": str(ROOT / "benchmarks"), "QUANTREG_CHANGE": change}
    env.update({} if capability == "native" else capability_env(capability))
    args = [PYTHON, "-m", "pytest", "tests/test_quantization.py", "--precision=fp32,int8-dynamic", "-k", test]
    result = run([*args, "-p", "changed_precision", "-p", "no:cacheprovider", "-q", "-rf"], env=env)
    failures = re.findall(r"FAILED \S+\[int8-dynamic\] - (.*)", result.output)
    reasons = re.findall(r"^  - (.*)$", result.output, re.MULTILINE)
    verdict = "FAILED" if failures else "passed"
    return f"{change} int8-dynamic {test}: {verdict}" + (f" ({'; '.join(reasons)})" if reasons else "")


def main() -> None:
    for key in (*TORCH_KERNEL_ENV, *kernel_env()):
        os.environ.pop(key, None)
    record = "--record" in sys.argv[1:]
    registry = builtin_registry()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for capability in CAPABILITIES:
            summary, infos = suite(capability, Path(tmp), record)
            results[capability] = infos
            hardware = next(iter(infos.values()))["hardware"]
            print(f"{capability}: {summary} (torch capability {hardware['capability']}, class '{hardware['hardware_class']}')", flush=True)
            print(f"  {changed(capability, 'corrupt', 'accuracy')}", flush=True)
            print(f"  {changed(capability, 'slow', 'latency')}", flush=True)
    names = list(results["native"])
    print("\n| precision | " + " | ".join(f"{key} ({', '.join(CAPABILITIES)})" for key, *_ in GATES) + " |")
    print("|---|" + "---|" * len(GATES))
    for name in names:
        cells = []
        for key, _, scale, fmt in GATES:
            values = [results[c].get(name, {}).get(key) for c in CAPABILITIES]
            cells.append(" / ".join(fmt.format(v * scale) if isinstance(v, float | int) else "-" for v in values))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nheadroom: default limit over the worst value of the three capabilities (latency: over the worst CI upper bound)")
    for name in names:
        cells = []
        for key, gate, scale, _ in GATES:
            limit = registry[name].default_limit(gate, "cpu")
            if key == "latency_ratio":
                values = [(results[c].get(name, {}).get("latency_ratio_ci95") or [None, None])[1] for c in CAPABILITIES]
            else:
                values = [results[c].get(name, {}).get(key) for c in CAPABILITIES]
            worst = max((v * scale for v in values if v is not None), default=None)
            if limit is None or worst is None:
                cells.append(f"{gate} -")
            else:
                cells.append(f"{gate} {limit} / {worst:.4g} = " + (f"{limit / worst:.2f}x" if worst else "inf"))
        print(f"{name}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
