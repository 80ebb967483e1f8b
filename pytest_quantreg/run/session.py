"""One pytest session's quantreg run: :class:`QuantregRun` puts its parts together.

What is measured is the :class:`~.subject.Subject`, the models come from :class:`~.builds.Builds`,
the findings go into the :class:`~.ledger.Ledger` and the baseline file is the
:class:`~.baseline_store.BaselineStore`'s. Everything expensive happens on first use and once.
Measurements are keyed by label: the precision's name, or for a test whose marker keeps other
modules in FP32, ``name[keep-fp32=...]``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pytest_quantreg.backends.base import Precision
from pytest_quantreg.backends.registry import Registry, dequantizers, versions
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.baselines import UPDATE_FLAG, Baseline, outcome_entry
from pytest_quantreg.judge.drift import OutcomeRecord
from pytest_quantreg.judge.gates import FP32, Limit, agreement, disturbance
from pytest_quantreg.judge.sanity import reference_problems
from pytest_quantreg.judge.stats import Agreement, LatencyRatio, Reference, latency_ratio
from pytest_quantreg.measure import keep
from pytest_quantreg.measure.evaluation import Measurement, measure
from pytest_quantreg.measure.timing import MIN_TIMED_S
from pytest_quantreg.run.baseline_store import BaselineStore
from pytest_quantreg.run.builds import Builds, guarded, release_memory
from pytest_quantreg.run.ledger import Ledger
from pytest_quantreg.run.subject import Subject
from pytest_quantreg.settings import Settings

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.fallback.result import Fallback
    from pytest_quantreg.measure.weights import WeightReport


class QuantregRun:
    """One pytest session's quantreg state: settings, precisions, and the parts that measure and record."""

    def __init__(self, settings: Settings, registry: Registry, selected: list[str]) -> None:
        self.settings = settings
        self.registry = registry
        self.selected = selected
        self.subject = Subject(settings)
        self.ledger = Ledger()
        self.builds = Builds(settings, registry, self.subject, self.ledger.notes)
        self._searched: dict[tuple[Any, ...], Fallback] = {}  # (label, cap, gates) -> its search
        self._agreements: dict[str, tuple[Measurement, Baseline, Agreement]] = {}  # label -> its pass's statistics
        self._recorded_fp32 = False

    @property
    def measurements(self) -> dict[str, Measurement]:
        """Every pass measured in this session, by label."""
        return self.ledger.measurements

    @functools.cached_property
    def store(self) -> BaselineStore:  # made on first use: its name reads the data set
        return BaselineStore(self.settings.baseline_dir, self.subject.baseline_filename, lambda: self.subject.provenance)

    def measure(self, name: str, model: torch.nn.Module, benchmark: Any | None, timed: bool) -> Measurement:
        """Measure ``model`` (label ``name``) once per session; measure again only when a timed pass is
        asked of an untimed one."""
        from pytest_quantreg.measure.loading import model_size_mb

        cached = self.measurements.get(name)
        if cached is not None and _satisfies(cached, benchmark, timed):
            return cached
        size = cached.size_mb if cached is not None else model_size_mb(model)
        timing = timed and not getattr(benchmark, "disabled", False)
        partner = self.builds.timing_partner() if timing and name != FP32 else None
        s, inputs = self.settings, self.subject.inputs
        with guarded(name, "running", self.subject.hardware.describe):
            result = measure(model, inputs, precision=name, size_mb=size, warmup=s.warmup, benchmark=benchmark, timed=timed,
                             batch_size=s.batch_size, partner=partner, pairs=s.latency_pairs)  # fmt: skip
        result = dataclasses.replace(result, kept_fp32=self.builds.kept.get(name, ()))
        self.measurements[name] = result
        if result.repetitions > 1:
            self.ledger.notes[f"short forwards {name}"] = (
                f"{name}'s forwards (or FP32's) take under {MIN_TIMED_S * 1000:g} ms, too short to time one at a time: "
                f"each side of its latency pairs was timed {result.repetitions} forwards at a time"
            )
        return result

    def agreement(self, label: str, measurement: Measurement, baseline: Baseline) -> Agreement:
        """The paired statistics of ``measurement`` (label ``label``) against ``baseline``'s FP32 predictions,
        computed once per pass and baseline; :class:`QuantregError` for a damaged baseline."""
        cached = self._agreements.get(label)
        if cached is not None and cached[0] is measurement and cached[1] is baseline:
            return cached[2]
        stats = agreement(measurement, baseline, self.subject.metric, self.subject.labels)
        self._agreements[label] = (measurement, baseline, stats)
        return stats

    def fallback(
        self, precision: Precision, label: str, tokens: tuple[str, ...], model: Any, limits: Mapping[str, Limit], cap: int | None
    ) -> Fallback:
        """The fallback search of ``label`` (once per session for the same gates and ``cap``): its units
        ranked by their effect on the outputs and, when it fails its gates, the smallest set of them to
        keep in FP32. The precision with that set applied is measured under ``label[fallback]``."""
        from pytest_quantreg.fallback.probe import Budget
        from pytest_quantreg.fallback.search import Gates, Searched, find_fallback

        asked = (label, cap, tuple(sorted((key, limit.value) for key, limit in limits.items())))
        if asked in self._searched:
            return self._searched[asked]
        baseline = self.store.usable()
        if baseline is None:
            raise QuantregError(
                f"the fallback search judges {label} against the stored FP32 baseline, and there is no usable one at "
                f"{self.store.path}; record it with {UPDATE_FLAG}"
            )
        s, builds = self.settings, self.builds
        measured = self.measure(label, model, benchmark=None, timed=False)
        rebuild = functools.partial(builds.build_keeping, precision)
        searched = Searched(label, precision.backend, model, rebuild, builds.kept_names(precision, tokens), tokens)
        gates = Gates(baseline.reference(), limits, self.subject.metric, self.subject.labels, s.fallback_headroom)
        budget = Budget(s.fallback_max_passes, s.fallback_max_seconds)
        with guarded(precision.name, "running", self.subject.hardware.describe):
            fp32_model, stored = builds.timing_partner(), baseline.fallback_units(label)
            result, applied = find_fallback(
                searched, fp32_model, builds.fp32_weights(), self.subject.inputs, measured, gates, budget, cap, stored
            )
        if applied is not None:
            self.measurements[applied.precision] = applied
        self._searched[asked] = result
        self.ledger.fallback_reports[label] = result.to_json()
        return result

    def fp32_reference(self) -> Measurement:
        """FP32 measured (timed) in this run, for a baseline: reused when a test already measured it, else measured now."""
        cached = self.measurements.get(FP32)
        if cached is not None and _satisfies(cached, None, timed=True):
            return cached
        model = self.builds.build(self.registry[FP32])
        try:
            return self.measure(FP32, model, benchmark=None, timed=True)
        finally:
            del model
            release_memory()

    def weight_report(self, name: str, model: torch.nn.Module) -> WeightReport:
        """Per-layer weight error of ``model`` (precision ``name``) against FP32's weights; once per precision."""
        from pytest_quantreg.measure.weights import weight_report

        reports = self.ledger.weight_reports
        if name not in reports:
            reference = self.builds.fp32_weights(model if name == FP32 else None)
            reports[name] = weight_report(name, reference, model, self.builds.kept.get(name, ()), dequantizers())
        return reports[name]

    def statistics_reference(self) -> tuple[Reference, str] | None:
        """What the summary's paired statistics compare with: the stored baseline, else this run's FP32."""
        baseline = self.store.usable()
        if baseline is not None:
            return baseline.reference(), f"the stored FP32 baseline {baseline.path}"
        fp32 = self.measurements.get(FP32)
        if fp32 is not None:
            return Reference.from_measurement(fp32), "FP32 measured in this run (no usable stored baseline)"
        return None

    def baseline(self) -> Baseline:
        """The stored FP32 baseline, recorded first when asked; :class:`QuantregError` when unusable, or when
        FP32's predictions in it fail the sanity checks (unless ``--quantreg-accept-reference``)."""
        if self.settings.update_baselines and not self._recorded_fp32:
            reference = self.fp32_reference()
            self._check_reference(Reference.from_measurement(reference), "the baseline was not recorded")
            self.ledger.wrote(self.store.record_fp32(reference, self.subject.hardware), self.store.path)
            self._recorded_fp32 = True
        found = self.store.required()
        self._check_reference(found.reference(), f"nothing was judged; {found.path} is left as it is")
        return found

    def _check_reference(self, reference: Reference, outcome: str) -> None:
        """Raise :class:`QuantregError` naming what is wrong with FP32's predictions on the sample."""
        subject = self.subject
        predictions = [reference.predictions[i] for i in subject.inputs.ids]
        problems = reference_problems(predictions, subject.inputs.labels, subject.labels, subject.tokens)
        if problems and not self.settings.accept_reference:
            listed = "".join(f"\n  - {problem}" for problem in problems)
            raise QuantregError(
                f"the FP32 reference fails its sanity checks, so no verdict against it would mean anything ({outcome}):{listed}\n"
                "  fix the model, its tokenizer or the data; to record and judge against it anyway, pass --quantreg-accept-reference"
            )

    def record_key(self, label: str) -> str:
        """Under which name a latency ratio of ``label`` is recorded: a run that keeps other modules in FP32
        than the default builds another model, with its own speed, so its name says which (unless it quantizes
        no Linear layer: then the setting changes nothing)."""
        setting = self.settings.keep_for(label)
        if "[" in label or setting == (keep.DEFAULT,) or not self.registry[label].quantizes_linear:
            return label
        return f"{label}[keep-fp32={keep.describe(setting)}]"

    def latency_record(self, name: str) -> LatencyRatio | None:
        """The latency ratio recorded for ``name`` on this hardware class, or None (then noted for the summary)."""
        key = self.record_key(name)
        record = self.store.latency_ratio(self.subject.hardware.hardware_class, key)
        if record is None and key not in self.ledger.unrecorded:
            self.ledger.unrecorded.append(key)
        return record

    def finish(self) -> None:
        """The run's last own step: what it was asked to record goes into the baseline (its latency ratios,
        its outcome records, the fallback sets found); what cannot be written is kept in ``ledger.skipped``
        for the end of the run to say. The reports are written from what it holds after this."""
        steps = {"latency record": self.record_latency, "outcome record": self.record_outcomes, "fallback sets": self.record_fallback_sets}
        for what, step in steps.items():
            try:
                step()
            except QuantregError as exc:
                self.ledger.skipped[what] = str(exc)

    def record_latency(self) -> None:
        """With ``--quantreg-update-baselines`` or ``--quantreg-record-latency``, store this run's paired
        latency ratios for this hardware class in the baseline."""
        if not self.settings.records_latency:
            return
        timed = {self.record_key(name): m for name, m in self.measurements.items() if name != FP32}
        busy = [name for name, m in timed.items() if disturbance(m)]
        ratios = {name: latency_ratio(m.paired_s) for name, m in timed.items() if name not in busy}
        measured = {name: ratio for name, ratio in ratios.items() if ratio is not None}
        notes = self.ledger.notes
        if not timed:
            return
        try:  # first: without a baseline nothing is recorded, busy or not
            self.baseline()
        except QuantregError:
            notes["latency recorded"] = (
                f"latency ratios not recorded: no usable FP32 baseline at {self.store.path}; record one with {UPDATE_FLAG}"
            )
            return
        if busy:
            notes["latency not recorded"] = (
                f"latency ratios of {', '.join(busy)} not recorded: the machine was busy while they were timed "
                "(their latency tests say how); record them on a quiet machine"
            )
        if not measured:
            return
        hardware = self.subject.hardware
        self.store.record_latency(hardware, measured)
        listed = ", ".join(f"{name} {ratio.ratio:.3f}" for name, ratio in measured.items())
        notes["latency recorded"] = f"latency ratios recorded for {hardware.hardware_class}: {listed} in {self.store.path}"

    def outcome_record(self, label: str) -> tuple[OutcomeRecord | None, str]:
        """The outcome recorded for ``label`` on this hardware class and "", or None and why there is none
        (noted once for the summary)."""
        baseline = self.store.usable()
        if baseline is None:
            return None, "no usable FP32 baseline"
        key = self.record_key(label)
        record, why = baseline.outcome_record(self.subject.hardware.hardware_class, key)
        if record is not None and record.batch_size != self.settings.batch_size:
            why = f"an outcome record at batch size {record.batch_size} (this run: {self.settings.batch_size})"
            record = None
        if record is None:
            self.ledger.unjudged_drift.setdefault(why, [])
            if key not in self.ledger.unjudged_drift[why]:
                self.ledger.unjudged_drift[why].append(key)
        return record, why

    def outcome_provenance(self, label: str) -> dict[str, Any]:
        """What an outcome record of ``label`` is made with: a later run names what changed since."""
        subject, name = self.subject, label.split("[", 1)[0]
        return {
            "versions": versions(),
            "weights_sha256": subject.weights_sha256,
            "recipe": subject.recipe_key,
            "calibration_sha256": subject.calibration_hash() if self.registry[name].calibrated else None,
            "keep_fp32": keep.describe(self.settings.keep_for(name)) if self.registry[name].quantizes_linear else None,
            "max_length": self.settings.max_length,
        }

    def record_outcomes(self) -> None:
        """With ``--quantreg-record`` or ``--quantreg-update-baselines``, store every precision's outcome
        measured in this run for this hardware class in the baseline."""
        if not self.settings.records_outcomes:
            return
        measured = {
            self.record_key(label): m for label, m in self.measurements.items() if label != FP32 and not label.endswith("[fallback]")
        }
        if not measured:
            return
        try:
            self.baseline()
        except QuantregError:
            self.ledger.notes["outcomes recorded"] = (
                f"outcomes not recorded: no usable FP32 baseline at {self.store.path}; record one with {UPDATE_FLAG}"
            )
            return
        hardware = self.subject.hardware
        entries = {key: outcome_entry(m, self.outcome_provenance(key)) for key, m in measured.items()}
        self.store.record_outcomes(hardware, entries)
        self.ledger.notes["outcomes recorded"] = (
            f"outcomes recorded for {hardware.hardware_class}: {', '.join(entries)} in {self.store.path}; later runs on this "
            "hardware class judge each against its own"
        )

    def record_fallback_sets(self) -> None:
        """With ``--quantreg-update-baselines``, store the passing fallback sets in the baseline."""
        reports = self.ledger.fallback_reports
        found = {
            label: {"units": r["units"], "keep_fp32": keep.describe(self.settings.keep_for(label.split("[")[0]))}
            for label, r in reports.items()
            if r["passes"]
        }
        if self.settings.update_baselines and found and self.store.usable() is not None:
            self.store.record_fallback(found)
            self.ledger.notes["fallback stored"] = f"fallback sets of {', '.join(found)} stored in {self.store.path}"


def _satisfies(cached: Measurement, benchmark: Any | None, timed: bool) -> bool:
    """Whether a cached pass serves a request: pytest-benchmark stats when its fixture is enabled,
    any pass when it is disabled (no timing is possible), any timing when timed."""
    if benchmark is not None:
        return getattr(benchmark, "disabled", False) or cached.timer == "pytest-benchmark"
    return cached.latencies_s is not None or not timed
