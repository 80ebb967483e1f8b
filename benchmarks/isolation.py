"""Paired latency ratio against each precision timed alone, every precision loaded in one process.

Every built-in precision that runs here is built on the embedded example (or ``--model`` with
``--dataset``) and kept loaded, so ONNX Runtime's, torchao's and torch's thread pools all live in
the process, as in a ``--precision=all`` run. For each precision it measures, in one pass of the
plugin's own measurement (``evaluation.measure``, perf_counter timer, the default 50 pairs):

- the paired ratio: FP32 and the precision timed back to back on the paired samples;
- the ratio alone in blocks: FP32 over the whole sample, the precision over the whole sample,
  FP32 again (each forward timed on its own, nothing else running in between); per paired sample
  the precision's time over the mean of FP32's two, and the median of these;
- the ratio of own medians: the precision's own timed rounds over FP32's own timed rounds.

It prints a Markdown table with paired / alone - 1 and own / alone - 1 (both should stay within
10%), and FP32's partner forwards over FP32's own in the blocks on the same samples.

    .venv/bin/python benchmarks/isolation.py [--precisions fp32,int8-dynamic,...] [--model DIR --dataset FILE.csv]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

from pytest_quantreg.backends.base import BuildContext
from pytest_quantreg.backends.registry import builtin_registry
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.stats import latency_ratio
from pytest_quantreg.measure import keep
from pytest_quantreg.measure.calibration import draw_calibration
from pytest_quantreg.measure.data import draw_sample, load_embedded, load_file, parse_sample_spec
from pytest_quantreg.measure.evaluation import measure
from pytest_quantreg.measure.example import example_model
from pytest_quantreg.measure.inputs import Inputs, tokenize
from pytest_quantreg.measure.loading import known_noise_filtered, label_names, load_tokenizer
from pytest_quantreg.measure.timing import settle


def block(model: object, inputs: Inputs) -> dict[str, float]:
    """Seconds per forward of each sample, the whole sample in one block, each forward timed on its own, after 5 warmups."""
    seconds = {}
    with torch.inference_mode():
        for encoding in inputs.encodings[:5]:
            model(**encoding)  # type: ignore[operator]
        for sample, encoding in zip(inputs.ids, inputs.encodings, strict=True):
            start = time.perf_counter()
            model(**encoding)  # type: ignore[operator]
            seconds[sample] = time.perf_counter() - start
    return seconds


def keep_head(folder: Path) -> tuple[str, ...]:
    """The Linear layers the plugin keeps in FP32 by default (the classification head)."""
    model = keep.meta_model(folder, False)
    return keep.resolve((keep.DEFAULT,), keep.linear_layers(model), int(model.config.num_labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="all", help="comma-separated names (default: every built-in one that runs here)")
    parser.add_argument("--model", type=Path, help="model folder (default: the embedded example)")
    parser.add_argument("--dataset", type=Path, help="CSV with text and label columns (default: the embedded tweets)")
    parser.add_argument("--samples", default="all", help="sample size, as --quantreg-samples (default: all)")
    parser.add_argument("--pairs", type=int, default=50, help="pairs per precision, as --quantreg-latency-pairs (default: 50)")
    args = parser.parse_args()
    folder = args.model or example_model()
    dataset = load_embedded() if args.dataset is None else load_file(args.dataset, label_names(folder))
    sample = draw_sample(dataset, parse_sample_spec(args.samples), 0)
    inputs = tokenize(load_tokenizer(folder), sample, 128)
    calibration = draw_calibration(sample, 300, 0)  # the static precisions' texts, as the plugin draws them
    registry = builtin_registry()
    names = [n for n in registry.select(args.precisions, "cpu") if not registry[n].unavailable_reason("cpu")]
    models = {}
    kept = keep_head(folder)
    for name in names:
        try:
            with known_noise_filtered():
                ctx = BuildContext(folder, "cpu", keep_fp32=() if name == "fp32" else kept, calibration=calibration)
                models[name] = registry[name].build(ctx)
        except Exception as exc:  # a backend that cannot run on this CPU: say so and go on
            print(f"{name}: not built ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", file=sys.stderr)
    fp32 = models["fp32"]
    own_fp32 = measure(fp32, inputs, precision="fp32", size_mb=0.0, warmup=5)
    print(f"{len(inputs)} samples, {torch.get_num_threads()} threads, {len(models)} precisions loaded")
    print(
        "| precision | paired ratio [95% CI] | alone in blocks | paired / alone - 1 | own medians | own / alone - 1 "
        "| FP32 partner / FP32 alone | forwards per timing | pairs undisturbed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        if name == "fp32":
            continue
        try:
            with known_noise_filtered():
                paired = measure(model, inputs, precision=name, size_mb=0.0, warmup=5, partner=fp32, pairs=args.pairs)
                settle()
                before = block(fp32, inputs)
                settle()
                mine = block(model, inputs)
                settle()
                after = block(fp32, inputs)
        except Exception as exc:  # a backend that crashes on this CPU: say so and go on
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]} |", flush=True)
            continue
        ratio = latency_ratio(paired.paired_s)
        assert ratio is not None, f"{name}: no undisturbed pair"
        assert paired.latency is not None
        assert own_fp32.latency is not None
        alone = statistics.median(mine[s] / ((before[s] + after[s]) / 2) for s in paired.paired_ids)
        own = paired.latency.median_ms / own_fp32.latency.median_ms
        partner = statistics.median(
            f / ((before[s] + after[s]) / 2) for s, (_, f) in zip(paired.paired_ids, paired.paired_s or (), strict=True)
        )
        print(
            f"| {name} | {ratio.ratio:.3f} [{ratio.ci95[0]:.3f}, {ratio.ci95[1]:.3f}] | {alone:.3f} | {ratio.ratio / alone - 1:+.1%} "
            f"| {own:.3f} | {own / alone - 1:+.1%} | {partner:.3f} | {paired.repetitions} "
            f"| {len(paired.paired_ids)}/{paired.pairs_wanted} |",
            flush=True,
        )
        gc.collect()


if __name__ == "__main__":
    try:
        main()
    except QuantregError as exc:
        sys.exit(f"isolation.py: {exc}")
