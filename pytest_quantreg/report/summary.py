"""The end of a run: the files it was asked to write, and the summary printed last on the terminal."""

from __future__ import annotations

from typing import Any

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.fileio import atomic_write_json
from pytest_quantreg.judge.gates import FP32
from pytest_quantreg.run.session import QuantregRun


def write_files(run: QuantregRun) -> None:
    """The latency record, the weight and fallback reports' JSON, the fallback sets in the baseline and the
    Markdown report with charts, each as asked; what cannot be written is said at the end of the run."""
    ledger, settings = run.ledger, run.settings
    try:
        run.record_latency()
    except QuantregError as exc:
        ledger.skipped["latency record"] = str(exc)
    model = run.subject.model_name
    if settings.weights_report is not None and ledger.weight_reports:
        reports = [r.to_json() for r in ledger.weight_reports.values()]
        _write_json(run, settings.weights_report, {"model": model, "precisions": reports}, "weights report", "--quantreg-weights-report")
    if settings.fallback_report is not None and ledger.fallback_reports:
        reports = list(ledger.fallback_reports.values())
        _write_json(run, settings.fallback_report, {"model": model, "precisions": reports}, "fallback report", "--quantreg-fallback-report")
    try:
        run.record_fallback_sets()
    except QuantregError as exc:
        ledger.skipped["fallback sets"] = str(exc)
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
    for note in filter(None, [_or_none(run.build_difference), run.unrecorded_note(), *ledger.notes.values()]):
        reporter.write_line(f"quantreg: {note}")
    for name, reason in ledger.skipped.items():
        reporter.write_line(f"quantreg: {name} skipped: {reason}")
    quantized = [n for n in run.selected if n != FP32]
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
