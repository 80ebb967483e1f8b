"""One bare pass per precision: build the model (load + quantize), one inference pass over the
pre-tokenized sample, accuracy; nothing else. The reference that suite_cost.py compares with.

Models are built with the plugin's own build functions (the same ``from_pretrained`` and
quantization calls), so the difference measured is the harness around them.

    .venv/bin/python benchmarks/bare_passes.py fp32,fp16,...
"""

from __future__ import annotations

import gc
import sys

import torch

from pytest_quantreg.data import draw_sample, load_embedded, parse_sample_spec
from pytest_quantreg.evaluation import tokenize
from pytest_quantreg.example import example_model
from pytest_quantreg.models import load_tokenizer
from pytest_quantreg.precisions import BuildContext, builtin_registry


def main(names: list[str]) -> None:
    folder = example_model()
    sample = draw_sample(load_embedded(), parse_sample_spec("all"), 0)
    inputs = tokenize(load_tokenizer(folder), sample, 128)
    registry = builtin_registry()
    for name in names:
        model = registry[name].build(BuildContext(folder, "cpu"))
        with torch.inference_mode():
            predictions = [int(model(**encoding).logits.argmax()) for encoding in inputs.encodings]
        accuracy = sum(p == y for p, y in zip(predictions, inputs.labels, strict=True)) / len(predictions)
        print(f"{name}: accuracy {accuracy:.4f}", flush=True)
        del model
        gc.collect()


if __name__ == "__main__":
    main(sys.argv[1].split(","))
