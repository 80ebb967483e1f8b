"""Sanity of the FP32 reference: every verdict is a comparison with FP32, so a broken FP32 (an
untrained head, labels in another order than the data's, a tokenizer that is not the model's) makes
them all meaningless while they pass. Each check names its figure and the likely cause."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

MAX_UNKNOWN_SHARE = 0.2  # of the sample's tokens; a matching tokenizer leaves almost none unknown (0.0% on the example)
MIN_VOCABULARY_SHARE = 0.5  # of the embedding matrix's rows; checkpoints pad the matrix a little, never twofold
MIN_LABEL_SHARE = 0.1  # a label this common in the sample that FP32 never predicts


@dataclass(frozen=True)
class Tokens:
    """What the tokenizer made of the sample, and how many rows the model's embedding matrix has."""

    vocabulary: int
    embedding_rows: int | None
    unknown_share: float


def reference_problems(predictions: Sequence[int], labels: Sequence[int], class_names: Sequence[str], tokens: Tokens | None) -> list[str]:
    """What is wrong with FP32's predictions on the sample (empty when nothing is)."""
    problems = []
    counts = Counter(labels)
    accuracy = sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)
    common, common_count = counts.most_common(1)[0]
    if len(counts) > 1 and accuracy <= common_count / len(labels):
        problems.append(
            f"FP32 is right on {accuracy:.1%} of the sample, no better than always answering its most common label "
            f"{class_names[common]!r} ({common_count / len(labels):.1%}): the model is untrained, or its labels are in another "
            "order than the data's (id2label in config.json)"
        )
    predicted = set(predictions)
    for label, count in sorted(counts.items()):
        if label not in predicted and count / len(labels) >= MIN_LABEL_SHARE:
            problems.append(
                f"FP32 never predicts {class_names[label]!r}, {count / len(labels):.1%} of the sample: its classifier head was "
                "not trained for it, or the labels are in another order than the data's"
            )
    if tokens is not None and tokens.embedding_rows and tokens.vocabulary < MIN_VOCABULARY_SHARE * tokens.embedding_rows:
        problems.append(
            f"the tokenizer knows {tokens.vocabulary} tokens and the model's embedding matrix has {tokens.embedding_rows} rows: "
            "it is not the tokenizer the model was trained with (save the model's own tokenizer into the folder; "
            "transformers 5 builds a few-token vocabulary from BertTokenizerFast(vocab_file=...): pass vocab=...)"
        )
    if tokens is not None and tokens.unknown_share > MAX_UNKNOWN_SHARE:
        problems.append(
            f"{tokens.unknown_share:.1%} of the sample's tokens are the unknown token: the tokenizer does not match the model, "
            "or the texts are in a language or script it does not cover"
        )
    return problems
