"""The quantreg entries of a benchmark's ``extra_info``: written by the ``quantreg`` fixture's checks
and read back by ``quantreg compare``, with the same keys in one place.

A user's plugin or conftest.py adds its own entries through the ``pytest_quantreg_update_extra_info``
hook.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.gates import disturbance
from pytest_quantreg.judge.metrics import class_metrics
from pytest_quantreg.judge.stats import Agreement, latency_ratio
from pytest_quantreg.measure import keep
from pytest_quantreg.measure.evaluation import Measurement

if TYPE_CHECKING:
    from pytest_quantreg.judge.baselines import Baseline
    from pytest_quantreg.run.session import QuantregRun


# -- written ---------------------------------------------------------------------------------------


def extra_info(
    run: QuantregRun, label: str, keep_fp32: tuple[str, ...], result: Measurement, against: tuple[Agreement, Baseline] | None
) -> dict[str, Any]:
    """The entries of a timed pass of ``label``: what was measured, on what, and (``against``: the paired
    statistics and the stored baseline) how it compares with FP32."""
    subject = run.subject
    info: dict[str, Any] = {
        "precision": label,
        "device": run.settings.device,
        "hardware": subject.hardware.to_json(),
        "hardware_class": subject.hardware.hardware_class,
        "keep_fp32": keep.describe(keep_fp32),
        "kept_fp32": list(result.kept_fp32),
        "model": subject.model_name,
        "weights_sha256": subject.weights_sha256,
        "dataset_sha256": subject.dataset.sha256,
        "sample_sha256": subject.sample.sha256,
        "n_samples": len(result.labels),
        "accuracy": result.accuracy,
        "avg_confidence": result.avg_confidence,
        "size_mb": result.size_mb,
        **class_metrics(result.labels, result.predictions, subject.labels).to_json(),
        # per sample, "prediction,label" by sample id: quantreg compare pairs two runs' predictions on them
        "sample_outcomes": {i: f"{p},{y}" for i, p, y in zip(result.ids, result.predictions, result.labels, strict=True)},
    }
    if against is not None:
        info.update(statistics_info(*against, metric_spec=subject.metric.spec))
    info.update(timing_info(result))
    if label in run.ledger.fallback_reports:
        info.update(fallback_info(run.ledger.fallback_reports[label]))
    return info


def statistics_info(stats: Agreement, baseline: Baseline, metric_spec: str) -> dict[str, Any]:
    """The paired statistics against the stored FP32 baseline."""
    return {
        "metric": metric_spec,
        "metric_value": stats.metric_value,
        "baseline_metric": stats.fp32_metric,
        "metric_drop_pp": stats.metric_drop_pp,
        "metric_drop_ci95": list(stats.metric_drop_ci95),
        "flips_by_class": stats.class_flips,
        "baseline_accuracy": baseline.accuracy,
        "accuracy_drop_pp": stats.accuracy_drop_pp,
        "accuracy_drop_ci95": list(stats.accuracy_drop_ci95),
        "mcnemar_p": stats.mcnemar_p,
        "flip_rate": stats.flip_rate,
        "agreement": stats.agreement,
        "kl_mean": stats.kl_mean,
        "max_logit_change": stats.max_logit_change,
        "confidence_change_pp": stats.confidence_change_pp,
    }


def timing_info(measurement: Measurement) -> dict[str, Any]:
    """The benchmark JSON's ``extra_info`` entries of a timed pass: the paired latency ratio with its
    interval, each paired sample's ratio (what ``quantreg compare`` pairs across runs), and how much
    other work disturbed the timings."""
    info: dict[str, Any] = {}
    ratio = latency_ratio(measurement.paired_s)
    if ratio is not None:
        info.update(latency_ratio=ratio.ratio, latency_ratio_ci95=list(ratio.ci95), latency_pairs=ratio.n)
        pairs = measurement.paired_s or ()
        info["latency_sample_ratios"] = {i: mine / fp32 for i, (mine, fp32) in zip(measurement.paired_ids, pairs, strict=True)}
    if measurement.pairs_wanted:
        info.update(
            latency_pairs_wanted=measurement.pairs_wanted,
            latency_pairs_retimed=measurement.pairs_retimed,
            latency_repetitions=measurement.repetitions,
            latency_cpu_wait_share=measurement.pair_wait_share,
        )
    if measurement.rounds_disturbed is not None:
        info["rounds_disturbed"] = measurement.rounds_disturbed
    busy = disturbance(measurement)
    info["latency_disturbed"] = busy is not None
    if busy:
        info["latency_disturbed_reason"] = busy
    return info


def fallback_info(report: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a fallback search."""
    return {"fallback_units": report["units"], "fallback_passes": report["passes"], "fallback_needed": report["needed"]}


def add_fallbacks(output_json: dict[str, Any], reports: Mapping[str, Mapping[str, Any]]) -> None:
    """Add each fallback search's entries to its precision's benchmarks in a pytest-benchmark JSON document."""
    for bench in output_json.get("benchmarks", []):
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if isinstance(info, dict) and info.get("precision") in reports:
            info.update(fallback_info(reports[info["precision"]]))


# -- read by quantreg compare ----------------------------------------------------------------------

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
    outcomes: dict[str, tuple[int, int]] | None = None  # (prediction, label) by sample id, when the run wrote them
    keep_fp32: str | None = None  # the --quantreg-keep-fp32 setting it was built with
    kept_fp32: tuple[str, ...] | None = None  # the Linear layers its build really kept in FP32

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
        entries[key] = replace(entry, rounds=rounds, latency_ratio=median_ratio(rounds), median_ms=median_ms)
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
        outcomes=_outcomes(info.get("sample_outcomes")),
        keep_fp32=str(info["keep_fp32"]) if info.get("keep_fp32") else None,
        kept_fp32=tuple(map(str, info["kept_fp32"])) if isinstance(info.get("kept_fp32"), list) else None,
    )


def _outcomes(value: Any) -> dict[str, tuple[int, int]] | None:
    """``{"id": "prediction,label"}`` as ``{"id": (prediction, label)}``; None when absent or malformed."""
    if not isinstance(value, dict):
        return None
    try:
        pairs = {str(k): tuple(int(x) for x in str(v).split(",")) for k, v in value.items()}
    except ValueError:
        return None
    return {k: (v[0], v[1]) for k, v in pairs.items() if len(v) == 2} or None


def median_ratio(rounds: tuple[LatencyRound, ...]) -> float | None:
    ratios = [r.ratio for r in rounds if r.ratio]
    return statistics.median(ratios) if ratios else None
