"""Per-class metrics and the metric gate: figures against scikit-learn and by hand, a one-class drift
on a 3-label imbalanced data set caught by macro-F1 and class recall while accuracy passes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from outcomes import assert_verdicts
from projects import EXAMPLE_TESTS, labelled_csv, lenient_project, record_baseline, save_tiny, tiny_logits, tiny_model, tiny_texts
from sklearn.metrics import f1_score, recall_score

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.metrics import ACCURACY_METRIC, check_sample, class_metrics, flips_by_class, paired_drop, parse_metric
from pytest_quantreg.measure.data import CleaningReport, Dataset, Example, SampleSpec, draw_sample

LABELS = ["neutral", "negative", "positive"]
TRUTH = [0, 0, 0, 0, 1, 1, 2, 2, 2, 0]
FP32 = [0, 0, 0, 0, 1, 1, 2, 2, 1, 0]
MINE = [0, 0, 0, 0, 0, 1, 0, 2, 1, 0]  # drifts toward class 0


def test_per_class_figures_by_hand() -> None:
    found = class_metrics(TRUTH, MINE, LABELS)
    assert found.support == (5, 2, 3)
    assert found.recall == pytest.approx((5 / 5, 1 / 2, 1 / 3))
    assert found.precision == pytest.approx((5 / 7, 1 / 2, 1 / 1))
    f1 = [2 * p * r / (p + r) for p, r in zip(found.precision, found.recall, strict=True)]
    assert found.f1 == pytest.approx(f1)
    assert found.macro_f1 == pytest.approx(sum(f1) / 3)
    assert found.weighted_f1 == pytest.approx((5 * f1[0] + 2 * f1[1] + 3 * f1[2]) / 10)
    assert found.confusion == ((5, 0, 0), (1, 1, 0), (1, 1, 1))  # rows: true class
    assert found.to_json()["per_class"]["negative"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}


@pytest.mark.parametrize("spec", ["macro-f1", "weighted-f1", "recall:positive", "precision:neutral", "f1:negative", "accuracy"])
def test_paired_drop_point_is_sklearns_difference_and_inside_its_interval(spec: str) -> None:
    metric = parse_metric(spec, LABELS)
    drop, (low, high), p_worse = paired_drop(metric, TRUTH, FP32, MINE, 3)
    value = {
        "macro-f1": lambda y: f1_score(TRUTH, y, average="macro"),
        "weighted-f1": lambda y: f1_score(TRUTH, y, average="weighted"),
        "recall:positive": lambda y: recall_score(TRUTH, y, labels=[2], average=None)[0],
        "precision:neutral": lambda y: class_metrics(TRUTH, y, LABELS).precision[0],
        "f1:negative": lambda y: f1_score(TRUTH, y, labels=[1], average=None)[0],
        "accuracy": lambda y: float(np.mean(np.asarray(TRUTH) == np.asarray(y))),
    }[spec]
    assert drop == pytest.approx((value(FP32) - value(MINE)) * 100)
    assert low <= drop <= high
    assert 0 <= p_worse <= 1
    same = paired_drop(metric, TRUTH, FP32, FP32, 3)
    assert same == (0.0, (0.0, 0.0), 1.0)  # no difference in any resample


def test_a_real_drop_is_significant_and_none_is_not() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 300).tolist()
    drifted = [0 if t == 2 and i % 2 else t for i, t in enumerate(truth)]  # half of class 2 moves to class 0
    metric = parse_metric("recall:positive", LABELS)
    drop, (low, _), p_worse = paired_drop(metric, truth, truth, drifted, 3)
    assert drop == pytest.approx(100 * sum(1 for i, t in enumerate(truth) if t == 2 and i % 2) / truth.count(2))
    assert low > 30
    assert p_worse < 0.001


def test_metric_names_and_mistakes() -> None:
    assert parse_metric("Macro-F1", LABELS).name == "macro-F1"
    assert parse_metric("recall:positive", LABELS).name == "recall of 'positive'"
    assert parse_metric("recall:positive", LABELS).label == 2
    assert parse_metric("accuracy", LABELS) == ACCURACY_METRIC
    with pytest.raises(QuantregError, match="the model has no class 'happy'; its classes are neutral, negative, positive"):
        parse_metric("recall:happy", LABELS)
    with pytest.raises(QuantregError, match="--quantreg-metric=f2 is not a metric; use accuracy, macro-f1, weighted-f1"):
        parse_metric("f2", LABELS)
    with pytest.raises(QuantregError, match="the sample has no example of class 'positive'"):
        check_sample(parse_metric("recall:positive", LABELS), [0, 1, 1], LABELS)


def test_flips_by_class_name_the_drift() -> None:
    assert flips_by_class(FP32, MINE, LABELS) == {"negative -> neutral": 1, "positive -> neutral": 1}


def test_stratified_sample_keeps_a_rare_class() -> None:
    examples = tuple(Example(f"{i:04d}", f"text {i}", 2 if i == 7 else i % 2) for i in range(200))  # one example of class 2
    dataset = Dataset("rare", tuple(LABELS), (), examples, CleaningReport(200, 0, 0))
    sample = draw_sample(dataset, SampleSpec(fraction=Fraction(1, 20)), seed=0)
    assert len(sample) == 10
    assert sorted({e.label for e in sample.examples}) == [0, 1, 2]


# -- a 3-label, imbalanced project end to end -----------------------------------------------------

DRIFT = textwrap.dedent(
    """
    import json
    from pathlib import Path

    def _drift(ctx):
        # a "quantization" that pushes class 0's logit up: the first few minority predictions move to it
        push = json.loads((Path(ctx.model_dir) / "drift.json").read_text())["push"]
        model = ctx.load()
        forward = model.forward
        def pushed(*args, **kwargs):
            out = forward(*args, **kwargs)
            out["logits"][..., 0] += push
            return out
        model.forward = pushed
        return model

    def pytest_quantreg_precisions(registry):
        registry.register("drift", _drift, devices=["cpu"], max_drop=1.0)
    """
)


@pytest.fixture(scope="session")
def three_labels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A 3-label tiny model predicting class 0 for 70 of 100 texts (7 and 23 for the others), the CSV labelled with its own
    predictions, and the push on class 0's logit that moves exactly 5 minority predictions to class 0."""
    model, tokenizer = tiny_model(LABELS)
    texts = tiny_texts(100)
    logits = tiny_logits(model, tokenizer, texts)
    rival = logits[:, 1:].max(dim=1).values - logits[:, 0]
    model.classifier.bias.data[0] += float(rival.sort().values[69] + rival.sort().values[70]) / 2  # 70 texts on class 0
    folder = save_tiny(model, tokenizer, tmp_path_factory.mktemp("tiny-3"))
    logits = tiny_logits(model, tokenizer, texts)
    margins = (logits[:, 1:].max(dim=1).values - logits[:, 0]).sort().values
    minority = margins[margins > 0]
    push = float(minority[4] + minority[5]) / 2  # the 5 smallest minority margins flip
    predicted = logits.argmax(-1)
    moved = predicted[(logits[:, 1:].max(dim=1).values - logits[:, 0] > 0) & (logits[:, 1:].max(dim=1).values - logits[:, 0] < push)]
    info = {
        "push": push,
        "counts": np.bincount(predicted.numpy(), minlength=3).tolist(),
        "moved": np.bincount(moved.numpy(), minlength=3).tolist(),
    }
    (folder / "drift.json").write_text(json.dumps(info))
    return folder, labelled_csv(folder, texts, tmp_path_factory.mktemp("tiny-3-data") / "three.csv"), info


@pytest.fixture
def project(bitsandbytes_imported: None, pytester: pytest.Pytester, three_labels: tuple[Path, Path, dict]) -> pytest.Pytester:
    folder, data, _ = three_labels
    pytester.makeini(
        f"[pytest]\naddopts = -rfEs\nquantreg_model = {folder}\nquantreg_dataset = {data}\nquantreg_device = cpu\nquantreg_warmup = 1\n"
        "quantreg_max_length = 64\nquantreg_max_latency_ratio = 1000\n"
    )
    pytester.makepyfile(test_regression=EXAMPLE_TESTS)
    pytester.makeconftest(DRIFT)
    record_baseline(pytester)
    return pytester


def test_the_data_set_is_imbalanced_and_the_drift_hits_minorities(three_labels: tuple[Path, Path, dict]) -> None:
    _, _, info = three_labels
    assert info["counts"][0] == 70
    assert min(info["counts"][1:]) >= 5
    assert sum(info["moved"]) == 5
    assert info["moved"][0] == 0


def test_one_class_drift_passes_accuracy_and_fails_macro_f1_and_class_recall(
    project: pytest.Pytester, three_labels: tuple[Path, Path, dict]
) -> None:
    _, _, info = three_labels
    hit = LABELS[int(np.argmax(info["moved"]))]
    args = ("--precision=drift", "-k", "accuracy", "--quantreg-max-drop=drift=6")
    assert_verdicts(project.runpytest(*args), passed=1)  # accuracy: 5 of 100 lost, under 6 points

    macro = project.runpytest(*args, "--quantreg-metric=macro-f1")
    assert_verdicts(macro, failed=1)
    macro.stdout.fnmatch_lines(
        [
            "*drift regressed against FP32: macro-F1 *% vs FP32 100.00%, accuracy 95.00% vs FP32 baseline 100.00% on 100 samples",
            "*- macro-F1 drop * pp > max 6.00 pp (command line: --quantreg-max-drop)",
            f"*predictions moved from FP32's class: {hit} -> neutral *",
            "*statistics: macro-F1 drop 95% CI [[]*, *] pp (bootstrap p *), accuracy drop 95% CI*",
        ]
    )
    recall = project.runpytest(*args, f"--quantreg-metric=recall:{hit}")
    assert_verdicts(recall, failed=1)
    recall.stdout.fnmatch_lines([f"*- recall of '{hit}' drop * pp > max 6.00 pp (command line: --quantreg-max-drop)"])

    significance = project.runpytest(*args, "--quantreg-metric=macro-f1", "--quantreg-alpha=0.05")
    assert_verdicts(significance, failed=1)  # 5 predictions of a 15-sample class: significant by the paired bootstrap

    usage = project.runpytest("--quantreg-metric=recall:happy")
    assert usage.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "--quantreg-metric=recall:happy: the model has no class 'happy'; its classes are neutral, negative, positive" in usage.stderr.str()
    )


def test_summary_json_report_and_compare_carry_the_class_figures(project: pytest.Pytester, three_labels: tuple[Path, Path, dict]) -> None:
    pytest.importorskip("matplotlib")
    clean = project.runpytest(
        "--precision=fp32,drift", "--benchmark-json=drift.json", "--quantreg-report=report", "--quantreg-max-drop=100"
    )
    assert_verdicts(clean, passed=4)
    clean.stdout.fnmatch_lines(["macro-F1 (%) * | * 100.00 | * | *", "recall by class (%) * | 100.0 / 100.0 / 100.0 | *"])
    infos = {b["extra_info"]["precision"]: b["extra_info"] for b in json.loads((project.path / "drift.json").read_text())["benchmarks"]}
    drift = infos["drift"]
    assert drift["per_class"]["neutral"]["recall"] == 1.0
    assert sum(drift["per_class"][name]["support"] for name in LABELS) == 100
    assert drift["macro_f1"] < infos["fp32"]["macro_f1"] == 1.0
    assert np.trace(np.asarray(drift["confusion_matrix"])) == 95
    assert sum(drift["flips_by_class"].values()) == 5
    assert all(move.endswith("-> neutral") for move in drift["flips_by_class"])
    report = (project.path / "report" / "report.md").read_text()
    assert "| true \\ predicted | neutral | negative | positive |" in report
    assert "### drift" in report

    base = json.loads((project.path / "drift.json").read_text())
    for bench in base["benchmarks"]:  # BASE: the same run, as if drift had kept every prediction
        bench["extra_info"]["macro_f1"] = 1.0
    (project.path / "base.json").write_text(json.dumps(base))
    command = [sys.executable, "-m", "pytest_quantreg", "compare", "base.json", "drift.json", "--fail-on", "macro-f1-drop=1"]
    compared = subprocess.run(command, cwd=project.path, capture_output=True, text=True)
    assert compared.returncode == 1, compared.stdout + compared.stderr
    assert "REGRESSION drift (cpu): macro-F1 100.00% ->" in compared.stdout
    assert "macro-F1 %" in compared.stdout.splitlines()[1]  # the table's header


def test_many_classes_are_named_worst_first_within_a_bounded_width(
    bitsandbytes_imported: None, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    names = [f"topic-{i:02d}" for i in range(27)]
    model, tokenizer = tiny_model(names)
    folder = save_tiny(model, tokenizer, tmp_path / "model-27")
    data = labelled_csv(folder, tiny_texts(120), tmp_path / "topics.csv")
    present = len({row.split(",")[-1] for row in data.read_text().splitlines()[1:]})
    assert 1 < present < 27  # some classes are absent from the sample
    lenient_project(pytester, folder, data)
    result = pytester.runpytest("--precision=fp32,int8")
    (row,) = [line for line in result.stdout.lines if line.startswith("recall by class")]
    cells = [cell.strip() for cell in row.split(" | ")[1:3]]
    fp32, int8 = cells
    assert fp32.startswith("topic-")
    assert fp32.endswith(f"(n/a: {27 - present} absent)")
    assert all(len(cell) <= 60 for cell in cells)
    worst = [float(item.rsplit(" ", 1)[1]) for item in int8.split(" (n/a")[0].split(", ") if item.startswith("topic-")]
    assert worst == sorted(worst)  # the worst classes first
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "QUANTIZATION COMPARISON SUMMARY" in line)
    table = lines[start + 1 : next(i for i, line in enumerate(lines) if line.startswith("paired statistics against"))]
    assert max(len(line) for line in table) < 200  # 27 recalls side by side made lines of 1,884 characters
