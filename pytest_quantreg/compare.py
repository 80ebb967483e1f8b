"""``quantreg compare BASE HEAD``: two pytest-benchmark runs of quantreg tests, side by side, gated.

Benchmarks are matched by model, data set, precision and device type. Latency is compared as the
ratio to the same run's FP32, and only when both runs come from the same hardware class (CPU or
GPU model, torch's CPU capability, instruction set, threads): a quantized kernel's speed-up over
FP32 differs twofold between CPU generations. Absolute medians are judged only when both runs come
from the same machine. Exit status: 0 nothing regressed, 1 a regression, 2 bad input.

Latency is judged with intervals, not point estimates: each paired sample's ratio in HEAD over the
same sample's in BASE, and the 95% interval of their median must lie wholly above 1 + the limit.
BASE and HEAD may each be several runs (rounds, alternated by ``scripts/compare-commits.sh
--rounds``): a sample's ratio is then its median over the rounds, and when the rounds of one side
differ from each other by more than the limit, or a run was timed on a busy machine, latency is
shown and not judged.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.units import set_change

METRICS = {
    "accuracy-drop": "accuracy lost from BASE to HEAD, in points",
    "macro-f1-drop": "macro-F1 lost from BASE to HEAD, in points",
    "flip-rate": "rise of the flip rate vs FP32, in points",
    "size": "growth of the model size, as a fraction or percent (0.01 or 1%)",
    "latency": "growth of the latency ratio to FP32 (FP32 itself: of its median, same machine only), as a fraction or percent",
}
DEFAULT_FAIL_ON = {"accuracy-drop": 0.5}
MIN_COMMON_SAMPLES = 6  # the fewest paired samples whose median has a distribution-free 95% interval

Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class LatencyRound:
    """One run's paired latency of a precision: its ratio to FP32, each paired sample's ratio, and
    whether the machine was too busy for it to be judged."""

    ratio: float | None
    sample_ratios: dict[str, float]
    disturbed: bool


@dataclass(frozen=True)
class Entry:
    """One quantreg benchmark of a run."""

    model: str
    dataset: str
    precision: str
    device: str
    weights: str | None
    accuracy: float | None
    macro_f1: float | None
    drop_pp: float | None
    flip_rate: float | None
    size_mb: float | None
    latency_ratio: float | None
    median_ms: float | None
    hardware_class: str | None = None
    fallback_units: tuple[str, ...] | None = None  # the fallback search's set, when one ran
    rounds: tuple[LatencyRound, ...] = ()  # each run's paired latency (several when the side has rounds)

    @property
    def key(self) -> Key:
        return (self.model, self.dataset, self.precision, self.device)


@dataclass(frozen=True)
class Run:
    """A pytest-benchmark JSON file's quantreg benchmarks."""

    path: Path
    machine: str
    commit: str | None
    entries: dict[Key, Entry]
    count: int = 1  # how many runs (rounds) were merged into this one


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


def load_rounds(spec: str, storage: Path) -> Run:
    """One side of a comparison: a run, or several runs of the same commit separated by commas (its
    rounds), merged so that each benchmark holds every round's latency."""
    runs = [load_run(part.strip(), storage) for part in spec.split(",") if part.strip()]
    if not runs:
        raise QuantregError(f"{spec!r} names no run; give a JSON file, a saved run's id, or several separated by commas")
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    entries = {}
    for key, entry in first.entries.items():
        each = [run.entries[key] for run in runs if key in run.entries]
        rounds = tuple(r for e in each for r in e.rounds)
        medians = [e.median_ms for e in each if e.median_ms is not None]
        median_ms = statistics.median(medians) if medians else None
        entries[key] = replace(entry, rounds=rounds, latency_ratio=_median_ratio(rounds), median_ms=median_ms)
    return Run(first.path, first.machine, first.commit, entries, len(runs))


def load_run(spec: str, storage: Path) -> Run:
    """A ``--benchmark-json`` file, or a ``--benchmark-autosave`` run named by path or id (e.g. 0001)."""
    path = _find(spec, storage)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantregError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise QuantregError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list); write one with --benchmark-json")
    entries: dict[Key, Entry] = {}
    for bench in data["benchmarks"]:
        entry = _entry(bench)
        if entry is not None:
            entries[entry.key] = entry
    if not entries:
        raise QuantregError(f"{path} holds no quantreg benchmarks (none carries extra_info from the quantreg fixture)")
    machine = data.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    commit = (data.get("commit_info") or {}).get("id")
    return Run(path, f"{machine.get('node', '?')} / {cpu.get('brand_raw') or machine.get('processor') or '?'}", commit, entries)


def _find(spec: str, storage: Path) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    matches = sorted(storage.rglob(f"{spec}_*.json")) if storage.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise QuantregError(f"run id {spec!r} matches {len(matches)} saved runs under {storage}; pass a path")
    raise QuantregError(f"{spec!r} is neither a file nor a run saved under {storage} (ids look like 0001); check the name or --storage")


def _entry(bench: Any) -> Entry | None:
    info = bench.get("extra_info") if isinstance(bench, dict) else None
    if not isinstance(info, dict) or "precision" not in info:
        return None
    stats = bench.get("stats") or {}

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    median = number(stats.get("median"))
    samples = info.get("latency_sample_ratios")
    latency = LatencyRound(
        number(info.get("latency_ratio")),
        {str(k): float(v) for k, v in samples.items() if number(v)} if isinstance(samples, dict) else {},
        bool(info.get("latency_disturbed")),
    )
    return Entry(
        model=str(info.get("model", "?")),
        dataset=str(info.get("dataset_sha256", "?")),
        precision=str(info["precision"]),
        device=str(info.get("device", "?")).split(":")[0],
        weights=info.get("weights_sha256"),
        accuracy=number(info.get("accuracy")),
        macro_f1=number(info.get("macro_f1")),
        drop_pp=number(info.get("accuracy_drop_pp")),
        flip_rate=number(info.get("flip_rate")),
        size_mb=number(info.get("size_mb")),
        latency_ratio=number(info.get("latency_ratio")),
        median_ms=median * 1000 if median is not None else None,
        hardware_class=str(info["hardware_class"]) if info.get("hardware_class") else None,
        fallback_units=tuple(map(str, info["fallback_units"])) if isinstance(info.get("fallback_units"), list) else None,
        rounds=(latency,),
    )


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
        same_hardware = row.base.hardware_class == row.head.hardware_class
        if not same_hardware:
            base_class, head_class = row.base.hardware_class or "not recorded", row.head.hardware_class or "not recorded"
            notes.append(f"different hardware classes (BASE {base_class}, HEAD {head_class}): latency is shown, not judged")
        row.regressions = _judge(row.base, row.head, thresholds, same_machine, same_hardware, notes)
        fallback = _fallback_change(row.base.fallback_units, row.head.fallback_units)
        if fallback:
            notes.append(f"{row.key[2]}: its fallback set (units kept in FP32 to pass) {fallback}")
    return Comparison(base, head, rows, list(dict.fromkeys(notes)))


def _fallback_change(base: tuple[str, ...] | None, head: tuple[str, ...] | None) -> str | None:
    """How the fallback set changed from BASE to HEAD; None when unchanged or searched in neither run."""
    if base is None and head is None:
        return None
    if base is None or head is None:
        searched, units = ("HEAD", head) if base is None else ("BASE", base)
        return f"was searched only in {searched}: {', '.join(units or ()) or 'no unit'}"
    return set_change(base, head)


def _judge(base: Entry, head: Entry, thresholds: dict[str, float], same_machine: bool, same_hardware: bool, notes: list[str]) -> list[str]:
    found = []
    limit = thresholds.get("accuracy-drop")
    if limit is not None and base.accuracy is not None and head.accuracy is not None:
        lost = (base.accuracy - head.accuracy) * 100
        if lost > limit + 1e-9:
            found.append(f"accuracy {base.accuracy:.2%} -> {head.accuracy:.2%} (-{lost:.2f} pp > {limit:g} pp)")
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
        before, after = _median_ratio(base.rounds), _median_ratio(head.rounds)
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
    from pytest_quantreg.stats import median_ci_ranks

    common = set.intersection(*(set(r.sample_ratios) for r in (*base, *head))) if base and head else set()
    if len(common) < MIN_COMMON_SAMPLES:
        before, after = _median_ratio(base), _median_ratio(head)
        return (after / before, (after / before, after / before)) if before and after else None
    changes = sorted(
        statistics.median(r.sample_ratios[s] for r in head) / statistics.median(r.sample_ratios[s] for r in base) for s in common
    )
    low, high = median_ci_ranks(len(changes))
    return statistics.median(changes), (changes[low], changes[high])


def _median_ratio(rounds: tuple[LatencyRound, ...]) -> float | None:
    ratios = [r.ratio for r in rounds if r.ratio]
    return statistics.median(ratios) if ratios else None


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
