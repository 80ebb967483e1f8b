"""Calibration texts for static quantization: never texts of the evaluation sample.

Static INT8 (a ``calibrated`` precision) fixes its activation ranges on
calibration texts. Judged on the texts it was calibrated on, a precision looks better than it
deploys, so the texts come from the data set's other examples (its training split, then the
evaluation examples the sample left out), label-stratified and seeded like the sample, or from a
separate file; either way a text of the sample is never one of them. Their hash goes into the
baseline's provenance and into the cache key of every model calibrated on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_quantreg.errors import NoCalibrationTexts, QuantregError
from pytest_quantreg.measure.data import Sample, dedup_key, digest, read_csv, read_jsonl, stratified, text_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

COUNT_OPTION = "--quantreg-calibration-samples"
FILE_OPTION = "--quantreg-calibration-file"


@dataclass(frozen=True)
class Calibration:
    """The calibration texts of a run, and where they came from."""

    texts: tuple[str, ...]
    source: str  # what the header says: "300 texts of the training split of tweets, stratified, seed 0"
    sha256: str  # of the texts' ids, in order
    overlap_dropped: int = 0  # texts of a calibration file left out because the evaluation sample has them

    def __len__(self) -> int:
        return len(self.texts)

    def encodings(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict[str, object]]:
        """Each text tokenized alone (batch 1, no padding, truncated as the sample is), as numpy arrays."""
        return [dict(tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")) for text in self.texts]


def draw_calibration(sample: Sample, count: int, seed: int) -> Calibration:
    """``count`` texts of the sample's data set that are not in the sample: label-stratified, ranked by a
    seeded hash of their ids (another ranking than the sample's), the training split first."""
    sampled = {e.id for e in sample.examples}
    dataset = sample.dataset
    train = [e for e in dataset.train if e.id not in sampled]
    rest = [e for e in dataset.eval if e.id not in sampled]
    pool = train if len(train) >= count else train + rest
    if not pool:
        raise NoCalibrationTexts(
            f"data set {dataset.name!r} leaves no texts for calibration: all {len(dataset.eval) + len(dataset.train)} are in the "
            f"evaluation sample, and calibrating on them would judge static INT8 on the texts it was fitted to; evaluate fewer "
            f"(e.g. --quantreg-samples={max(1, len(sample) * 2 // 3)}) or pass calibration texts with {FILE_OPTION}=FILE"
        )
    chosen = stratified(pool, min(count, len(pool)), f"calibration:{seed}:")
    where = "training split" if pool is train else ("examples outside the sample" if not train else "training split and unsampled examples")
    source = f"{len(chosen)} texts of the {where} of {dataset.name}, stratified, seed {seed}"
    if len(chosen) < count:
        source += f" (asked for {count}: the data set has no more outside the sample)"
    return Calibration(tuple(e.text for e in chosen), source, digest((e.id,) for e in chosen))


def load_calibration(path: Path, text_column: str, sample: Sample, count: int) -> Calibration:
    """The first ``count`` texts of a CSV or JSON Lines file (column ``text_column``; labels not needed),
    as given; duplicates (ignoring whitespace) and the evaluation sample's texts left out."""
    if not path.is_file():
        raise QuantregError(f"{FILE_OPTION}: {path} does not exist; pass an existing .csv or .jsonl file of texts")
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".jsonl", ".ndjson"}:
        raise QuantregError(f"{FILE_OPTION}: {path} is neither .csv nor .jsonl; convert it to one of those")
    records = read_csv(path) if suffix == ".csv" else read_jsonl(path)
    sampled = {e.id for e in sample.examples}
    texts: dict[str, str] = {}
    dropped = 0
    for line, record in records:
        text = record.get(text_column)
        if not isinstance(text, str):
            raise QuantregError(
                f"{path}, {'row' if suffix == '.csv' else 'line'} {line}: no text in column {text_column!r} "
                f"(found: {', '.join(map(str, record)) or 'none'}); name the column with --quantreg-text-column"
            )
        key = text_id(dedup_key(text))
        if key in sampled:
            dropped += 1
        elif text.strip() and key not in texts and len(texts) < count:
            texts[key] = text
    if not texts:
        raise NoCalibrationTexts(f"{FILE_OPTION}: {path} has no texts outside the evaluation sample; add texts the sample does not have")
    source = f"{len(texts)} texts of {path.name}"
    if dropped:
        source += f" ({dropped} left out: they are in the evaluation sample)"
    return Calibration(tuple(texts.values()), source, digest((key,) for key in texts), dropped)
