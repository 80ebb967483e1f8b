"""The regression gate: each precision judged against its own outcome recorded for this hardware class.

The tiny project lets int8-dynamic lose a quarter of its accuracy against FP32 (an untrained model's
int8 drifts far), so a build that changes two of its predictions passes every FP32-relative gate: only
its own record catches it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from custom_precisions import CUSTOM_PRECISIONS
from outcomes import assert_verdicts
from projects import record_baseline

ACCURACY = ("--precision=fp32,int8", "-k", "accuracy")


def _records(project: pytest.Pytester) -> tuple[Path, dict]:
    (baseline,) = (project.path / "baselines").glob("*.json")
    return baseline, json.loads(baseline.read_text())


def _recorded_project(project: pytest.Pytester) -> pytest.Pytester:
    project.makeconftest(CUSTOM_PRECISIONS)
    record_baseline(project)
    result = project.runpytest(*ACCURACY, "--quantreg-record")
    assert_verdicts(result, passed=2)
    result.stdout.fnmatch_lines(["quantreg: outcomes recorded for cpu | *: int8-dynamic in *.json; later runs on this hardware class*"])
    return project


def test_a_recorded_precision_passes_unchanged_and_fails_when_two_predictions_move(
    quantreg_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _recorded_project(quantreg_pytester)
    baseline, document = _records(project)
    (entry,) = document["outcome_records"].values()
    recorded = entry["precisions"]["int8-dynamic"]
    assert recorded["protocol"] == "outcome-1"
    assert len(recorded["predictions"].split(",")) == 60
    assert recorded["provenance"]["keep_fp32"] == "head"
    assert "fp32" not in entry["precisions"]  # FP32's record is the baseline itself

    again = project.runpytest(*ACCURACY)
    assert_verdicts(again, passed=2)
    assert "judged against FP32 only" not in again.stdout.str()
    again.stdout.fnmatch_lines(  # 1% of 60 samples is less than one: the next moved prediction fails it
        ["quantreg: predictions of the 60 that may still change before a gate fails (against FP32 / against its*", "  int8-dynamic * / 0"]
    )

    monkeypatch.setenv("TINY_FLIP", "1")  # a "new release" that changes int8's predictions on the two texts with "w4"
    moved = project.runpytest(*ACCURACY)
    assert_verdicts(moved, passed=1, failed=1)
    moved.stdout.fnmatch_lines(
        [
            "*int8-dynamic changed since its record on this hardware class: 2 of 60 predictions differ from the record "
            "(* right -> wrong, * wrong -> right); accuracy *% -> *% (exact McNemar p *); mean KL vs the record *",
            "  - changed predictions 3.33% (2/60) > max 1.00% (default for int8-dynamic)",
            "  - mean KL vs the record * > max 0.001000 (default for int8-dynamic)",
            "  changed since the record: nothing this plugin tracks*",
            "  samples whose prediction moved:",
            "    id *: * -> *: '*w4*'",
            "    id *: * -> *: '*w4*'",
            f"  record: {baseline} (hardware class cpu | *, recorded *)",
            "  accept it: re-record this hardware class with --quantreg-record (then commit the baseline), or raise the limit "
            "(--quantreg-max-drift-flip-rate=int8-dynamic=N, --quantreg-max-drift-kl=int8-dynamic=N)",
        ]
    )
    assert "regressed against FP32" not in moved.stdout.str()  # the FP32-relative gates alone let it through
    assert json.loads(baseline.read_text()) == document  # judging never writes

    loose = project.runpytest(*ACCURACY, "--quantreg-max-drift-flip-rate=int8=5", "--quantreg-max-drift-kl=1")
    assert_verdicts(loose, passed=2)
    accepted = project.runpytest(*ACCURACY, "--quantreg-record")
    assert_verdicts(accepted, passed=2)
    monkeypatch.delenv("TINY_FLIP")
    back = project.runpytest(*ACCURACY)  # the old build now differs from the accepted record
    assert_verdicts(back, passed=1, failed=1)
    back.stdout.fnmatch_lines(["*int8-dynamic changed since its record on this hardware class: 2 of 60 predictions*"])


def test_what_changed_since_the_record_is_named(quantreg_pytester: pytest.Pytester) -> None:
    project = _recorded_project(quantreg_pytester)
    baseline, document = _records(project)
    (entry,) = document["outcome_records"].values()
    recorded = entry["precisions"]["int8-dynamic"]
    recorded["provenance"]["versions"]["torch"] = "2.0.0"  # as if recorded with another torch
    recorded["predictions"] = ",".join(str(1 - int(p)) for p in recorded["predictions"].split(","))  # and other predictions
    baseline.write_text(json.dumps(document))
    result = project.runpytest(*ACCURACY)
    assert_verdicts(result, passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*60 of 60 predictions differ from the record*", "  changed since the record: torch 2.0.0 -> *", "    ... and 57 more"]
    )


def test_no_record_for_this_hardware_class_says_so_in_one_line(quantreg_pytester: pytest.Pytester) -> None:
    record_baseline(quantreg_pytester)
    result = quantreg_pytester.runpytest(*ACCURACY)
    assert_verdicts(result, passed=2)
    lines = [line for line in result.stdout.lines if "judged against FP32 only" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("quantreg: no outcome record for int8-dynamic on this hardware class (cpu | ")
    assert lines[0].endswith("record them on this machine with --quantreg-record")


def test_an_old_protocol_record_is_not_compared_and_a_corrupt_one_is_refused(quantreg_pytester: pytest.Pytester) -> None:
    project = _recorded_project(quantreg_pytester)
    baseline, document = _records(project)
    (entry,) = document["outcome_records"].values()
    entry["precisions"]["int8-dynamic"]["protocol"] = "outcome-0"
    baseline.write_text(json.dumps(document))
    old = project.runpytest(*ACCURACY)
    assert_verdicts(old, passed=2)
    old.stdout.fnmatch_lines(["quantreg: an outcome record made another way (outcome-0; outcome-1 here) for int8-dynamic on *"])

    entry["precisions"]["int8-dynamic"].update(protocol="outcome-1", probabilities="not base64!")
    baseline.write_text(json.dumps(document))
    before = baseline.read_bytes()
    corrupt = project.runpytest(*ACCURACY)
    assert_verdicts(corrupt, failed=2)
    corrupt.stdout.fnmatch_lines([f"*baseline {baseline} is incomplete or malformed (*); fix or delete it, or re-record it with*"])
    assert "Traceback" not in corrupt.stdout.str()
    assert baseline.read_bytes() == before


def test_under_xdist_the_workers_judge_against_the_record(quantreg_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _recorded_project(quantreg_pytester)
    monkeypatch.setenv("TINY_FLIP", "1")
    result = project.runpytest_subprocess(*ACCURACY, "-n", "2")
    assert_verdicts(result, passed=1, failed=1)
    result.stdout.fnmatch_lines(["*int8-dynamic changed since its record on this hardware class: 2 of 60 predictions*"])
