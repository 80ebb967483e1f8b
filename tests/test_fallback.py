"""Sensitivity and fallback search: which units cause a precision's drop, and which to keep in FP32 to pass.

The tiny project's ``corrupt-one`` precision is int8-dynamic with noise added to exactly one unit
(``bert.encoder.layer.1.output.dense``) unless that unit is kept in FP32: its 28 flips of 60 fail the
10% flip gate, and int8's own 3 flips pass it. On the example, int8-dynamic is held to 5% flips
(it flips 10.3%): the set found must make it pass in a fresh run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from custom_precisions import CUSTOM_PRECISIONS
from outcomes import assert_verdicts
from projects import record_baseline, run_example

from pytest_quantreg.backends.base import BuildContext
from pytest_quantreg.backends.onnx_weights import onnx_nodes
from pytest_quantreg.backends.registry import builtin_registry, keep_settings
from pytest_quantreg.fallback.probe import Budget, BudgetExhausted, Probe, rebuilding, swapping
from pytest_quantreg.fallback.units import model_units, set_change
from pytest_quantreg.measure.inputs import tokenize
from pytest_quantreg.measure.loading import known_noise_filtered, load_tokenizer

CORRUPTED = "bert.encoder.layer.1.output.dense"


@pytest.fixture
def project(quantreg_pytester: pytest.Pytester) -> pytest.Pytester:
    """The tiny project with the test-only precisions and a recorded FP32 baseline."""
    quantreg_pytester.makeconftest(CUSTOM_PRECISIONS)
    record_baseline(quantreg_pytester)
    return quantreg_pytester


def fallback_report(project: pytest.Pytester, name: str = "fallback.json") -> dict[str, dict]:
    data = json.loads((project.path / name).read_text(encoding="utf-8"))
    return {entry["precision"]: entry for entry in data["precisions"]}


# -- units and restoring them ------------------------------------------------------------------------


def test_units_group_query_key_value_and_name_keep_tokens() -> None:
    from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

    with torch.device("meta"):
        bert = BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128))
        distil = DistilBertForSequenceClassification(DistilBertConfig(dim=64, n_layers=1, n_heads=2, hidden_dim=128))
    units = model_units(bert, kept=["classifier"])
    assert [u.name for u in units[:4]] == [
        "bert.encoder.layer.0.attention.self",
        "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.0.intermediate.dense",
        "bert.encoder.layer.0.output.dense",
    ]
    assert units[0].layers == tuple(f"bert.encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value"))
    assert units[0].parameters == 3 * (64 * 64 + 64)
    assert units[-1].name == "bert.pooler.dense"
    assert len(units) == 9  # the head kept: 2 blocks x 4 units + the pooler
    # DistilBERT's q/k/v share their module with the output projection: the unit names its layers
    attention = model_units(distil)[0]
    assert attention.name == "distilbert.transformer.layer.0.attention.{q_lin,k_lin,v_lin}"
    assert attention.tokens == attention.layers
    assert len(attention.layers) == 3
    assert model_units(distil)[-1].name == "classifier"


def test_settings_and_changes_are_written_for_each_backend() -> None:
    pasted = keep_settings(("head", "bert.pooler"), ("classifier", "bert.pooler.dense"))
    assert pasted["pytest-quantreg"] == "--quantreg-keep-fp32=head,bert.pooler"
    assert "llm_int8_skip_modules=['bert.pooler.dense', 'classifier']" in pasted["bitsandbytes"]
    assert "fqn not in keep" in pasted["torchao"]
    assert onnx_nodes("bert.encoder.layer.0.output.dense") == (
        "/bert/encoder/layer.0/output/dense/MatMul",
        "/bert/encoder/layer.0/output/dense/Gemm",
        "/bert/encoder/layer.0/output/dense/Gemm_MatMul",
    )
    assert set_change(["a", "b"], ["a", "b"]) is None
    assert set_change(["a"], ["a", "c"]) == "grew from 1 to 2 units; new: c"
    assert set_change(["a", "b"], ["c"]) == "shrank from 2 to 1 unit; new: c; left: a, b"


@known_noise_filtered()
def test_restoring_by_swapping_modules_equals_rebuilding_with_them_kept(tiny_model_dir: Path, tiny_dataset: Path) -> None:
    """The search swaps FP32 modules into the one quantized model; that must be the model the
    precision builds with those layers kept in FP32."""
    from pytest_quantreg.measure.data import draw_sample, load_file, parse_sample_spec

    int8 = builtin_registry()["int8-dynamic"]
    kept = ("classifier",)
    quantized = int8.build(BuildContext(tiny_model_dir, "cpu", keep_fp32=kept))
    fp32 = builtin_registry()["fp32"].build(BuildContext(tiny_model_dir, "cpu"))
    sample = draw_sample(load_file(tiny_dataset, ("negative", "positive"), "text", "label"), parse_sample_spec("all"), 0)
    inputs = tokenize(load_tokenizer(tiny_model_dir), sample, 64)
    unit = frozenset([CORRUPTED, "bert.encoder.layer.0.attention.self.query"])
    swapped = Probe(swapping(quantized, fp32), inputs, Budget(10_000, 600))
    rebuilt = Probe(
        rebuilding(lambda extra: int8.build(BuildContext(tiny_model_dir, "cpu", keep_fp32=(*kept, *extra)))), inputs, Budget(10_000, 600)
    )
    indices = range(len(inputs))
    restored = swapped.logits(unit, indices)
    assert torch.allclose(torch.from_numpy(restored), torch.from_numpy(rebuilt.logits(unit, indices)), atol=1e-5)
    assert not torch.allclose(torch.from_numpy(restored), torch.from_numpy(swapped.logits(frozenset(), indices)), atol=1e-3)
    assert "quantized" in type(quantized.get_submodule(CORRUPTED)).__module__  # swapped back
    assert swapped.budget.used == 2 * len(inputs)  # each sample once per set: the rows are cached
    with pytest.raises(BudgetExhausted, match="budget of 5 forward passes"):
        Probe(swapping(quantized, fp32), inputs, Budget(5, 600)).logits(unit, indices)


# -- the search in a test run ------------------------------------------------------------------------


def test_the_corrupted_unit_is_ranked_first_and_is_the_whole_set(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--precision=fp32,corrupt-one", "--quantreg-fallback=report", "--quantreg-fallback-report=fallback.json", "-k", "accuracy"
    )
    assert_verdicts(result, passed=1, failed=1)  # report: the precision still fails, and says what would pass
    result.stdout.fnmatch_lines(
        [
            "*corrupt-one regressed against FP32*",
            f"*fallback search: fails its gates; keeping 1 unit in FP32 passes on both halves (found); "
            f"apply it with --quantreg-keep-fp32=head,{CORRUPTED}*",
            "*QUANTREG FALLBACK*",
            f"*1 | {CORRUPTED} *",
            f"*paste: --quantreg-keep-fp32=head,{CORRUPTED}",
            "*torch.ao quantize_dynamic: keep = *",
        ]
    )
    found = fallback_report(project)["corrupt-one"]
    assert found["units"] == [CORRUPTED]
    assert found["passes"]
    assert found["needed"]
    ranked = found["sensitivity"]["units"]
    assert ranked[0]["unit"] == CORRUPTED
    assert ranked[0]["kl_recovered"] > 0.9
    assert all(u["kl_recovered"] < 0.5 for u in ranked[1:])
    assert ranked[0]["min_snr_db"] < 0 < min(u["min_snr_db"] for u in ranked[1:])  # weight error beside output impact
    assert found["confirmed"]["part"] == "held-out"
    assert found["confirmed"]["n"] + found["found"]["n"] == 60
    assert 0 < found["cost"]["forward_passes"] < 20 * 60
    assert "CORRUPT-ONE[FALLBACK]" in result.stdout.str()  # the precision with its set applied, in the table


def test_enforce_judges_the_precision_with_its_set_and_the_marker_caps_it(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_capped=textwrap.dedent(
            """
            import pytest

            @pytest.mark.quantreg(precisions=["corrupt-one"], max_fp32_units=0)
            def test_nothing_in_fp32(quantreg):
                quantreg.check_accuracy()
            """
        )
    )
    result = project.runpytest("--precision=fp32,corrupt-one", "--quantreg-fallback=enforce", "-k", "accuracy or nothing")
    assert_verdicts(result, passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_nothing_in_fp32*",
            "*fallback search: fails its gates; the search stopped: the quantreg marker allows at most 0 units in FP32*",
            "*FAILED test_capped.py::test_nothing_in_fp32[[]corrupt-one[]]*",
        ]
    )
    assert "FAILED test_regression.py" not in result.stdout.str()


def test_the_fixture_ranks_a_passing_precision_without_searching(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_ranking=textwrap.dedent(
            """
            import pytest

            @pytest.mark.quantreg(precisions=["int8-dynamic", "corrupt-one"])
            def test_ranking(quantreg_fallback, quantreg_precision):
                ranked = [effect.unit.name for effect in quantreg_fallback.sensitivity.effects]
                assert len(ranked) == 9
                if quantreg_precision == "int8-dynamic":
                    assert not quantreg_fallback.needed and quantreg_fallback.units == ()
                else:
                    assert ranked[0] == "bert.encoder.layer.1.output.dense"
                    assert [u.name for u in quantreg_fallback.units] == ranked[:1] and quantreg_fallback.passes
            """
        )
    )
    assert_verdicts(project.runpytest("--precision=fp32,int8-dynamic,corrupt-one", "-k", "ranking"), passed=2)
    # report mode searches failing precisions only: int8-dynamic passes, so nothing is searched or shown
    result = project.runpytest("--precision=fp32,int8-dynamic", "--quantreg-fallback=report", "-k", "not ranking")
    assert_verdicts(result, passed=4)
    assert "QUANTREG FALLBACK" not in result.stdout.str()


def test_an_exhausted_budget_reports_the_best_set_so_far(project: pytest.Pytester) -> None:
    # each unit's effect takes 30 passes (the whole search half): 200 passes rank 6 of the 9 units,
    # which leaves the corrupted one (8th in model order) unmeasured and no passes for a set of two
    result = project.runpytest(
        "--precision=fp32,corrupt-one",
        "--quantreg-fallback=report",
        "--quantreg-fallback-max-passes=200",
        "--quantreg-fallback-report=fallback.json",
        "-k",
        "accuracy",
    )
    assert_verdicts(result, passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the search stopped: its budget of 200 forward passes (--quantreg-fallback-max-passes) ran out before any set passed*",
            "*ranking incomplete: its budget of 200 forward passes*",
        ]
    )
    found = fallback_report(project)["corrupt-one"]
    assert not found["passes"]
    assert found["cost"]["forward_passes"] <= 200
    assert len(found["sensitivity"]["units"]) == 6
    assert CORRUPTED not in [u["unit"] for u in found["sensitivity"]["units"]]
    assert len(found["units"]) == 1  # the best set so far: the first one tried


def test_the_stored_set_is_checked_first_and_a_change_is_reported(project: pytest.Pytester) -> None:
    args = ("--precision=fp32,corrupt-one", "--quantreg-fallback=enforce", "--quantreg-fallback-report=fallback.json", "-k", "accuracy")
    stored = project.runpytest(*args, "--quantreg-update-baselines")
    assert_verdicts(stored, passed=2)
    stored.stdout.fnmatch_lines(["*quantreg: fallback sets of corrupt-one stored in *"])
    (path,) = (project.path / "baselines").glob("*.json")
    baseline = json.loads(path.read_text(encoding="utf-8"))
    assert baseline["fallback_sets"]["corrupt-one"]["units"] == [CORRUPTED]

    again = project.runpytest(*args)
    assert_verdicts(again, passed=2)
    again.stdout.fnmatch_lines(
        ["*the set stored with the baseline still passes*", "*against the baseline: the stored set (1 unit) still passes*"]
    )
    assert fallback_report(project)["corrupt-one"]["cost"]["forward_passes"] == 60  # one pass: each half once

    baseline["fallback_sets"]["corrupt-one"]["units"] = ["bert.pooler.dense"]
    path.write_text(json.dumps(baseline), encoding="utf-8")
    changed = project.runpytest(*args)
    assert_verdicts(changed, passed=2)
    changed.stdout.fnmatch_lines(
        [f"*against the baseline: the set stored with the baseline no longer passes; new: {CORRUPTED}; left: bert.pooler.dense*"]
    )
    assert json.loads(path.read_text(encoding="utf-8"))["fallback_sets"]["corrupt-one"]["units"] == [
        "bert.pooler.dense"
    ]  # not asked to write


def test_compare_shows_the_fallback_set_change(project: pytest.Pytester) -> None:
    args = ("--precision=fp32,corrupt-one", "--quantreg-fallback=report")
    assert_verdicts(project.runpytest(*args, "--benchmark-json=head.json"), passed=3, failed=1)
    head = json.loads((project.path / "head.json").read_text(encoding="utf-8"))
    infos = {b["extra_info"]["precision"]: b["extra_info"] for b in head["benchmarks"]}
    assert infos["corrupt-one"]["fallback_units"] == [CORRUPTED]  # added by the accuracy test after the timed one
    for bench in head["benchmarks"]:
        if bench["extra_info"]["precision"] == "corrupt-one":
            bench["extra_info"]["fallback_units"] = ["bert.pooler.dense"]
    (project.path / "base.json").write_text(json.dumps(head), encoding="utf-8")
    command = [sys.executable, "-m", "pytest_quantreg", "compare", "base.json", "head.json"]
    result = subprocess.run(command, cwd=project.path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"note: corrupt-one: its fallback set (units kept in FP32 to pass) new: {CORRUPTED}; left: bert.pooler.dense" in result.stdout


def test_under_xdist_the_controller_reports_and_writes_the_workers_searches(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess(
        "--precision=fp32,corrupt-one",
        "--quantreg-fallback=report",
        "--quantreg-fallback-report=fallback.json",
        "-n",
        "2",
        "-k",
        "accuracy",
    )
    assert_verdicts(result, passed=1, failed=1)
    result.stdout.fnmatch_lines(["*QUANTREG FALLBACK*", f"*1 | {CORRUPTED} *", "*quantreg: fallback report written: *fallback.json"])
    assert fallback_report(project)["corrupt-one"]["units"] == [CORRUPTED]
    assert "CORRUPT-ONE[FALLBACK]" in result.stdout.str()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--quantreg-fallback=sometimes", "--quantreg-fallback: 'sometimes' is not one of off, report, enforce"),
        ("--quantreg-fallback-max-passes=0", "--quantreg-fallback-max-passes: 0 is below the minimum 1"),
        ("--quantreg-fallback-max-seconds=-5", "--quantreg-fallback-max-seconds: '-5' is not a positive number of seconds"),
        ("--quantreg-fallback-headroom=100", "--quantreg-fallback-headroom: '100' is not a percentage from 0 up to (not including) 100"),
    ],
)
def test_bad_fallback_options_are_usage_errors(quantreg_pytester: pytest.Pytester, option: str, message: str) -> None:
    result = quantreg_pytester.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_a_bad_cap_names_the_marker_argument(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_capped=textwrap.dedent(
            """
            import pytest

            @pytest.mark.quantreg(max_fp32_units="two")
            def test_capped(quantreg):
                quantreg.check_accuracy()
            """
        )
    )
    result = project.runpytest("--precision=corrupt-one", "-k", "capped")
    assert_verdicts(result, errors=1)  # a collection error, as for the marker's other arguments
    result.stdout.fnmatch_lines(["*quantreg marker max_fp32_units must be a whole number of units, 0 or more; got 'two'*"])


def test_a_search_without_a_baseline_says_how_to_record_one(quantreg_pytester: pytest.Pytester) -> None:
    quantreg_pytester.makeconftest(CUSTOM_PRECISIONS)
    quantreg_pytester.makepyfile(test_fixture="def test_ranking(quantreg_fallback):\n    pass\n")
    result = quantreg_pytester.runpytest("--precision=corrupt-one", "-k", "ranking")
    assert_verdicts(result, errors=1)  # the fixture cannot be set up
    result.stdout.fnmatch_lines(["*the fallback search judges corrupt-one against the stored FP32 baseline*--quantreg-update-baselines*"])


# -- the example ------------------------------------------------------------------------------------


def test_on_the_example_the_set_found_makes_int8_dynamic_pass_in_a_fresh_run(tmp_path: Path) -> None:
    gate = "--quantreg-max-flip-rate=int8-dynamic=5"  # int8-dynamic flips 10.3% of the example's predictions
    base = ("--precision=fp32,int8-dynamic", gate)
    report = tmp_path / "fallback.json"
    searched = run_example(*base, "--quantreg-fallback=report", f"--quantreg-fallback-report={report}", "-k", "accuracy")
    assert searched.returncode == 1, searched.stdout[-4000:]
    assert "QUANTREG FALLBACK" in searched.stdout
    assert "1 failed, 1 passed" in searched.stdout
    found = json.loads(report.read_text(encoding="utf-8"))["precisions"][0]
    assert found["precision"] == "int8-dynamic"
    assert found["passes"], found
    assert 0 < len(found["units"]) <= 3
    assert found["set_share"] < 0.2
    option = found["settings"]["pytest-quantreg"]
    fresh = run_example(*base, option, "-k", "accuracy")  # the gate the set is for
    assert fresh.returncode == 0, fresh.stdout[-4000:]
    assert "2 passed" in fresh.stdout
