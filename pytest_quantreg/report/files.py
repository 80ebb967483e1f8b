"""``--quantreg-report=DIR``: a Markdown report and PNG charts of the run (matplotlib, optional).

Charts, each made for the decision of which precision to ship:
- ``tradeoff.png``: one point per precision, the flip rate against FP32 over the paired latency
  ratio (log axis), marker area proportional to the model's size;
- ``drop.png``: the paired drop of the gated metric against FP32 with its 95% interval, the
  statistic the gate judges (per-precision intervals would overlap where the pairing does not);
- ``size.png``: the model sizes;
- ``latency.png``: the per-sample latency distribution of each precision on a log axis.
matplotlib is the ``report`` extra; without it the option is a usage error that says what to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.fileio import atomic_write_text
from pytest_quantreg.judge.gates import disturbance
from pytest_quantreg.judge.metrics import ACCURACY_METRIC, Metric, class_metrics
from pytest_quantreg.judge.stats import Agreement, LatencyRatio, Reference, compare, latency_ratio
from pytest_quantreg.measure.evaluation import Measurement
from pytest_quantreg.report.terminal import ratio_cell, statistics_rows

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'pytest-quantreg[report]'"


def check_available() -> None:
    """Raise ``QuantregError`` with the fix when matplotlib cannot be imported."""
    problem = None
    if importlib.util.find_spec("matplotlib") is None:
        problem = "is not installed"
    else:
        try:
            import matplotlib  # noqa: F401
        except Exception as exc:  # a broken install fails in many ways
            problem = f"fails to load ({type(exc).__name__}: {exc})"
    if problem:
        raise QuantregError(f"--quantreg-report needs matplotlib, which {problem}; install it with {INSTALL_HINT}")


def write_report(
    directory: Path,
    title: str,
    header: list[str],
    measurements: dict[str, Measurement],
    reference: tuple[Reference, str] | None,
    metric: Metric = ACCURACY_METRIC,
    class_names: Sequence[str] = (),
) -> list[Path]:
    """Write report.md (with each precision's per-class figures and confusion matrix) and the charts
    into ``directory``; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    paired = {name: compare(m, reference[0], metric, class_names) for name, m in measurements.items()} if reference else {}
    busy = {name for name, m in measurements.items() if disturbance(m)}  # their latency gates did not judge
    ratios = {name: None if name in busy else latency_ratio(m.paired_s) for name, m in measurements.items()}
    charts = [
        _tradeoff_chart(directory, measurements, paired, ratios),
        _drop_chart(directory, paired, metric),
        _size_chart(directory, measurements),
        _latency_chart(directory, measurements, busy),
    ]
    for stale in {"tradeoff.png", "drop.png", "latency.png", "accuracy.png"} - {c.name for c in charts if c is not None}:
        (directory / stale).unlink(missing_ok=True)  # a chart this run cannot draw: none left from an earlier run
    lines = [f"# {title}", "", *(f"- {line}" for line in header), "", *_table(measurements, reference, metric, class_names), ""]
    lines += _classes(measurements, class_names)
    drawn = [path for path in charts if path is not None]
    lines += [f"![{path.stem}]({path.name})" for path in drawn]
    if busy:
        lines += ["", _busy_line(sorted(busy), tradeoff_drawn=charts[0] is not None)]
    report = directory / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return [report, *drawn]


def _table(
    measurements: dict[str, Measurement], reference: tuple[Reference, str] | None, metric: Metric, class_names: Sequence[str]
) -> list[str]:
    """The terminal summary's statistics as a Markdown table, one row per precision."""
    columns = ["precision", "size MB", "accuracy %", "macro-F1 %", "median ms", "latency ratio, paired [95% CI]"]
    statistics = statistics_rows(metric)
    columns += [title for title, _ in statistics] if reference else []
    rows = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |", "|" + "---|" * len(columns)]  # "|x|" would split a cell
    for name, m in measurements.items():
        macro = class_metrics(m.labels, m.predictions, class_names).macro_f1
        cells = [
            name,
            f"{m.size_mb:.2f}",
            f"{m.accuracy * 100:.2f}",
            f"{macro * 100:.2f}",
            f"{m.latency.median_ms:.2f}" if m.latency else "n/a",
        ]
        cells.append(ratio_cell(m))
        if reference:
            stats = compare(m, reference[0], metric, class_names)
            cells += [cell(stats) for _, cell in statistics]
        rows.append("| " + " | ".join(cells) + " |")
    if reference:
        rows += ["", f"Paired statistics against {reference[1]}."]
    return rows


def _classes(measurements: dict[str, Measurement], class_names: Sequence[str]) -> list[str]:
    """Per precision: precision, recall, F1 and support by class, and the confusion matrix (rows true, columns predicted)."""
    lines = ["## Classes", ""]
    for name, m in measurements.items():
        found = class_metrics(m.labels, m.predictions, class_names)
        names = list(found.labels)
        lines += [f"### {name}", "", f"macro-F1 {found.macro_f1:.2%}, weighted-F1 {found.weighted_f1:.2%}", ""]
        lines += ["| class | precision % | recall % | F1 % | support |", "|---|---|---|---|---|"]
        lines += [
            f"| {label} | {p * 100:.2f} | {r * 100:.2f} | {f * 100:.2f} | {n} |" if n else f"| {label} | n/a | n/a | n/a | 0 |"
            for label, p, r, f, n in zip(found.labels, found.precision, found.recall, found.f1, found.support, strict=True)
        ]
        lines += ["", "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {label} | " + " | ".join(str(x) for x in row) + " |" for label, row in zip(names, found.confusion, strict=True)]
        lines.append("")
    return lines


def _figure(width: float = 7.0, height: float = 4.0) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return figure, figure.add_subplot()


def _size_chart(directory: Path, measurements: dict[str, Measurement]) -> Path:
    figure, axes = _figure()
    names = list(measurements)
    bars = axes.bar(names, [m.size_mb for m in measurements.values()], color="#4c72b0")
    axes.bar_label(bars, fmt="%.2f")
    axes.set_ylabel("model size (MB, state dict)")
    axes.set_title("Model size by precision")
    _name_ticks(axes)
    return _save(figure, directory / "size.png")


def _tradeoff_chart(
    directory: Path, measurements: dict[str, Measurement], paired: dict[str, Agreement], ratios: dict[str, LatencyRatio | None]
) -> Path | None:
    """Flip rate over the paired latency ratio, marker area proportional to size: the decision on one page."""
    points = [(name, ratios[name], paired[name]) for name in measurements if name in paired and ratios[name] is not None]
    if not points:
        return None  # no paired timings (untimed run, or FP32 alone) or no reference
    figure, axes = _figure(7.5, 4.8)
    largest = max(measurements[name].size_mb for name, _, _ in points)
    for name, ratio, stats in points:
        assert ratio is not None
        area = 40 + 1200 * measurements[name].size_mb / largest
        axes.scatter([ratio.ratio], [stats.flip_rate * 100], s=area, alpha=0.55)
        axes.annotate(
            f"{name} ({measurements[name].size_mb:.0f} MB)",
            (ratio.ratio, stats.flip_rate * 100),
            fontsize=8,
            ha="center",
            xytext=(0, 9),
            textcoords="offset points",
        )
    axes.set_xscale("log")
    _plain_log_ticks(axes.xaxis)
    axes.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel("latency ratio to FP32, paired, same run (log; < 1 is faster)")
    axes.set_ylabel("flip rate vs FP32 (% of samples)")
    axes.set_title("Trade-off: predictions kept against speed (marker area = model size)")
    axes.margins(x=0.15, y=0.25)
    axes.set_ylim(bottom=-0.1 * max(1.0, axes.get_ylim()[1]))
    return _save(figure, directory / "tradeoff.png")


def _drop_chart(directory: Path, paired: dict[str, Agreement], metric: Metric) -> Path | None:
    """The paired drop of the gated metric with its 95% interval, per precision."""
    if not paired:
        return None
    figure, axes = _figure(max(7.0, 0.65 * len(paired)))
    names = list(paired)
    drops = [stats.metric_drop_pp for stats in paired.values()]
    low = [d - stats.metric_drop_ci95[0] for d, stats in zip(drops, paired.values(), strict=True)]
    high = [stats.metric_drop_ci95[1] - d for d, stats in zip(drops, paired.values(), strict=True)]
    axes.errorbar(names, drops, yerr=[low, high], fmt="o", capsize=5, color="#c44e52")
    for x, value in enumerate(drops):
        axes.annotate(f"{value:.2f}", (x, value), xytext=(8, 3), textcoords="offset points", fontsize=8)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    n = next(iter(paired.values())).n
    axes.set_ylabel(f"{metric.name} drop vs FP32 (points)")
    axes.set_title(f"Paired {metric.name} drop with its 95% interval (what the gate judges), n = {n}")
    _name_ticks(axes)
    return _save(figure, directory / "drop.png")


def _busy_line(busy: list[str], tradeoff_drawn: bool) -> str:
    """What the charts leave out or mark because the machine was busy while they were timed."""
    where = "tradeoff.png leaves them out" if tradeoff_drawn else "tradeoff.png is not drawn: no other ratio was judged"
    return (
        f"The machine was busy while {', '.join(busy)} were timed, so their latency gates did not judge: {where}, "
        "and latency.png marks their timings (busy) in grey."
    )


def _latency_chart(directory: Path, measurements: dict[str, Measurement], busy: set[str]) -> Path | None:
    timed = {name: [s * 1000 for s in m.latencies_s] for name, m in measurements.items() if m.latencies_s}
    if not timed:
        return None  # an untimed run (--benchmark-disable)
    figure, axes = _figure(max(8.0, 0.65 * len(timed)), 4.5)
    labels = [f"{name} (busy)" if name in busy else name for name in timed]
    boxes = axes.boxplot(list(timed.values()), tick_labels=labels, showfliers=True, flierprops={"markersize": 2}, patch_artist=True)
    for name, box in zip(timed, boxes["boxes"], strict=True):
        box.set_facecolor("#dddddd" if name in busy else "#a6c8e6")
    axes.set_yscale("log")  # one slow outlier would otherwise flatten every box
    _plain_log_ticks(axes.yaxis)
    axes.set_ylabel("latency per sample (ms, batch size 1, log)")
    axes.set_title("Latency distribution by precision (same run)")
    _name_ticks(axes)
    return _save(figure, directory / "latency.png")


def _plain_log_ticks(axis: Any) -> None:
    """A log axis labelled 0.2, 0.5, 1, 2, 5, 10 rather than in powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}".lstrip("0.")[:1] in ("2", "5") else ""))


def _name_ticks(axes: Axes) -> None:
    """Precision names under the x axis, slanted and right-aligned so that long names do not overlap."""
    axes.tick_params(axis="x", labelrotation=30)
    for label in axes.get_xticklabels():
        label.set_horizontalalignment("right")


def _save(figure: Figure, path: Path) -> Path:
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png")
    temporary.replace(path)
    return path
