"""Target 7: the throughput mode (``--quantreg-batch-size``) against batch size 1 on the example.

For fp32 and int8-dynamic: the wall time of one untimed pass over the 387 samples at batch size 1
and in length-bucketed batches of 8 and 32 (median of three, in turn), the speed-up, the share
of padded tokens (bucketed and, for comparison, in sample order), and the agreement of the
batched predictions with batch size 1 (torch's dynamic int8 computes activation scales per batch,
so a sample's prediction may depend on its batch-mates).

    .venv/bin/python benchmarks/throughput.py
"""

from __future__ import annotations

import statistics
import time

import torch

from pytest_quantreg.backends.base import BuildContext
from pytest_quantreg.backends.registry import builtin_registry
from pytest_quantreg.measure.data import draw_sample, load_embedded, parse_sample_spec
from pytest_quantreg.measure.evaluation import Measurement, measure
from pytest_quantreg.measure.example import example_model
from pytest_quantreg.measure.inputs import Inputs, length_buckets, tokenize
from pytest_quantreg.measure.loading import known_noise_filtered, load_tokenizer

SIZES = (1, 8, 32)


def padding_share(inputs: Inputs, batches: list[list[int]]) -> float:
    lengths = [enc["input_ids"].shape[1] for enc in inputs.encodings]
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(lengths) / padded


def main() -> None:
    torch.manual_seed(0)
    folder = example_model()
    inputs = tokenize(load_tokenizer(folder), draw_sample(load_embedded(), parse_sample_spec("all"), 0), 128)
    for size in SIZES[1:]:
        in_order = [list(range(len(inputs)))[s : s + size] for s in range(0, len(inputs), size)]
        print(
            f"batch {size}: padded tokens {padding_share(inputs, length_buckets(inputs, size)):.1%} length-bucketed, "
            f"{padding_share(inputs, in_order):.1%} in sample order"
        )
    registry = builtin_registry()
    for name in ("fp32", "int8-dynamic"):
        with known_noise_filtered():
            model = registry[name].build(BuildContext(folder, "cpu"))
            walls: dict[int, list[float]] = {size: [] for size in SIZES}
            results: dict[int, Measurement] = {}
            for _ in range(3):
                for size in SIZES:
                    start = time.perf_counter()
                    results[size] = measure(model, inputs, precision=name, size_mb=0.0, warmup=0, timed=False, batch_size=size)
                    walls[size].append(time.perf_counter() - start)
        single = results[1]
        for size in SIZES:
            result = results[size]
            same = sum(a == b for a, b in zip(result.predictions, single.predictions, strict=True))
            logit_change = max(abs(x - y) for a, b in zip(result.logits, single.logits, strict=True) for x, y in zip(a, b, strict=True))
            wall = statistics.median(walls[size])
            print(
                f"{name} batch {size:2d}: {wall:6.2f} s per pass, speed-up {statistics.median(walls[1]) / wall:5.2f}x, "
                f"accuracy {result.accuracy:.2%}, same prediction as batch 1 for {same}/{len(single.predictions)}, "
                f"max |logit change| {logit_change:.4f}"
            )


if __name__ == "__main__":
    main()
