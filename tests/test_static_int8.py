"""OpenVINO precisions and calibrated static INT8 (ONNX Runtime's quantize_static, NNCF's quantize), on the
tiny model, with calibration texts that are never texts of the evaluation sample.

These precisions need the extras (``pip install 'pytest-quantreg[openvino,onnx]'``, which
``scripts/setup.sh`` installs); without them their tests skip with that command.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import random
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from outcomes import assert_verdicts
from projects import WORDS, record_baseline, tiny_texts
from test_backends import TINY_GATES, by_precision, weight_layers

from pytest_quantreg.backends.base import BuildContext
from pytest_quantreg.backends.registry import builtin_registry
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.measure.calibration import draw_calibration, load_calibration
from pytest_quantreg.measure.data import SampleSpec, draw_sample, load_embedded, load_file

EXTRAS = "pip install 'pytest-quantreg[openvino,onnx]'"
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason=f"the openvino extra is not installed: {EXTRAS}",
)
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason=f"the onnx extra is not installed: {EXTRAS}")
OPENVINO = ("openvino-fp32", "openvino-int8-weight", "openvino-int8-static")
STATIC = ("openvino-int8-static", "onnx-int8-static")
LABELS = ("negative", "positive")


def texts_file(path: Path, texts: list[str]) -> Path:
    """A CSV of texts with no labels: what a calibration file needs."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([text] for text in texts)
    return path


def other_texts(n: int = 80) -> list[str]:
    """Texts of the tiny model's words that are not the evaluation texts (another seed)."""
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


@pytest.fixture
def calibration_file(tmp_path: Path) -> Path:
    return texts_file(tmp_path / "calibration.csv", other_texts())


# -- the calibration split -----------------------------------------------------------------------------


def test_calibration_from_the_example_is_disjoint_stratified_and_seeded() -> None:
    tweets = load_embedded()
    sample = draw_sample(tweets, SampleSpec(), seed=0)
    calibration = draw_calibration(sample, 300, seed=0)
    assert len(calibration) == 300
    sampled = {e.text for e in sample.examples}
    assert not sampled & set(calibration.texts)  # never a text of the sample
    labels = {e.text: e.label for e in tweets.train}
    assert set(calibration.texts) <= set(labels)  # the training split is large enough
    share = Counter(labels[t] for t in calibration.texts)[1] / 300
    train_share = sum(e.label for e in tweets.train) / len(tweets.train)
    assert share == pytest.approx(train_share, abs=1 / 300)  # stratified by label
    assert draw_calibration(sample, 300, seed=0) == calibration  # reproducible
    assert draw_calibration(sample, 300, seed=1).sha256 != calibration.sha256
    assert "300 texts of the training split of tweets, stratified, seed 0" in calibration.source


def test_calibration_from_a_file_data_set_takes_the_texts_the_sample_left(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    rows = tiny_texts(60)
    with data.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "label"], *([text, LABELS[i % 2]] for i, text in enumerate(rows))])
    dataset = load_file(data, LABELS)
    sample = draw_sample(dataset, SampleSpec(fraction=Fraction(1, 2)), seed=0)
    calibration = draw_calibration(sample, 300, seed=0)
    assert len(calibration) == len(dataset.eval) - len(sample)
    assert not {e.text for e in sample.examples} & set(calibration.texts)
    assert "asked for 300" in calibration.source
    with pytest.raises(QuantregError, match=r"leaves no texts for calibration.*--quantreg-samples=\d+.*--quantreg-calibration-file"):
        draw_calibration(draw_sample(dataset, SampleSpec(), seed=0), 300, seed=0)


def test_a_calibration_file_leaves_out_the_samples_texts(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    rows = tiny_texts(20)
    with data.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "label"], *([text, LABELS[i % 2]] for i, text in enumerate(rows))])
    sample = draw_sample(load_file(data, LABELS), SampleSpec(), seed=0)
    spaced = "\n" + rows[5].replace(" ", "  ")  # a sampled text, but for its whitespace
    path = texts_file(tmp_path / "calibration.csv", [*rows[:5], spaced, *other_texts(10), other_texts(10)[0] + "\t", "a\n\nb"])
    calibration = load_calibration(path, "text", sample, 300)
    assert len(calibration) == 11  # the repeated text counts once, whatever its whitespace
    assert calibration.overlap_dropped == 6
    assert "a\n\nb" in calibration.texts  # as given
    assert not set(rows) & set(calibration.texts)
    assert len(load_calibration(path, "text", sample, 4)) == 4
    with pytest.raises(QuantregError, match="no text in column 'review'"):
        load_calibration(path, "review", sample, 300)
    with pytest.raises(QuantregError, match="does not exist"):
        load_calibration(tmp_path / "missing.csv", "text", sample, 300)
    only_sample = texts_file(tmp_path / "same.csv", rows)
    with pytest.raises(QuantregError, match="no texts outside the evaluation sample"):
        load_calibration(only_sample, "text", sample, 300)


# -- the precisions on the tiny model --------------------------------------------------------------------


@needs_openvino
@needs_onnx
def test_openvino_and_static_int8_end_to_end_on_the_tiny_model(quantreg_pytester: pytest.Pytester, calibration_file: Path) -> None:
    record_baseline(quantreg_pytester)
    names = (*OPENVINO, "onnx-int8-static")
    result = quantreg_pytester.runpytest(
        f"--precision=fp32,{','.join(names)}",
        f"--quantreg-calibration-file={calibration_file}",
        "--benchmark-json=bench.json",
        "--quantreg-weights-report=weights.json",
        *TINY_GATES,
    )
    assert_verdicts(result, passed=10)
    result.stdout.fnmatch_lines(
        [
            "quantreg calibration of openvino-int8-static, onnx-int8-static: 80 texts of calibration.csv, none of them in the sample*",
            "*OPENVINO-FP32 |*OPENVINO-INT8-WEIGHT |*OPENVINO-INT8-STATIC |*ONNX-INT8-STATIC |*",
        ]
    )
    bench = by_precision(quantreg_pytester.path / "bench.json")
    fp32_mb = bench["fp32"]["extra_info"]["size_mb"]
    for name in names:
        info = bench[name]["extra_info"]
        assert info.get("latency_pairs", 0) > 0 or info.get("latency_disturbed"), name  # timed back to back with FP32, unless busy
        assert info["kept_fp32"] == ["classifier"], name
        assert info["flip_rate"] <= 0.1, name
    assert bench["openvino-fp32"]["extra_info"]["flip_rate"] == 0
    assert bench["openvino-fp32"]["extra_info"]["kl_mean"] < 1e-6  # inference precision f32: what FP32 computes
    assert bench["openvino-fp32"]["extra_info"]["size_mb"] == pytest.approx(fp32_mb, rel=0.25)  # the IR: weights, and a graph as large here
    for name in ("openvino-int8-weight", "openvino-int8-static", "onnx-int8-static"):
        assert bench[name]["extra_info"]["size_mb"] < 0.8 * fp32_mb, name

    layers = weight_layers(quantreg_pytester.path / "weights.json")
    dense = "bert.encoder.layer.0.output.dense"
    assert layers["openvino-fp32"][dense]["snr_db"] is None  # exact: written as null
    assert layers["openvino-int8-weight"][dense]["storage"] == "openvino int8 asymmetric per-channel"
    assert layers["openvino-int8-static"][dense]["storage"] == "openvino int8 symmetric per-channel"
    assert layers["onnx-int8-static"][dense]["storage"] == "onnxruntime int8 per-channel"
    for name in ("openvino-int8-weight", "openvino-int8-static", "onnx-int8-static"):
        assert "kept in FP32" in layers[name]["classifier"]["storage"], name
        for layer, row in layers[name].items():
            if layer != "classifier":  # int8 per channel of these weights (smoothing scales applied back for NNCF's)
                assert 25 < row["snr_db"] < 60, (name, layer)


@needs_openvino
@needs_onnx
def test_layers_kept_in_fp32_are_kept_by_nncf_and_static_onnx(quantreg_pytester: pytest.Pytester, calibration_file: Path) -> None:
    record_baseline(quantreg_pytester)
    kept = "bert.encoder.layer.1.output.dense"
    result = quantreg_pytester.runpytest(
        "--precision=openvino-int8-weight,openvino-int8-static,onnx-int8-static",
        f"--quantreg-calibration-file={calibration_file}",
        f"--quantreg-keep-fp32=head,{kept}",
        "--quantreg-weights-report=weights.json",
        *TINY_GATES,
        "-k",
        "accuracy",
    )
    assert_verdicts(result, passed=3)
    layers = weight_layers(quantreg_pytester.path / "weights.json")
    for name in ("openvino-int8-weight", "openvino-int8-static", "onnx-int8-static"):
        snr = layers[name][kept]["snr_db"]
        # FP32 weights: exactly, or (NNCF's SmoothQuant scales a kept layer too) up to float rounding
        assert snr is None or (name == "openvino-int8-static" and snr > 120), (name, snr)
        assert "kept in FP32" in layers[name][kept]["storage"], name
        assert layers[name]["bert.encoder.layer.0.output.dense"]["snr_db"] is not None, name  # its neighbour is quantized
    assert any(line.startswith("kept in FP32") and line.count(f"{kept}, classifier") == 3 for line in result.stdout.lines)


@needs_openvino
@needs_onnx
def test_static_builds_are_cached_per_calibration(
    bitsandbytes_imported: None, tiny_model_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_quantreg.backends import openvino, ort

    monkeypatch.setenv("QUANTREG_CACHE_DIR", str(tmp_path / "cache"))
    sample = draw_sample(load_file(tiny_dataset, LABELS), SampleSpec(), seed=0)
    first = load_calibration(texts_file(tmp_path / "a.csv", other_texts()), "text", sample, 300)
    second = load_calibration(texts_file(tmp_path / "b.csv", other_texts()[:40]), "text", sample, 300)

    def built(calibration: object) -> tuple[Path, Path]:
        ctx = BuildContext(tiny_model_dir, "cpu", keep_fp32=("classifier",), calibration=calibration, max_length=64)  # type: ignore[arg-type]
        return openvino.classifier(ctx, "int8-static").path, ort.classifier(ctx, "int8-static").path

    paths = built(first)
    stamps = [path.stat().st_mtime_ns for path in paths]
    assert built(first) == paths  # a cache hit: the same files, not written again
    assert [path.stat().st_mtime_ns for path in paths] == stamps
    other = built(second)
    assert all(a != b for a, b in zip(paths, other, strict=True))  # other calibration texts: another cache entry
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "openvino").iterdir() if not p.name.endswith(".lock")) == [
        "fp32",
        "int8",
        "int8",
    ]


BROKEN = {
    "one text repeated": [other_texts(1)[0]] * 50,
    "another language": [f"zzq{i} xxv{i} qqy{i}" for i in range(50)],  # words the tokenizer does not know: all [UNK]
    "one word repeated": ["w1"] * 50,
}


@needs_openvino
@needs_onnx
@pytest.mark.parametrize(
    ("precision", "broken"),
    [
        ("openvino-int8-static", "one text repeated"),
        ("openvino-int8-static", "another language"),
        ("onnx-int8-static", "one word repeated"),
    ],
)
def test_a_broken_calibration_shows_in_the_gates(quantreg_pytester: pytest.Pytester, tmp_path: Path, precision: str, broken: str) -> None:
    """Ranges fitted on texts unlike the evaluation texts clip their activations. Measured on the tiny model
    (flips of 60): NNCF 2 with good texts, 22 with one text repeated, 26 with unknown words; ONNX Runtime,
    whose MinMax ranges are averaged over the texts, 1, 1 and 3, and 14 with a one-word text repeated."""
    record_baseline(quantreg_pytester)
    runs = {}
    for name, texts in (("good", other_texts()), ("bad", BROKEN[broken])):
        calibration = texts_file(tmp_path / f"{name}.csv", texts)
        runs[name] = quantreg_pytester.runpytest(
            f"--precision={precision}", f"--quantreg-calibration-file={calibration}", *TINY_GATES, "-k", "accuracy"
        )
    assert_verdicts(runs["good"], passed=1)
    assert_verdicts(runs["bad"], failed=1)
    runs["bad"].stdout.fnmatch_lines(["*flip rate * > max 10.00% (command line: --quantreg-max-flip-rate)"])


@needs_onnx
def test_static_precisions_without_calibration_texts_are_skipped_with_the_ways_out(quantreg_pytester: pytest.Pytester) -> None:
    """The tiny project evaluates all of its 60 texts: none are left to calibrate on. That is the data's
    property, not a regression: skipped with both ways out, while the other precisions run."""
    record_baseline(quantreg_pytester)
    result = quantreg_pytester.runpytest("--precision=fp32,onnx-int8-static", "-k", "accuracy", "-rs")
    assert_verdicts(result, passed=1, skipped=1)
    result.stdout.fnmatch_lines(["quantreg calibration: data set 'tiny.csv' leaves no texts for calibration*will be skipped"])
    result.stdout.fnmatch_lines(
        ["SKIPPED*onnx-int8-static: data set 'tiny.csv' leaves no texts for calibration*--quantreg-samples=*--quantreg-calibration-file=*"]
    )
    assert "Traceback" not in result.stdout.str()


def test_missing_openvino_extra_says_how_to_install_it() -> None:
    registry = builtin_registry()
    for name in OPENVINO:
        missing = dataclasses.replace(registry[name], requires=("no_such_module_xyz",))
        assert "pip install 'pytest-quantreg[openvino]'" in (missing.unavailable_reason("cpu") or "")
        assert registry[name].unavailable_reason("cuda") == f"{name} does not run on cuda (runs on: cpu)"
    assert [name for name in registry.names() if registry[name].calibrated] == ["onnx-int8-static", "openvino-int8-static"]


@needs_openvino
def test_openvino_restores_layers_to_fp32_as_a_rebuild_keeping_them_would(
    bitsandbytes_imported: None, tiny_model_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback search's cheap trials: layers restored in the quantized IR (SmoothQuant's scales undone)
    compute what NNCF's build keeping them in FP32 computes, and the size grows by their FP32 weights (an
    estimate: the rebuilt IR also drops their quantizers' constants, which on a model this small weigh as much)."""
    import torch

    from pytest_quantreg.backends import openvino
    from pytest_quantreg.measure.loading import load_classifier, load_tokenizer
    from pytest_quantreg.measure.weights import linear_weights

    monkeypatch.setenv("QUANTREG_CACHE_DIR", str(tmp_path / "cache"))
    sample = draw_sample(load_file(tiny_dataset, LABELS), SampleSpec(), seed=0)
    calibration = load_calibration(texts_file(tmp_path / "a.csv", other_texts()), "text", sample, 300)

    def context(*kept: str) -> BuildContext:
        return BuildContext(tiny_model_dir, "cpu", keep_fp32=("classifier", *kept), calibration=calibration, max_length=64)

    static = openvino.classifier(context(), "int8-static")
    weights = linear_weights(load_classifier(tiny_model_dir))
    tokenizer = load_tokenizer(tiny_model_dir)
    encodings = [dict(tokenizer(text, return_tensors="pt")) for text in tiny_texts(20)]

    def logits(model: openvino.OpenVinoClassifier) -> torch.Tensor:
        return torch.cat([model(**e).logits for e in encodings])

    quantized = logits(static)
    for layers in (["bert.encoder.layer.0.output.dense"], [name for name in weights if name != "classifier"]):
        restored = static.with_fp32(layers, weights)
        rebuilt = openvino.classifier(context(*layers), "int8-static")
        assert (logits(restored) - quantized).abs().max() > 1e-3  # restoring changes the logits ...
        assert (logits(restored) - logits(rebuilt)).abs().max() < 1e-4  # ... to what the rebuild gives
        assert restored.kept_in_fp32(list(weights)) == (*layers, "classifier")
        added = sum(3 * weights[name].numel() for name in layers) / 2**20
        assert restored.size_mb() == pytest.approx(static.size_mb() + added)
