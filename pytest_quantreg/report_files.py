"""``--quantreg-report=DIR``: a Markdown report and PNG charts of the run (matplotlib, optional).

Charts: model size, accuracy with its 95% interval, and the per-sample latency distribution of
each precision. matplotlib is the ``report`` extra; without it the option is a usage error that
says what to install.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.evaluation import Measurement
from pytest_quantreg.fileio import atomic_write_text
from pytest_quantreg.metrics import ACCURACY_METRIC, Metric, class_metrics
from pytest_quantreg.report import ratio_cell, statistics_rows
from pytest_quantreg.stats import Reference, compare

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
    charts = [_size_chart(directory, measurements), _accuracy_chart(directory, measurements)]
    if any(m.latencies_s for m in measurements.values()):
        charts.append(_latency_chart(directory, measurements))
    else:  # an untimed run (--benchmark-disable): no chart, and none left from an earlier run
        (directory / "latency.png").unlink(missing_ok=True)
    lines = [f"# {title}", "", *(f"- {line}" for line in header), "", *_table(measurements, reference, metric, class_names), ""]
    lines += _classes(measurements, class_names)
    lines += [f"![{path.stem}]({path.name})" for path in charts]
    report = directory / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return [report, *charts]


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
            f"| {label} | {p * 100:.2f} | {r * 100:.2f} | {f * 100:.2f} | {n} |"
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
    axes.tick_params(axis="x", labelrotation=20)
    return _save(figure, directory / "size.png")


def _accuracy_chart(directory: Path, measurements: dict[str, Measurement]) -> Path:
    figure, axes = _figure()
    names = list(measurements)
    accuracy = [m.accuracy * 100 for m in measurements.values()]
    low, high = zip(*(wilson_interval(m.accuracy, len(m.labels)) for m in measurements.values()), strict=True)
    errors = [[a - lo * 100 for a, lo in zip(accuracy, low, strict=True)], [hi * 100 - a for a, hi in zip(accuracy, high, strict=True)]]
    axes.bar(names, accuracy, yerr=errors, capsize=5, color="#55a868")
    for x, value in enumerate(accuracy):
        axes.annotate(f"{value:.2f}", (x, value), xytext=(8, 3), textcoords="offset points", fontsize=8)
    axes.set_ylim(max(0.0, min(low) * 100 - 5), max(high) * 100 + 5)  # headroom for the labels above 100%
    n = len(next(iter(measurements.values())).labels)
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"Accuracy by precision, 95% Wilson interval, n = {n}")
    axes.tick_params(axis="x", labelrotation=20)
    return _save(figure, directory / "accuracy.png")


def _latency_chart(directory: Path, measurements: dict[str, Measurement]) -> Path:
    figure, axes = _figure(8.0, 4.5)
    timed = {name: [s * 1000 for s in m.latencies_s] for name, m in measurements.items() if m.latencies_s}
    axes.boxplot(list(timed.values()), tick_labels=list(timed), showfliers=True, flierprops={"markersize": 2})
    axes.set_ylabel("latency per sample (ms, batch size 1)")
    axes.set_title("Latency distribution by precision (same run)")
    axes.tick_params(axis="x", labelrotation=20)
    return _save(figure, directory / "latency.png")


def _save(figure: Figure, path: Path) -> Path:
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png")
    temporary.replace(path)
    return path


def wilson_interval(share: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
