"""The measurement pass: per-sample and length-bucketed batched passes on a real (tiny) model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_quantreg.data import draw_sample, load_file, parse_sample_spec
from pytest_quantreg.evaluation import Inputs, length_buckets, measure, spread, tokenize
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


def _recording(model: torch.nn.Module, name: str, calls: list[tuple[str, int]]) -> torch.nn.Module:
    """``model`` noting (name, first token count) on every forward: which model ran on which sample."""
    model.register_forward_pre_hook(lambda _, args, kwargs: calls.append((name, kwargs["input_ids"].shape[1])), with_kwargs=True)
    return model


@pytest.mark.parametrize("pairs", [6, 25, 60, 500])
def test_partner_is_timed_just_before_each_paired_sample(tiny_model_dir: Path, tiny_inputs: Inputs, pairs: int) -> None:
    calls: list[tuple[str, int]] = []
    model = _recording(load_classifier(tiny_model_dir), "model", calls)
    partner = _recording(load_classifier(tiny_model_dir), "fp32", calls)
    result = measure(model, tiny_inputs, precision="int8", size_mb=0.0, warmup=2, timed=True, partner=partner, pairs=pairs)
    paired = spread(len(tiny_inputs), pairs)
    assert len(set(paired)) == len(paired) == min(pairs, len(tiny_inputs))
    assert result.paired_s is not None
    assert len(result.paired_s) == len(paired)
    # the paired timings of this model are its own per-sample timings of those samples
    assert [mine for mine, _ in result.paired_s] == [result.latencies_s[i] for i in paired]
    timed_calls = calls[4:]  # after two warmup passes of each
    for index, length in enumerate(e["input_ids"].shape[1] for e in tiny_inputs.encodings):
        expected = [("fp32", length), ("model", length)] if index in paired else [("model", length)]
        assert timed_calls[: len(expected)] == expected, f"sample {index}"
        timed_calls = timed_calls[len(expected) :]
    assert timed_calls == []


def test_partner_timings_are_its_own(tiny_model_dir: Path, tiny_inputs: Inputs) -> None:
    """A partner doing four times the work shows it in the pairs: the ratio is model over partner."""
    from pytest_quantreg.stats import latency_ratio

    model = load_classifier(tiny_model_dir)
    partner = load_classifier(tiny_model_dir)
    forward = partner.forward

    def four_times(*args: object, **kwargs: object) -> object:
        for _ in range(3):
            forward(*args, **kwargs)
        return forward(*args, **kwargs)

    partner.forward = four_times  # type: ignore[method-assign]
    result = measure(model, tiny_inputs, precision="int8", size_mb=0.0, warmup=2, timed=True, partner=partner, pairs=60)
    ratio = latency_ratio(result.paired_s)
    assert ratio is not None
    assert ratio.n == 60
    assert ratio.ci95[1] < 0.6  # about 1/4


def test_untimed_and_unpartnered_passes_have_no_pairs(tiny_model_dir: Path, tiny_inputs: Inputs) -> None:
    model = load_classifier(tiny_model_dir)
    assert measure(model, tiny_inputs, precision="x", size_mb=0.0, warmup=0, timed=False, partner=model, pairs=10).paired_s is None
    assert measure(model, tiny_inputs, precision="x", size_mb=0.0, warmup=0, timed=True).paired_s is None
