"""The end of a run: the files it was asked to write, and the summary printed last on the terminal."""

from __future__ import annotations

from typing import Any

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.fileio import atomic_write_json
from pytest_quantreg.judge.baselines import TIMING_PROTOCOL, UPDATE_FLAG
from pytest_quantreg.judge.gates import FP32
from pytest_quantreg.judge.stats import compare
from pytest_quantreg.judge.verdict import Verdict
from pytest_quantreg.run.session import QuantregRun


def write_files(run: QuantregRun) -> None:
    """The weight and fallback reports' JSON and the Markdown report with charts, each as asked, from what
    the finished run holds; what cannot be written is said at the end of the run."""
    ledger, settings = run.ledger, run.settings
    model = run.subject.model_name
    if settings.weights_report is not None and ledger.weight_reports:
        reports = [r.to_json() for r in ledger.weight_reports.values()]
        _write_json(run, settings.weights_report, {"model": model, "precisions": reports}, "weights report", "--quantreg-weights-report")
    if settings.fallback_report is not None and ledger.fallback_reports:
        reports = list(ledger.fallback_reports.values())
        _write_json(run, settings.fallback_report, {"model": model, "precisions": reports}, "fallback report", "--quantreg-fallback-report")
    folder = settings.report_dir
    if folder is not None and run.measurements:
        from pytest_quantreg.report.files import write_report
        from pytest_quantreg.report.terminal import TITLE, header

        subject = run.subject
        try:
            measurements = ledger.ordered(run.selected)
            files = write_report(
                folder, f"{TITLE.title()}: {model}", header(run), measurements, run.statistics_reference(), subject.metric, subject.labels
            )
            for file in files:
                ledger.wrote("written", file)
        except OSError as exc:
            ledger.skipped["report"] = f"cannot write into {folder}: {exc.strerror}; choose a writable --quantreg-report folder"


def _write_json(run: QuantregRun, path: Any, document: dict[str, Any], what: str, option: str) -> None:
    try:
        atomic_write_json(path, document)
        run.ledger.wrote("written", path)
    except OSError as exc:
        run.ledger.skipped[what] = f"cannot write {path}: {exc.strerror}; choose a writable {option} path"


def summary_lines(run: QuantregRun, reporter: Any) -> None:
    """Print the comparison table, the weight and fallback reports, the files written and the notes."""
    from pytest_quantreg.report.terminal import TITLE, fallback_lines, summary_table, weight_lines

    ledger, subject = run.ledger, run.subject
    if run.measurements:
        reporter.write_sep("=", f"{TITLE} ({subject.model_name}, {len(subject.sample)} samples, {run.settings.device})")
        reference = _or_none(run.statistics_reference)
        for line in summary_table(ledger.ordered(run.selected), reference[0] if reference else None, subject.metric, subject.labels):
            reporter.write_line(line)
        if reference is not None:
            reporter.write_line(f"paired statistics against {reference[1]}")
    sections = (
        ("WEIGHT ERROR", [line for report in ledger.weight_reports.values() for line in weight_lines(report)]),
        ("FALLBACK", [line for found in ledger.fallback_reports.values() for line in fallback_lines(found)]),
    )
    for title, lines in sections:
        if lines:
            reporter.write_sep("=", f"QUANTREG {title} ({subject.model_name})")
            for line in lines:
                reporter.write_line(line)
    named = {run.settings.weights_report: "weight report", run.settings.fallback_report: "fallback report"}
    for outcome, path in ledger.written:
        what = named.get(path) or ("report file" if outcome == "written" else "baseline")
        reporter.write_line(f"quantreg: {what} {outcome}: {path}")
    notes = [_or_none(lambda: build_difference(run)), unrecorded_note(run), *unjudged_drift_notes(run), *ledger.notes.values()]
    for note in filter(None, notes):
        reporter.write_line(f"quantreg: {note}")
    for line in headroom_lines(run):
        reporter.write_line(line)
    for name, reason in ledger.skipped.items():
        reporter.write_line(f"quantreg: {name} skipped: {reason}")
    quantized = [n for n in run.selected if n != FP32 and n in ledger.asked]  # those some test asked for
    if ledger.requested and quantized and reporter.stats.get("skipped") and not any(n in run.measurements for n in quantized):
        reporter.write_line(
            f"quantreg: NO QUANTIZED MODEL WAS TESTED: every test of {', '.join(quantized)} was skipped (reasons above); "
            "this run says nothing about them",
            red=True,
            bold=True,
        )


def _or_none(call: Any) -> Any:
    try:
        return call()
    except QuantregError:
        return None


def _not_judged(verdict: Verdict | None) -> bool:
    return verdict is None or verdict.outcome == "not judged"


def unrecorded_note(run: QuantregRun) -> str | None:
    """The summary line naming the precisions judged without a latency record for this hardware class
    (one whose latency gate did not judge, a busy machine's, is not named: nothing judged it)."""
    judged = {run.record_key(label) for label, gates in run.ledger.verdicts.items() if not _not_judged(gates.get("latency"))}
    unrecorded = [key for key in run.ledger.unrecorded if key in judged]
    if not unrecorded:
        return None
    if run.store.usable() is None:  # nothing can be recorded into it before it is fixed or recorded
        return (
            f"no usable FP32 baseline at {run.store.path} (the accuracy tests say why): only fixed limits judged the latency "
            f"of {', '.join(unrecorded)}; record the baseline with {UPDATE_FLAG}"
        )
    return (
        f"no latency ratio recorded for {', '.join(unrecorded)} on this hardware class "
        f"({run.subject.hardware.hardware_class}) in {run.store.path} (or recorded with an older timing protocol, "
        f"{TIMING_PROTOCOL} here): only their fixed limits judged them; record them on this machine with --quantreg-record-latency"
    )


HEADROOM_WIDTH = 120


def headroom_lines(run: QuantregRun) -> list[str]:
    """What the gates can and cannot catch: per precision judged, how many more of the sample's predictions
    may change before its gate against FP32, and the one against its own record, fails."""
    cells = []
    for label, verdicts in run.ledger.verdicts.items():
        rooms = [verdicts[gate].headroom if gate in verdicts else None for gate in ("accuracy", "drift")]
        if label != FP32 and rooms[0] is not None:
            cells.append(f"{label} {rooms[0]}" + (f" / {rooms[1]}" if rooms[1] is not None else ""))
    if not cells:
        return []
    lines = [
        f"quantreg: predictions of the {len(run.subject.sample)} that may still change before a gate fails "
        "(against FP32 / against its own record for this hardware class):"
    ]
    for cell in cells:
        if len(lines) > 1 and len(lines[-1]) + len(cell) + 2 <= HEADROOM_WIDTH:
            lines[-1] += f", {cell}"
        else:
            lines.append(f"  {cell}")
    return lines


def unjudged_drift_notes(run: QuantregRun) -> list[str]:
    """One line per reason why precisions were judged against FP32 only, without their own outcome record."""
    if run.settings.records_outcomes:
        return []
    where = f"this hardware class ({run.subject.hardware.hardware_class}) in {run.store.path}"
    return [
        f"{why} for {', '.join(names)} on {where}: judged against FP32 only; record them on this machine with --quantreg-record"
        for why, names in run.ledger.unjudged_drift.items()
        if why != "no usable FP32 baseline"  # the accuracy tests say why
    ]


def build_difference(run: QuantregRun) -> str | None:
    """When the example here has other bits than the baseline's build of the same recipe: how far apart."""
    if not run.measurements:
        return None  # nothing was run: do not build the example just to say this
    baseline, subject = run.store.usable(), run.subject
    if baseline is None or not baseline.rebuilt_from_recipe(subject.provenance):
        return None
    text = (
        f"the example was built here with other bits than the baseline's (weights sha256 {subject.weights_sha256[:12]} here, "
        f"{str(baseline.provenance.get('weights_sha256'))[:12]} in {baseline.path.name}; same recipe {subject.recipe_key}, "
        "so another CPU architecture or kernel library): FP32 is judged by its drift gates against the stored predictions"
    )
    fp32 = run.measurements.get(FP32)
    if fp32 is not None:
        stats = compare(fp32, baseline.reference(), subject.metric, subject.labels)
        logit = f", max |logit change| {stats.max_logit_change:.4f}" if stats.max_logit_change is not None else ""
        text += f"; they differ by: flip rate {stats.flip_rate:.2%} ({stats.flips}/{stats.n}), mean KL {stats.kl_mean:.6f}{logit}"
    return text
