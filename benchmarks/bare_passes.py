"""One bare pass per precision: build the model (load + quantize), one inference pass over the
pre-tokenized sample, accuracy; nothing else. The reference that suite_cost.py and scale.py
compare with.

Models are built with the plugin's own build functions (the same ``from_pretrained`` and
quantization calls) and the sample is drawn the way the plugin draws it (seed 0), so the
difference measured is the harness around them.

    .venv/bin/python benchmarks/bare_passes.py fp32,fp16,... [--model DIR --dataset FILE.csv --samples N]
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

from pytest_quantreg.backends.base import BuildContext
from pytest_quantreg.backends.registry import builtin_registry
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.measure.calibration import draw_calibration
from pytest_quantreg.measure.data import draw_sample, load_embedded, load_file, parse_sample_spec
from pytest_quantreg.measure.example import example_model
from pytest_quantreg.measure.inputs import tokenize
from pytest_quantreg.measure.loading import label_names, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("precisions", help="comma-separated precision names")
    parser.add_argument("--model", type=Path, help="model folder (default: the embedded example)")
    parser.add_argument("--dataset", type=Path, help="CSV with text and label columns (default: the embedded tweets)")
    parser.add_argument("--samples", default="all", help="sample size, as --quantreg-samples (default: all)")
    args = parser.parse_args()
    folder = args.model or example_model()
    dataset = load_embedded() if args.dataset is None else load_file(args.dataset, label_names(folder))
    sample = draw_sample(dataset, parse_sample_spec(args.samples), 0)
    inputs = tokenize(load_tokenizer(folder), sample, 128)
    registry = builtin_registry()
    for name in args.precisions.split(","):
        model = registry[name].build(BuildContext(folder, "cpu", calibration=draw_calibration(sample, 300, 0)))
        with torch.inference_mode():
            predictions = [int(model(**encoding).logits.argmax()) for encoding in inputs.encodings]
        accuracy = sum(p == y for p, y in zip(predictions, inputs.labels, strict=True)) / len(predictions)
        print(f"{name}: {len(predictions)} samples, accuracy {accuracy:.4f}", flush=True)
        del model
        gc.collect()


if __name__ == "__main__":
    try:
        main()
    except QuantregError as exc:
        sys.exit(f"bare_passes.py: {exc}")
