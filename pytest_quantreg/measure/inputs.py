"""A tokenized sample, and the length-bucketed batches untimed passes may run in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from pytest_quantreg.measure.data import Sample


@dataclass(frozen=True)
class Inputs:
    """A tokenized sample: one encoding per example, batch size 1, no padding (``pad_id`` pads batches)."""

    ids: tuple[str, ...]
    labels: tuple[int, ...]
    encodings: tuple[dict[str, torch.Tensor], ...]
    pad_id: int = 0
    vocabulary: int | None = None  # the tokenizer's size
    unknown_share: float | None = None  # of the sample's tokens, those that are the unknown token

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> Inputs:
        if all(t.device == _as_device(device) for enc in self.encodings for t in enc.values()):
            return self
        moved = tuple({k: t.to(device) for k, t in enc.items()} for enc in self.encodings)
        return Inputs(self.ids, self.labels, moved, self.pad_id, self.vocabulary, self.unknown_share)


def tokenize(tokenizer: PreTrainedTokenizerBase, sample: Sample, max_length: int) -> Inputs:
    """Tokenize every example of the sample once (truncated to ``max_length``)."""
    encodings = tuple(dict(tokenizer(e.text, truncation=True, max_length=max_length, return_tensors="pt")) for e in sample.examples)
    tokens = [int(t) for encoding in encodings for t in encoding["input_ids"][0]]
    unknown = sum(t == tokenizer.unk_token_id for t in tokens) / len(tokens) if tokens and tokenizer.unk_token_id is not None else 0.0
    ids, labels = tuple(e.id for e in sample.examples), tuple(e.label for e in sample.examples)
    return Inputs(ids, labels, encodings, tokenizer.pad_token_id or 0, len(tokenizer), unknown)


def length_buckets(inputs: Inputs, batch_size: int) -> list[list[int]]:
    """Sample indices sorted by token count and cut into batches: each batch pads little."""
    order = sorted(range(len(inputs)), key=lambda i: (inputs.encodings[i]["input_ids"].shape[1], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def padded(inputs: Inputs, chunk: list[int]) -> dict[str, torch.Tensor]:
    """The encodings of ``chunk`` right-padded to the longest (``pad_id`` for ids, 0 for masks and types)."""
    import torch

    width = max(inputs.encodings[i]["input_ids"].shape[1] for i in chunk)
    batch = {}
    for key in inputs.encodings[chunk[0]]:
        value = inputs.pad_id if key == "input_ids" else 0
        rows = [inputs.encodings[i][key] for i in chunk]
        batch[key] = torch.cat([torch.nn.functional.pad(row, (0, width - row.shape[1]), value=value) for row in rows])
    return batch


def _as_device(device: torch.device | str) -> torch.device:
    import torch

    return torch.device(device)
