"""Target 10: our fallback search side by side with NNCF's ``quantize_with_accuracy_control``, on the same
static INT8 precision (``openvino-int8-static``: NNCF ``quantize``, ``ModelType.TRANSFORMER``), the same
calibration texts and the same accuracy-drop budget.

- Ours: the example suite with ``--quantreg-max-drop=openvino-int8-static=DROP`` and
  ``--quantreg-fallback=report``; the search decides on one half of the sample and confirms on the other.
- NNCF's: ``quantize_with_accuracy_control`` on the FP32 IR, validated on the search half (accuracy as
  the metric, absolute drop DROP/100), the head ignored as our default keeps it. Its model is then
  measured on the held-out half, as ours is.

Forward passes count every pass of one sample: ours from the search's report, NNCF's from its
validation function and its engine (statistics collection and ranking). Flips and KL are against the
PyTorch FP32 model, as the plugin's gates are.

    .venv/bin/python benchmarks/nncf_side_by_side.py [--example-only] [--drop 0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from measure import PYTHON, run
from scale import SAMPLES, write_model, write_tweets

from pytest_quantreg.backends import openvino
from pytest_quantreg.backends.base import BuildContext
from pytest_quantreg.fallback.search import halves
from pytest_quantreg.fallback.units import linear_parameters
from pytest_quantreg.judge.stats import kl_per_sample
from pytest_quantreg.measure.calibration import draw_calibration
from pytest_quantreg.measure.data import SampleSpec, draw_sample, load_embedded, load_file, parse_sample_spec
from pytest_quantreg.measure.example import example_model
from pytest_quantreg.measure.inputs import tokenize
from pytest_quantreg.measure.keep import linear_layers
from pytest_quantreg.measure.loading import label_names, load_classifier, load_tokenizer

PRECISION = "openvino-int8-static"


def ours(name: str, options: list[str], drop: float, folder: Path) -> dict[str, Any]:
    """Our search on ``PRECISION``, from its report: passes, seconds, share kept, the held-out trial."""
    report = folder / f"{name}-fallback.json"
    command = [PYTHON, "-m", "pytest", "tests/test_quantization.py", "-p", "no:cacheprovider", "-q", "-k", "accuracy"]
    command += [f"--precision=fp32,{PRECISION}", f"--quantreg-max-drop={PRECISION}={drop}", *options]
    command += ["--quantreg-fallback=report", f"--quantreg-fallback-report={report}", "--quantreg-fallback-max-seconds=3600"]
    result = run(command)
    print(f"{name}, ours: pytest exit {result.returncode} (1: {PRECISION} fails the gate it was held to), {result.wall_s:.1f} s wall")
    found = json.loads(report.read_text(encoding="utf-8"))["precisions"][0]
    held = found["confirmed"] or {}
    return {
        "passes": found["cost"]["forward_passes"],
        "seconds": found["cost"]["seconds"],
        "share": found["set_share"],
        "layers": len(found["layers"]),
        "set": found["layers"],
        "accuracy": held["accuracy"] * 100 if held else None,
        "flips": round(held["flip_rate"] * held["n"]) if held else None,
        "kl": held.get("kl_mean"),
        "verdict": "passes both halves" if found["passes"] else f"no passing set ({found.get('stopped')})",
        "strategy": found.get("strategy"),
    }


class Counter:
    """Forward passes of one sample through NNCF's OpenVINO engine and through our validation function."""

    def __init__(self) -> None:
        self.engine = 0
        self.validation = 0

    def install(self) -> None:
        from nncf.openvino import engine

        original = engine.OVCompiledModelEngine.infer

        def infer(engine_self: Any, input_data: Any) -> Any:
            self.engine += 1
            return original(engine_self, input_data)

        engine.OVCompiledModelEngine.infer = infer  # type: ignore[method-assign]


def theirs(model_dir: Path, dataset: Any, samples: SampleSpec, drop: float) -> dict[str, Any]:
    """NNCF's accuracy control on the same precision, calibration and budget, measured on the held-out half."""
    import nncf
    import openvino as ov

    sample = draw_sample(dataset, samples, seed=0)
    calibration = draw_calibration(sample, 300, seed=0)
    inputs = tokenize(load_tokenizer(model_dir), sample, 128)
    search, held_out = halves(inputs.labels)
    labels = np.asarray(inputs.labels)
    fp32 = load_classifier(model_dir)
    with torch.inference_mode():
        reference = np.stack([fp32(**e).logits[0].double().numpy() for e in inputs.encodings])
    ctx = BuildContext(model_dir, "cpu", keep_fp32=("classifier",), calibration=calibration)
    ir = ov.Core().read_model(str(openvino.convert(ctx)))
    names = [item.get_any_name() for item in ir.inputs]
    feeds = [{name: e[name].numpy() for name in names} for e in inputs.encodings]
    counter = Counter()
    counter.install()

    def validate(compiled: Any, items: Any) -> float:
        correct = []
        for feed, label in items:
            counter.validation += 1
            correct.append(int(np.argmax(compiled(feed)[0])) == label)
        return float(np.mean(correct))

    start = time.perf_counter()
    with openvino._quiet():
        quantized = nncf.quantize_with_accuracy_control(
            ir,
            nncf.Dataset(ctx.calibration_encodings(), lambda e: {name: e[name] for name in names}),
            nncf.Dataset([(feeds[i], int(labels[i])) for i in search], lambda item: item[0]),
            validate,
            max_drop=drop / 100,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(patterns=[openvino.scope("classifier")], validate=False),
        )
    seconds = time.perf_counter() - start
    compiled = openvino.compile_model(quantized)
    logits = np.stack([np.asarray(compiled(feed)[0][0], dtype=np.float64) for feed in feeds])
    layers = dict(linear_layers(fp32))
    modules = dict(fp32.named_modules())
    matmuls = openvino._matmuls(quantized, list(layers))
    restored = [layer for layer, op in matmuls.items() if not openvino._storage(op) and layer != "classifier"]
    total = linear_parameters(fp32)
    rows = np.asarray(held_out)
    probs = _softmax(logits[rows])
    return {
        "passes": counter.engine + counter.validation,
        "seconds": seconds,
        "share": sum(p.numel() for name in restored for p in modules[name].parameters(recurse=False)) / total,
        "layers": len(restored),
        "set": restored,
        "accuracy": float((probs.argmax(1) == labels[rows]).mean()) * 100,
        "flips": int((probs.argmax(1) != reference[rows].argmax(1)).sum()),
        "kl": float(kl_per_sample(_softmax(reference[rows]), probs).mean()),
        "verdict": f"reached the drop budget on the search half ({counter.validation} validation + {counter.engine} engine passes)",
        "strategy": "restore",
        "held": len(held_out),
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def table(name: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{name} (held-out half: {rows['NNCF accuracy control']['held']} samples)\n")
    print("| search | forward passes | wall s | Linear params back in FP32 | layers | held-out accuracy | held-out flips | held-out KL |")
    print("|---|---|---|---|---|---|---|---|")
    for who, r in rows.items():
        accuracy = f"{r['accuracy']:.2f}%" if r["accuracy"] is not None else "n/a"
        kl = f"{r['kl']:.4f}" if r["kl"] is not None else "n/a"
        print(f"| {who} | {r['passes']:,} | {r['seconds']:.0f} | {r['share']:.1%} | {r['layers']} | {accuracy} | {r['flips']} | {kl} |")
    for who, r in rows.items():
        print(f"- {who}: {r['verdict']}; set: {', '.join(r['set']) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example-only", action="store_true")
    parser.add_argument("--drop", type=float, default=0.2, help="accuracy-drop budget in percentage points (default 0.2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = {"pytest-quantreg": ours("example", [], args.drop, folder)}
        rows["NNCF accuracy control"] = theirs(example_model(), load_embedded(), SampleSpec(), args.drop)
        table(f"example, 387 samples, drop budget {args.drop} points", rows)
        if args.example_only:
            return
        large, tweets = folder / "indobert-base-shape", folder / "tweets.csv"
        write_model(large, initializer_range=0.2)
        write_tweets(tweets)
        options = [f"--quantreg-model={large}", f"--quantreg-dataset={tweets}", f"--quantreg-samples={SAMPLES}"]
        options += [f"--quantreg-baseline-dir={tmp}/baselines", "--quantreg-update-baselines"]
        dataset = load_file(tweets, label_names(large))
        rows = {"pytest-quantreg": ours("indobert-base-shape", options, args.drop, folder)}
        rows["NNCF accuracy control"] = theirs(large, dataset, parse_sample_spec(SAMPLES), args.drop)
        table(f"IndoBERT-base shape, {SAMPLES} samples, drop budget {args.drop} points", rows)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
