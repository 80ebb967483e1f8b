"""The measurement pass: per-sample and length-bucketed batched passes on a real (tiny) model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_quantreg.data import draw_sample, load_file, parse_sample_spec
from pytest_quantreg.evaluation import Inputs, length_buckets, measure, tokenize
from pytest_quantreg.models import load_classifier, load_tokenizer


@pytest.fixture(scope="module")
def tiny_inputs(tiny_model_dir: Path, tiny_dataset: Path) -> Inputs:
    sample = draw_sample(load_file(tiny_dataset, ("negative", "positive")), parse_sample_spec("all"), 0)
    return tokenize(load_tokenizer(tiny_model_dir), sample, 64)


def test_length_buckets_cover_every_sample_once_shortest_first(tiny_inputs: Inputs) -> None:
    batches = length_buckets(tiny_inputs, 8)
    assert sorted(i for batch in batches for i in batch) == list(range(len(tiny_inputs)))
    assert [len(b) for b in batches] == [8] * 7 + [4]
    lengths = [tiny_inputs.encodings[i]["input_ids"].shape[1] for batch in batches for i in batch]
    assert lengths == sorted(lengths)


@pytest.mark.parametrize("batch_size", [2, 8, 60, 1000])
def test_batched_pass_matches_batch_one_in_fp32(tiny_model_dir: Path, tiny_inputs: Inputs, batch_size: int) -> None:
    model = load_classifier(tiny_model_dir)
    single = measure(model, tiny_inputs, precision="fp32", size_mb=0.0, warmup=0, timed=False)
    batched = measure(model, tiny_inputs, precision="fp32", size_mb=0.0, warmup=0, timed=False, batch_size=batch_size)
    assert batched.predictions == single.predictions
    assert batched.batch_size == min(batch_size, len(tiny_inputs))
    assert batched.timer == f"not timed (batches of {batched.batch_size})"
    assert single.batch_size == 1
    # padding is masked out: the same logits up to float summation order
    assert max(abs(a - b) for x, y in zip(batched.logits, single.logits, strict=True) for a, b in zip(x, y, strict=True)) < 1e-4


def test_timed_passes_stay_per_sample(tiny_model_dir: Path, tiny_inputs: Inputs) -> None:
    model = load_classifier(tiny_model_dir)
    timed = measure(model, tiny_inputs, precision="fp32", size_mb=0.0, warmup=1, timed=True, batch_size=8)
    assert timed.batch_size == 1
    assert len(timed.latencies_s) == len(tiny_inputs)
