"""What the terminal shows: the reproducibility header, the seed-style comparison table with the
paired statistics, the per-layer weight error and the fallback searches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_quantreg.backends.registry import CORE_LIBRARIES, SUPPORT_LIBRARIES, versions
from pytest_quantreg.errors import NoCalibrationTexts, QuantregError
from pytest_quantreg.fallback.units import count
from pytest_quantreg.judge.gates import FP32, disturbance
from pytest_quantreg.judge.metrics import ACCURACY, ACCURACY_METRIC, ClassMetrics, Metric, class_metrics
from pytest_quantreg.judge.stats import Agreement, Reference, compare, latency_ratio
from pytest_quantreg.measure import keep
from pytest_quantreg.measure.calibration import COUNT_OPTION, FILE_OPTION
from pytest_quantreg.measure.data import CleaningReport
from pytest_quantreg.measure.evaluation import Measurement
from pytest_quantreg.measure.weights import WeightReport
from pytest_quantreg.run.session import QuantregRun

if TYPE_CHECKING:
    from pytest_quantreg.fallback.result import Fallback

TITLE = "QUANTIZATION COMPARISON SUMMARY"


def header(run: QuantregRun, hardware: bool = True) -> list[str]:
    """Lines that make the run reproducible: model, data, sample, device, precisions, modules kept in
    FP32, versions, and (``hardware``: it imports torch) the hardware."""
    s = run.settings
    batches = f", untimed passes in length-bucketed batches of {s.batch_size}" if s.batch_size > 1 else ""
    lines = [f"quantreg: device {s.device}, precisions {', '.join(run.selected)}{batches}"]
    lines.append(
        f"quantreg: kept in FP32 by the precisions that quantize Linear layers: {keep.describe(s.keep_fp32)}"
        + "".join(f"; by {name}: {keep.describe(tokens)}" for name, tokens in s.keep_by_precision.items())
        + f" ({keep.OPTION}; 'none' quantizes every Linear layer)"
    )
    per_batch = [name for name in run.selected if run.registry[name].batch_dependent]
    if batches and per_batch:
        lines.append(
            f"quantreg: note: {', '.join(per_batch)} scale activations per batch, so in batches their predictions depend on their "
            "batch-mates (8% of the example's int8-dynamic predictions differ from batch size 1); their accuracy gates are exact "
            "only at --quantreg-batch-size=1"
        )
    try:
        if s.model is None:
            lines.append(_example_line())
        else:
            lines.append(f"quantreg model: {s.model} (weights sha256 {run.subject.weights_sha256[:12]})")
        sample, dataset = run.subject.sample, run.subject.dataset
        lines.append(
            f"quantreg data: {dataset.name} (sha256 {dataset.sha256[:12]}{_cleaning(dataset.cleaning)}), sample {len(sample)} "
            f"(--quantreg-samples={s.samples} --quantreg-seed={s.seed}, sha256 {sample.sha256[:12]}), max length {s.max_length}"
        )
        calibrated = [name for name in run.selected if run.registry[name].calibrated]
        if calibrated:
            lines.append(_calibration_line(run, calibrated))
        unreadable = run.store.unreadable()  # found before any model is built
        if unreadable:
            lines.append(f"quantreg baseline: {unreadable}; the accuracy tests will fail on it")
    except QuantregError as exc:
        lines.append(f"quantreg: cannot load the model or data yet: {exc}")
    shown = {name: found for name, found in versions().items() if name not in ("python", *SUPPORT_LIBRARIES)}
    listed = ", ".join(f"{name} {found}" for name, found in shown.items() if name in CORE_LIBRARIES or found != "not installed")
    lines.append(f"quantreg versions: {listed}")
    if hardware:
        lines.append(f"quantreg hardware: {run.subject.hardware.describe()}")
    return lines


def _cleaning(report: CleaningReport) -> str:
    """The rows read and what cleaning dropped (found ignoring whitespace; the texts are evaluated as given)."""
    dropped = [f"{report.duplicates} duplicate row(s)"] if report.duplicates else []
    dropped += [f"{report.conflicting} text(s) with two labels"] if report.conflicting else []
    return f"; {report.rows} rows" + (f", dropped {' and '.join(dropped)}, matched ignoring whitespace" if dropped else "")


def _calibration_line(run: QuantregRun, calibrated: list[str]) -> str:
    """Where the static precisions' calibration texts come from, or why there are none."""
    try:
        calibration = run.subject.calibration
    except QuantregError as exc:
        outcome = "will be skipped" if isinstance(exc, NoCalibrationTexts) else "will fail"
        return f"quantreg calibration: {exc}; {', '.join(calibrated)} {outcome}"
    return (
        f"quantreg calibration of {', '.join(calibrated)}: {calibration.source}, none of them in the sample "
        f"(sha256 {calibration.sha256[:12]}; {COUNT_OPTION}, {FILE_OPTION})"
    )


def _example_line() -> str:
    from pytest_quantreg.measure.example import cached_example, read_manifest

    folder = cached_example()
    if folder is None:
        return "quantreg model: embedded example, not built yet (the first test builds it once, about 3 minutes on 2 cores)"
    return f"quantreg model: embedded example {folder} (weights sha256 {str(read_manifest(folder)['weights_sha256'])[:12]})"


def summary_table(
    measurements: dict[str, Measurement],
    reference: Reference | None = None,
    metric: Metric = ACCURACY_METRIC,
    class_names: Sequence[str] = (),
) -> list[str]:
    """The seed's table: one column per precision, then each against FP32, with macro-F1, recall by
    class and the chosen ``metric``; with a ``reference``, rows of paired statistics against FP32's
    predictions."""
    names = list(measurements)
    fp32 = measurements.get(FP32)
    others = [n for n in names if n != FP32] if fp32 else []
    columns = [n.upper() for n in names] + [f"{n.upper()} vs FP32" for n in others]
    rows: list[list[str]] = []

    def add(metric: str, value: object, relative: object) -> None:
        cells = [value(measurements[n]) for n in names]  # type: ignore[operator]
        rel = [relative(measurements[n], fp32) for n in others]  # type: ignore[operator]
        rows.append([metric, *cells, *rel])

    def lat(attr: str) -> object:
        return lambda m: f"{getattr(m.latency, attr):.2f}" if m.latency else "n/a"

    def lat_rel(attr: str) -> object:
        return lambda m, f: _percent(getattr(m.latency, attr), getattr(f.latency, attr)) if m.latency and f.latency else "n/a"

    add("model size (MB)", lambda m: f"{m.size_mb:.2f}", lambda m, f: _smaller(m.size_mb, f.size_mb))
    add("accuracy (%)", lambda m: f"{m.accuracy * 100:.2f}", lambda m, f: f"{(m.accuracy - f.accuracy) * 100:+.2f}")
    add("avg confidence (%)", lambda m: f"{m.avg_confidence * 100:.2f}", lambda m, f: f"{(m.avg_confidence - f.avg_confidence) * 100:+.2f}")
    classes = {n: class_metrics(m.labels, m.predictions, class_names) for n, m in measurements.items()}
    add("macro-F1 (%)", lambda m: f"{classes[m.precision].macro_f1 * 100:.2f}", lambda m, f: _points(classes, "macro_f1", m, f))
    add("recall by class (%)", lambda m: recall_cell(classes[m.precision]), lambda m, f: "")
    if metric.kind not in (ACCURACY, "macro-f1"):
        add(
            f"{metric.name} (%)",
            lambda m: f"{classes[m.precision].value(metric, m.accuracy) * 100:.2f}",
            lambda m, f: f"{(classes[m.precision].value(metric, m.accuracy) - classes[f.precision].value(metric, f.accuracy)) * 100:+.2f}",
        )
    add("mean latency (ms)", lat("mean_ms"), lat_rel("mean_ms"))
    add("median latency (ms)", lat("median_ms"), lat_rel("median_ms"))
    add("std latency (ms)", lat("std_ms"), lambda m, f: "n/a")
    if fp32 is not None or any(m.paired_s or m.pairs_wanted for m in measurements.values()):  # a ratio was judged
        add("latency ratio, paired [95% CI]", ratio_cell, lambda m, f: "")
    if any(m.kept_fp32 for m in measurements.values()):
        add("kept in FP32", lambda m: keep.short(m.kept_fp32), lambda m, f: "")
    if reference is not None:
        stats = {n: compare(measurements[n], reference, metric, class_names) for n in names}
        for title, cell in statistics_rows(metric):
            add(title, lambda m, cell=cell: cell(stats[m.precision]), lambda m, f: "")
    table = [["metric", *columns], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        " | ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in table
    ]


MAX_CLASS_CELL = 60  # characters of a recall-by-class cell: the worst classes first when they do not fit
FEW_CLASSES = 4  # up to this many, recall is listed by class id, without names


def recall_cell(found: ClassMetrics) -> str:
    """Recall by class: ``69.5 / 84.2`` for a few classes (n/a for one absent from the sample); for more,
    the worst classes first by name, as many as fit, then how many more and how many are absent."""
    present = [(r, label) for r, label, n in zip(found.recall, found.labels, found.support, strict=True) if n]
    if len(found.labels) <= FEW_CLASSES:
        return " / ".join(f"{r * 100:.1f}" if n else "n/a" for r, n in zip(found.recall, found.support, strict=True))
    absent = len(found.labels) - len(present)
    tail = f" (n/a: {absent} absent)" if absent else ""
    shown: list[str] = []
    for recall, label in sorted(present):
        item = f"{label} {recall * 100:.1f}"
        more = len(present) - len(shown) - 1
        if len(", ".join([*shown, item])) + len(f", +{more} more") * bool(more) + len(tail) > MAX_CLASS_CELL and shown:
            break
        shown.append(item)
    rest = len(present) - len(shown)
    return ", ".join(shown) + (f", +{rest} more" if rest else "") + tail


STATISTICS: list[tuple[str, Callable[[Agreement], str]]] = [
    ("drop vs FP32 [95% CI] (pp)", lambda a: f"{a.accuracy_drop_pp:.2f} [{a.accuracy_drop_ci95[0]:.2f}, {a.accuracy_drop_ci95[1]:.2f}]"),
    ("McNemar p (exact)", lambda a: f"{a.mcnemar_p:.3g}"),
    ("flip rate vs FP32 (%)", lambda a: f"{a.flip_rate * 100:.2f}"),
    ("mean KL vs FP32 (nats)", lambda a: f"{a.kl_mean:.4f}"),
    ("max |logit change|", lambda a: f"{a.max_logit_change:.3f}" if a.max_logit_change is not None else "n/a"),
]


def statistics_rows(metric: Metric) -> list[tuple[str, Callable[[Agreement], str]]]:
    """The paired statistics shown for a run judged on ``metric``: its drop first when it is not accuracy."""
    if metric.kind == ACCURACY:
        return STATISTICS
    return [(f"{metric.name} drop vs FP32 [95% CI] (pp)", _metric_drop_cell), *STATISTICS]


def _metric_drop_cell(stats: Agreement) -> str:
    """The chosen metric's drop against FP32 with its paired bootstrap interval, as a table cell."""
    low, high = stats.metric_drop_ci95
    return f"{stats.metric_drop_pp:.2f} [{low:.2f}, {high:.2f}]"


def _points(classes: dict[str, ClassMetrics], attr: str, m: Measurement, f: Measurement) -> str:
    return f"{(getattr(classes[m.precision], attr) - getattr(classes[f.precision], attr)) * 100:+.2f}"


def ratio_cell(measurement: Measurement) -> str:
    """The latency ratio to FP32 (timed back to back) with its 95% interval, as a table cell."""
    if disturbance(measurement):
        return "busy machine"
    if measurement.precision == FP32:
        return "1 (reference)" if measurement.latencies_s else "n/a"
    ratio = latency_ratio(measurement.paired_s)
    return f"{ratio.ratio:.2f} [{ratio.ci95[0]:.2f}, {ratio.ci95[1]:.2f}]" if ratio else "n/a"


def weight_lines(report: WeightReport, worst: int = 5) -> list[str]:
    """The per-layer-kind summary and the ``worst`` layers of one precision."""
    kept = f" ({len(report.kept_fp32)} kept in FP32: {', '.join(report.kept_fp32)})" if report.kept_fp32 else ""
    lines = [f"{report.precision}: {len(report.layers)} Linear layers compared with FP32{kept}"]
    kinds = report.by_kind()
    width = max((len(k.kind) for k in kinds), default=4)
    lines.append(f"  {'layer kind'.ljust(width)} | layers | min SNR dB | mean SNR dB | mean rel L2 | max |err|")
    for k in kinds:
        snr = f"{k.min_snr_db:10.2f} | {k.mean_snr_db:11.2f}"
        lines.append(f"  {k.kind.ljust(width)} | {k.layers:6d} | {snr} | {k.mean_rel_l2:11.5f} | {k.max_abs:9.5f}")
    lines.append(f"  worst {min(worst, len(report.layers))} by SNR:")
    for layer in report.worst(worst):
        lines.append(
            f"    {layer.name} ({layer.storage}): SNR {layer.snr_db:.2f} dB, rel L2 {layer.rel_l2:.5f}, "
            f"cosine {layer.cosine:.6f}, max |err| {layer.max_abs:.5f}"
        )
    return lines


def _percent(value: float, reference: float) -> str:
    return f"{(value / reference - 1) * 100:+.2f}%" if reference else "n/a"


def _smaller(value: float, reference: float) -> str:
    change = (1 - value / reference) * 100 if reference else 0.0
    return f"{change:.2f}% smaller" if change >= 0 else f"{-change:.2f}% larger"


def fallback_lines(report: Mapping[str, Any], top: int = 10) -> list[str]:
    """One precision's fallback search (its JSON form): verdict, the ``top`` units ranked, the set with
    its figures on both halves, the settings to paste, the cost and the change from the stored set."""
    name, sensitivity = report["precision"], report["sensitivity"]
    lines = [f"{name}: {_fallback_verdict(report)}"]
    ranked = sensitivity["units"]
    if ranked:
        lines.extend(_ranking_lines(name, sensitivity, top))
    if sensitivity["stopped"]:
        lines.append(f"  ranking {'incomplete' if ranked else 'not measured'}: {sensitivity['stopped']}")
    if report["units"]:
        lines.append(
            f"  set: {', '.join(report['units'])} ({count(len(report['units']))}, {report['set_share']:.1%} of the Linear parameters; "
            f"{report['kept_share']:.1%} with the layers kept in FP32 anyway)"
        )
        for trial in (report["found"], report["confirmed"]):
            if trial is not None:
                lines.append(f"    {trial['part']} half ({trial['n']} samples): {_trial_text(trial)}")
        settings, backend = report["settings"], report.get("backend")
        if report["passes"]:
            lines.append(f"  paste: {settings['pytest-quantreg']}")
            if backend in settings:
                lines.append(f"         {backend}: {settings[backend]}")
    cost = report["cost"]
    if cost["forward_passes"]:
        lines.append(
            f"  cost: {cost['forward_passes']:,} forward passes ({cost['forward_passes'] / cost['ordinary_pass']:.1f} ordinary passes "
            f"of {cost['ordinary_pass']} samples), {cost['seconds']:.1f} s"
        )
    if report["change"]:
        lines.append(f"  against the baseline: {report['change']}")
    return lines


def _ranking_lines(name: str, sensitivity: Mapping[str, Any], top: int) -> list[str]:
    """The ``top`` units ranked by their effect, as a table."""
    ranked = sensitivity["units"]
    lines: list[str] = []
    lines.append(
        f"  units ranked by effect, each restored to FP32 alone on the {sensitivity['focus_samples']} search-half samples where "
        f"{name} disagrees most with FP32 ({sensitivity['focus_flips']} flips, summed KL {sensitivity['focus_kl']:.4f}):"
    )
    width = max((len(u["unit"]) for u in ranked[:top]), default=4)
    lines.append(f"    rank | {'unit'.ljust(width)} | KL recovered | flips fixed (added) | min weight SNR | parameters")
    for u in ranked[:top]:
        snr = f"{u['min_snr_db']:.1f} dB" if u["min_snr_db"] is not None else "-"
        lines.append(
            f"    {u['rank']:4d} | {u['unit'].ljust(width)} | {u['kl_recovered']:11.1%} | "
            f"{u['flips_fixed']:4d} of {sensitivity['focus_flips']:<4d} ({u['flips_added']}) | {snr:>14} | {u['parameters']:,}"
        )
    if len(ranked) > top:
        lines.append(f"    ... {len(ranked) - top} more units in the fallback report (--quantreg-fallback-report)")
    return lines


def _fallback_verdict(report: Mapping[str, Any]) -> str:
    if not report["needed"]:
        return "passes its gates as it is: no search"
    size = count(len(report["units"]))
    if report["passes"]:
        where = "the set stored with the baseline still passes" if report["source"] == "stored" else "found"
        return f"fails its gates; keeping {size} in FP32 passes on both halves ({where})"
    if report["stopped"]:
        return f"fails its gates; the search stopped: {report['stopped']}; best set so far ({size}) below"
    return f"fails its gates; the set found on the search half ({size}) fails on the held-out half"


def _trial_text(trial: Mapping[str, Any]) -> str:
    verdict = "passes" if trial["passes"] else "fails: " + "; ".join(trial["failures"])
    return (
        f"accuracy {trial['accuracy']:.2%}, drop {trial['metric_drop_pp']:.2f} pp, flips {trial['flip_rate']:.2%}, "
        f"mean KL {trial['kl_mean']:.4f}: {verdict}"
    )


def fallback_context(found: Fallback, enforced: bool) -> str:
    """Lines for a failure message: what the fallback search found, and whether the verdict judged it."""
    report = found.to_json()
    what = f"fallback search: {_fallback_verdict(report)}"
    if report["units"] and found.passes:
        what += f"; apply it with {report['settings']['pytest-quantreg']}"
    judged = "  judged with that set applied (--quantreg-fallback=enforce)\n" if enforced else ""
    return f"  {what} (details in the QUANTREG FALLBACK summary)\n{judged}"
