"""``quantreg compare BASE HEAD``: two pytest-benchmark runs of quantreg tests, side by side, gated.

Benchmarks are matched by model, data set, precision and device type. Latency is compared as the
ratio to the same run's FP32, and only when both runs come from the same hardware class (CPU or
GPU model, torch's CPU capability, instruction set, threads): a quantized kernel's speed-up over
FP32 differs twofold between CPU generations. Absolute medians are judged only when both runs come
from the same machine. Exit status: 0 nothing regressed, 1 a regression, 2 bad input.

Latency is judged with intervals, not point estimates: each paired sample's ratio in HEAD over the
same sample's in BASE, and the 95% interval of their median must lie wholly above 1 + the limit.
BASE and HEAD may each be several runs (rounds, alternated by ``quantreg compare-commits
--rounds``): a sample's ratio is then its median over the rounds, and when the rounds of one side
differ from each other by more than the limit, or a run was timed on a busy machine, latency is
shown and not judged.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.fallback.units import set_change
from pytest_quantreg.report.benchmark_info import Entry, Key, LatencyRound, Run, median_ratio

METRICS = {
    "accuracy-drop": "accuracy lost from BASE to HEAD, in points",
    "macro-f1-drop": "macro-F1 lost from BASE to HEAD, in points",
    "flip-rate": "rise of the flip rate vs FP32, in points",
    "changed": "predictions that differ between BASE and HEAD on the same samples, in points (percent of the samples)",
    "size": "growth of the model size, as a fraction or percent (0.01 or 1%)",
    "latency": "growth of the latency ratio to FP32 (FP32 itself: of its median, same machine only), as a fraction or percent",
}
DEFAULT_FAIL_ON = {"accuracy-drop": 0.5}
MIN_COMMON_SAMPLES = 6  # the fewest paired samples whose median has a distribution-free 95% interval


@dataclass
class Row:
    key: Key
    base: Entry | None
    head: Entry | None
    regressions: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    base: Run
    head: Run
    rows: list[Row]
    notes: list[str]

    @property
    def regressions(self) -> list[str]:
        return [f"{row.key[2]} ({row.key[3]}): {message}" for row in self.rows for message in row.regressions]


def parse_fail_on(values: list[str]) -> dict[str, float]:
    """``["accuracy-drop=0.5", "latency=10%"]`` -> thresholds over the defaults."""
    thresholds = dict(DEFAULT_FAIL_ON)
    for value in values:
        name, _, number = value.partition("=")
        name = name.strip().lower()
        if name not in METRICS or not number:
            raise QuantregError(f"--fail-on {value!r}: use METRIC=N with METRIC one of {', '.join(METRICS)}")
        text = number.strip()
        try:
            threshold = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold) or threshold < 0:
            raise QuantregError(f"--fail-on {value!r}: {number!r} is not a non-negative number")
        thresholds[name] = threshold
    return thresholds


def compare_runs(base: Run, head: Run, thresholds: dict[str, float]) -> Comparison:
    """Match the benchmarks and judge each pair; raise ``QuantregError`` when nothing matches."""
    common = [k for k in base.entries if k in head.entries]
    if not common:
        raise QuantregError(
            f"no common benchmarks: BASE has {_describe(base)}, HEAD has {_describe(head)}; "
            "compare runs of the same model, data set and device"
        )
    same_machine = base.machine == head.machine
    notes = []
    if not same_machine:
        notes.append(f"different machines (BASE {base.machine}, HEAD {head.machine}): absolute latencies are shown, not judged")
    keys = list(base.entries) + [k for k in head.entries if k not in base.entries]
    rows = [Row(k, base.entries.get(k), head.entries.get(k)) for k in keys]
    for row in rows:
        if row.base is None or row.head is None:
            side = "BASE" if row.head is None else "HEAD"
            notes.append(f"{row.key[2]} ({row.key[3]}, {row.key[0]}) is only in {side}: not compared")
            continue
        if row.base.weights != row.head.weights:
            notes.append(f"{row.key[2]}: the model's weights changed between BASE and HEAD")
        if row.base.kept_fp32 != row.head.kept_fp32 and None not in (row.base.kept_fp32, row.head.kept_fp32):
            notes.append(
                f"{row.key[2]}: two different builds: BASE kept {_layers(row.base)} in FP32, HEAD kept {_layers(row.head)} "
                "(--quantreg-keep-fp32); the figures compare those builds"
            )
        same_hardware = row.base.hardware_class == row.head.hardware_class
        if not same_hardware:
            base_class, head_class = row.base.hardware_class or "not recorded", row.head.hardware_class or "not recorded"
            notes.append(f"different hardware classes (BASE {base_class}, HEAD {head_class}): latency is shown, not judged")
        row.regressions = _judge(row.base, row.head, thresholds, same_machine, same_hardware, notes)
        fallback = _fallback_change(row.base.fallback_units, row.head.fallback_units)
        if fallback:
            notes.append(f"{row.key[2]}: its fallback set (units kept in FP32 to pass) {fallback}")
    return Comparison(base, head, rows, list(dict.fromkeys(notes)))


def _layers(entry: Entry) -> str:
    """What a build kept in FP32, as its setting and the layers' count: ``head (1 layer)``."""
    kept = entry.kept_fp32 or ()
    return f"{entry.keep_fp32 or '?'} ({len(kept)} layer{'' if len(kept) == 1 else 's'})"


def _fallback_change(base: tuple[str, ...] | None, head: tuple[str, ...] | None) -> str | None:
    """How the fallback set changed from BASE to HEAD; None when unchanged or searched in neither run."""
    if base is None and head is None:
        return None
    if base is None or head is None:
        searched, units = ("HEAD", head) if base is None else ("BASE", base)
        return f"was searched only in {searched}: {', '.join(units or ()) or 'no unit'}"
    return set_change(base, head)


@dataclass(frozen=True)
class Paired:
    """BASE's and HEAD's predictions of one precision on the samples both runs judged."""

    n: int
    changed: int  # predictions that differ
    base_only: int  # right in BASE only
    head_only: int  # right in HEAD only
    mcnemar_p: float

    @property
    def accuracy_lost_pp(self) -> float:
        return (self.base_only - self.head_only) / self.n * 100

    def describe(self) -> str:
        return (
            f"{self.changed} of {self.n} predictions changed ({self.base_only} right -> wrong, {self.head_only} wrong -> right; "
            f"exact McNemar p {self.mcnemar_p:.3g})"
        )


def paired(base: Entry, head: Entry) -> Paired | None:
    """The two runs' predictions paired by sample id; None when a run did not write them or they share no sample."""
    if base.outcomes is None or head.outcomes is None:
        return None
    common = [i for i in base.outcomes if i in head.outcomes]
    if not common:
        return None
    from pytest_quantreg.judge.stats import mcnemar_exact

    base_only = sum(base.outcomes[i][0] == base.outcomes[i][1] != head.outcomes[i][0] for i in common)
    head_only = sum(head.outcomes[i][0] == head.outcomes[i][1] != base.outcomes[i][0] for i in common)
    changed = sum(base.outcomes[i][0] != head.outcomes[i][0] for i in common)
    return Paired(len(common), changed, base_only, head_only, mcnemar_exact(base_only, head_only))


def _judge(base: Entry, head: Entry, thresholds: dict[str, float], same_machine: bool, same_hardware: bool, notes: list[str]) -> list[str]:
    found = []
    pairs = paired(base, head)
    if pairs is not None and pairs.changed:
        notes.append(f"{base.precision}: {pairs.describe()}")
    limit = thresholds.get("accuracy-drop")
    if limit is not None and pairs is not None:  # on the same samples: the discordant pairs decide
        if pairs.accuracy_lost_pp > limit + 1e-9:
            then, now = base.accuracy or 0.0, head.accuracy or 0.0
            found.append(f"accuracy {then:.2%} -> {now:.2%} (-{pairs.accuracy_lost_pp:.2f} pp > {limit:g} pp; {pairs.describe()})")
    elif limit is not None and base.accuracy is not None and head.accuracy is not None:
        lost = (base.accuracy - head.accuracy) * 100
        if lost > limit + 1e-9:
            found.append(f"accuracy {base.accuracy:.2%} -> {head.accuracy:.2%} (-{lost:.2f} pp > {limit:g} pp)")
    limit = thresholds.get("changed")
    if limit is not None and pairs is not None and pairs.changed / pairs.n * 100 > limit + 1e-9:
        found.append(f"{pairs.changed / pairs.n:.2%} of the predictions changed (> {limit:g}%): {pairs.describe()}")
    limit = thresholds.get("macro-f1-drop")
    if limit is not None and base.macro_f1 is not None and head.macro_f1 is not None:
        lost = (base.macro_f1 - head.macro_f1) * 100
        if lost > limit + 1e-9:
            found.append(f"macro-F1 {base.macro_f1:.2%} -> {head.macro_f1:.2%} (-{lost:.2f} pp > {limit:g} pp)")
    limit = thresholds.get("flip-rate")
    if limit is not None and base.flip_rate is not None and head.flip_rate is not None:
        rise = (head.flip_rate - base.flip_rate) * 100
        if rise > limit + 1e-9:
            found.append(f"flip rate {base.flip_rate:.2%} -> {head.flip_rate:.2%} (+{rise:.2f} pp > {limit:g} pp)")
    limit = thresholds.get("size")
    if limit is not None and base.size_mb and head.size_mb is not None and head.size_mb / base.size_mb - 1 > limit + 1e-9:
        found.append(f"size {base.size_mb:.2f} -> {head.size_mb:.2f} MB (+{head.size_mb / base.size_mb - 1:.1%} > {limit:.1%})")
    limit = thresholds.get("latency")
    if limit is not None and same_hardware:
        if base.precision == "fp32":
            before, after = (base.median_ms, head.median_ms) if same_machine else (None, None)
            if before and after is not None and after / before - 1 > limit + 1e-9:
                found.append(f"median latency (ms) {before:.3f} -> {after:.3f} (+{after / before - 1:.1%} > {limit:.1%})")
        else:
            found.extend(_latency_regression(base, head, limit, notes))
    return found


def _latency_regression(base: Entry, head: Entry, limit: float, notes: list[str]) -> list[str]:
    """The latency ratio's regression from BASE to HEAD, judged on the interval of the per-sample
    change; none (and a note) when a run was disturbed or the rounds of a side disagree."""
    name = base.precision
    busy = [side for side, entry in (("BASE", base), ("HEAD", head)) if any(r.disturbed for r in entry.rounds)]
    if busy:
        notes.append(f"{name}: the machine was busy while {' and '.join(busy)} timed it: latency is shown, not judged")
        return []
    for side, entry in (("BASE", base), ("HEAD", head)):
        ratios = [r.ratio for r in entry.rounds if r.ratio]
        if len(ratios) > 1 and max(ratios) / min(ratios) - 1 > limit + 1e-9:
            notes.append(
                f"{name}: its latency ratio moved {max(ratios) / min(ratios) - 1:.1%} between the rounds of {side} "
                f"({', '.join(f'{r:.3f}' for r in ratios)}), more than the {limit:.1%} judged: latency is shown, not judged"
            )
            return []
    change = latency_change(base.rounds, head.rounds)
    if change is None:
        return []
    point, (low, high) = change
    if low - 1 > limit + 1e-9:
        before, after = median_ratio(base.rounds), median_ratio(head.rounds)
        return [
            f"latency ratio to FP32 {before:.3f} -> {after:.3f} (+{point - 1:.1%}, 95% CI [{low - 1:+.1%}, {high - 1:+.1%}] > {limit:.1%})"
        ]
    if point - 1 > limit + 1e-9:
        notes.append(
            f"{name}: latency ratio +{point - 1:.1%} but its 95% interval [{low - 1:+.1%}, {high - 1:+.1%}] "
            f"reaches {limit:.1%}: not a regression beyond noise"
        )
    return []


def latency_change(base: tuple[LatencyRound, ...], head: tuple[LatencyRound, ...]) -> tuple[float, tuple[float, float]] | None:
    """HEAD's latency ratio over BASE's: the median over the paired samples of each sample's ratio in
    HEAD over its ratio in BASE (each a median over the rounds), with a distribution-free 95% interval;
    from the runs' ratios alone (a point, no interval) when they carry no per-sample ratios."""
    from pytest_quantreg.judge.stats import median_ci_ranks

    common = set.intersection(*(set(r.sample_ratios) for r in (*base, *head))) if base and head else set()
    if len(common) < MIN_COMMON_SAMPLES:
        before, after = median_ratio(base), median_ratio(head)
        return (after / before, (after / before, after / before)) if before and after else None
    changes = sorted(
        statistics.median(r.sample_ratios[s] for r in head) / statistics.median(r.sample_ratios[s] for r in base) for s in common
    )
    low, high = median_ci_ranks(len(changes))
    return statistics.median(changes), (changes[low], changes[high])


def _describe(run: Run) -> str:
    return "; ".join(sorted({f"{k[0]} on {k[3]} ({k[2]})" for k in run.entries}))


# -- output ----------------------------------------------------------------------------------------

HEADERS = [
    "precision",
    "device",
    "accuracy %",
    "macro-F1 %",
    "drop vs FP32 pp",
    "flip rate %",
    "size MB",
    "latency ratio",
    "median ms",
    "verdict",
]


def table_rows(comparison: Comparison) -> list[list[str]]:
    """One row of cells per matched or unmatched benchmark."""
    rows = []
    for row in comparison.rows:
        b, h = row.base, row.head
        verdict = "only in " + ("BASE" if h is None else "HEAD") if b is None or h is None else ("REGRESSED" if row.regressions else "ok")
        rows.append(
            [
                row.key[2],
                row.key[3],
                _pair(b, h, "accuracy", 100, "{:.2f}"),
                _pair(b, h, "macro_f1", 100, "{:.2f}"),
                _pair(b, h, "drop_pp", 1, "{:.2f}"),
                _pair(b, h, "flip_rate", 100, "{:.2f}"),
                _pair(b, h, "size_mb", 1, "{:.2f}"),
                _pair(b, h, "latency_ratio", 1, "{:.3f}"),
                _pair(b, h, "median_ms", 1, "{:.2f}"),
                verdict,
            ]
        )
    return rows


def _pair(base: Entry | None, head: Entry | None, attr: str, scale: float, fmt: str) -> str:
    def cell(entry: Entry | None) -> str:
        value = getattr(entry, attr) if entry is not None else None
        return fmt.format(value * scale) if value is not None else "-"

    return f"{cell(base)} → {cell(head)}"


def render_text(comparison: Comparison) -> str:
    rows = [HEADERS, *table_rows(comparison)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = [f"BASE {_name(comparison.base)}  HEAD {_name(comparison.head)}"]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"note: {n}" for n in comparison.notes]
    lines += [f"REGRESSION {r}" for r in comparison.regressions] or ["no regression"]
    return "\n".join(lines)


def _name(run: Run) -> str:
    return f"{run.path}" + (f" (+{run.count - 1} more rounds)" if run.count > 1 else "")


def render_markdown(comparison: Comparison) -> str:
    regressions = comparison.regressions
    verdict = f"**{len(regressions)} regression(s)**" if regressions else "**No regression**"
    lines = [
        "## pytest-quantreg comparison",
        "",
        f"{verdict}: BASE `{comparison.base.path.name}` ({comparison.base.commit or 'no commit'}) → "
        f"HEAD `{comparison.head.path.name}` ({comparison.head.commit or 'no commit'})",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(cells) + " |" for cells in table_rows(comparison)),
        "",
        *(f"- :x: {r}" for r in regressions),
        *(f"- {n}" for n in comparison.notes),
    ]
    return "\n".join(lines).rstrip() + "\n"


def render_json(comparison: Comparison) -> str:
    return json.dumps(
        {
            "base": str(comparison.base.path),
            "head": str(comparison.head.path),
            "regressions": comparison.regressions,
            "notes": comparison.notes,
            "rows": [
                {
                    "precision": r.key[2],
                    "device": r.key[3],
                    "model": r.key[0],
                    "base": asdict(r.base) if r.base else None,
                    "head": asdict(r.head) if r.head else None,
                    "regressions": r.regressions,
                }
                for r in comparison.rows
            ],
        },
        indent=2,
    )
