"""The state of one quantreg run: settings, lazily loaded data and models, measurements, writes.

Everything expensive is loaded on first use and once: the data set, its sample, the tokenized
inputs, the FP32 reference measurement, the baseline, the hardware, the Linear layers kept in
FP32, and the FP32 model that timed passes of the other precisions pair with (kept until the
session ends). Measurements are keyed by label: the precision's name, or for a test whose marker
keeps other modules in FP32, ``name[keep-fp32=...]``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_quantreg import baselines, keep
from pytest_quantreg.data import EMBEDDED_LABELS, Dataset, Sample, draw_sample, load_embedded, load_file
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.evaluation import Inputs, Measurement, measure, tokenize
from pytest_quantreg.example import library_versions
from pytest_quantreg.failures import library_failures
from pytest_quantreg.gates import FP32, Limit, disturbance
from pytest_quantreg.metrics import Metric, check_sample, parse_metric
from pytest_quantreg.options import Settings
from pytest_quantreg.precisions import BuildContext, Precision, Registry
from pytest_quantreg.stats import LatencyRatio, Reference, compare, latency_ratio
from pytest_quantreg.timing import MIN_TIMED_S

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.fallback import Fallback
    from pytest_quantreg.hardware import Hardware
    from pytest_quantreg.weights import WeightReport

EXAMPLE_NAME = "quantreg-example-minilm-tweets"


@dataclass
class QuantregRun:
    """One pytest session's quantreg state."""

    settings: Settings
    registry: Registry
    selected: list[str]
    measurements: dict[str, Measurement] = field(default_factory=dict)
    written: list[tuple[str, Path]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    weight_reports: dict[str, WeightReport] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    unrecorded: list[str] = field(default_factory=list)  # precisions whose latency had no record for this hardware class
    kept: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> Linear layers really kept in FP32
    fallback_reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> the same as JSON (xdist workers' too)
    extra_infos: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> its timed benchmark's extra_info
    _fp32_weights: dict[str, torch.Tensor] | None = None
    _partner: torch.nn.Module | None = None
    _variants: dict[str, torch.nn.Module] = field(default_factory=dict)
    _keep_names: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    _searched: dict[tuple[Any, ...], Fallback] = field(default_factory=dict)  # (label, cap, gates) -> its search
    _recorded_fp32: bool = False
    requested: bool = False  # a collected test is parametrized over the precisions

    @property
    def device(self) -> str:
        return self.settings.device

    @functools.cached_property
    def model_dir(self) -> Path:
        """The model under test: the user's folder, or the example (built on first use)."""
        if self.settings.model is not None:
            return self.settings.model
        from pytest_quantreg.example import example_model

        return example_model(progress=True)

    @property
    def model_name(self) -> str:
        return self.settings.model.name if self.settings.model is not None else EXAMPLE_NAME

    @functools.cached_property
    def labels(self) -> tuple[str, ...]:
        """Label names by id: the example's are known; a user model's come from its config.json."""
        if self.settings.model is None:
            return EMBEDDED_LABELS
        from pytest_quantreg.models import label_names

        return label_names(self.model_dir)

    @functools.cached_property
    def dataset(self) -> Dataset:
        s = self.settings
        dataset = load_embedded() if s.dataset is None else load_file(s.dataset, self.labels, s.text_column, s.label_column)
        if len(dataset.labels) != len(self.labels):
            raise QuantregError(
                f"the model in {self.model_dir} has {len(self.labels)} labels {list(self.labels)} but data set "
                f"{dataset.name} has {len(dataset.labels)} {list(dataset.labels)}; use a model trained for these labels"
            )
        return dataset

    @functools.cached_property
    def sample(self) -> Sample:
        return draw_sample(self.dataset, self.settings.samples, self.settings.seed)

    @functools.cached_property
    def metric(self) -> Metric:
        """``--quantreg-metric`` for this model's classes, checked against the sample."""
        metric = parse_metric(self.settings.metric, self.labels)
        check_sample(metric, [e.label for e in self.sample.examples], self.labels)
        return metric

    @functools.cached_property
    def weights_sha256(self) -> str:
        from pytest_quantreg.fileio import file_sha256

        files = sorted(self.model_dir.glob("*.safetensors"))
        return file_sha256(files[0]) if len(files) == 1 else _combined([file_sha256(f) for f in files])

    @functools.cached_property
    def inputs(self) -> Inputs:
        from pytest_quantreg.models import load_tokenizer

        return tokenize(load_tokenizer(self.model_dir, self.settings.trust_remote_code), self.sample, self.settings.max_length)

    @functools.cached_property
    def provenance(self) -> baselines.Provenance:
        return baselines.Provenance(
            model=self.model_name,
            weights_sha256=self.weights_sha256,
            dataset=self.dataset.name,
            dataset_sha256=self.dataset.sha256,
            sample_spec=str(self.settings.samples),
            seed=self.settings.seed,
            sample_sha256=self.sample.sha256,
            n_samples=len(self.sample),
            max_length=self.settings.max_length,
            labels=self.labels,
            device_type=self.settings.device_type,
            recipe=self.recipe_key,
        )

    @functools.cached_property
    def recipe_key(self) -> str | None:
        """The embedded example's recipe key (None for the user's own model)."""
        if self.settings.model is not None:
            return None
        from pytest_quantreg.example import recipe_key

        return recipe_key(self.model_dir)

    @property
    def baseline_path(self) -> Path:
        return baselines.baseline_path(self.settings.baseline_dir, self.provenance)

    def ordered_measurements(self) -> dict[str, Measurement]:
        """The measurements in the order of ``--precision`` (FP32 first), each marker variant after its precision."""
        order = {name: index for index, name in enumerate(self.selected)}

        def key(label: str) -> tuple[int, str]:
            base = label.split("[", 1)[0]
            return order.get(base, len(order)), label

        return {label: self.measurements[label] for label in sorted(self.measurements, key=key)}

    @functools.cached_property
    def hardware(self) -> Hardware:
        """The device this run measures on, as kernels and timings depend on it."""
        from pytest_quantreg.hardware import detect

        return detect(self.device)

    def label(self, name: str, keep_fp32: tuple[str, ...] | None = None) -> str:
        """The measurement label of precision ``name`` built keeping ``keep_fp32`` (None: this run's setting)."""
        if keep_fp32 is None or keep_fp32 == self.settings.keep_fp32 or name == FP32:
            return name
        return f"{name}[keep-fp32={keep.describe(keep_fp32)}]"

    def keep_names(self, tokens: tuple[str, ...]) -> tuple[str, ...]:
        """``--quantreg-keep-fp32`` tokens resolved to this model's Linear layer names (once per setting)."""
        if tokens not in self._keep_names:
            if not tokens:
                self._keep_names[tokens] = ()
            else:
                model = keep.meta_model(self.model_dir, self.settings.trust_remote_code)
                num_labels = int(getattr(getattr(model, "config", None), "num_labels", len(self.labels)))
                self._keep_names[tokens] = keep.resolve(tokens, keep.linear_layers(model), num_labels)
        return self._keep_names[tokens]

    def build(self, precision: Precision, keep_fp32: tuple[str, ...] | None = None) -> torch.nn.Module:
        """Build the model of ``precision`` on this run's device, keeping ``keep_fp32`` (None: the run's
        setting) in FP32; record which Linear layers it really kept. A library's exception raises
        :class:`~pytest_quantreg.failures.LibraryFailure`."""
        from pytest_quantreg.models import known_noise_filtered

        tokens = self.settings.keep_fp32 if keep_fp32 is None else keep_fp32
        names = self.keep_names(tokens) if precision.name != FP32 else ()
        context = BuildContext(self.model_dir, self.device, self.settings.trust_remote_code, names)
        with library_failures(precision.name, "building", self.hardware.describe), known_noise_filtered():
            model = precision.build(context)
        self.kept[self.label(precision.name, tokens)] = keep.kept_in_fp32(model, names)
        return model

    def _build_keeping(self, precision: Precision, names: tuple[str, ...]) -> torch.nn.Module:
        """``precision`` built keeping exactly the Linear layers ``names`` in FP32 (the fallback search's rebuilds)."""
        from pytest_quantreg.models import known_noise_filtered

        context = BuildContext(self.model_dir, self.device, self.settings.trust_remote_code, names)
        with library_failures(precision.name, "building", self.hardware.describe), known_noise_filtered():
            return precision.build(context)

    def fallback(
        self, precision: Precision, label: str, tokens: tuple[str, ...], model: Any, limits: Mapping[str, Limit], cap: int | None
    ) -> Fallback:
        """The fallback search of ``label`` (once per session for the same gates and ``cap``): its units
        ranked by their effect on the outputs and, when it fails its gates, the smallest set of them to
        keep in FP32. The precision with that set applied is measured under ``label[fallback]``."""
        asked = (label, cap, tuple(sorted((key, limit.value) for key, limit in limits.items())))
        if asked in self._searched:
            return self._searched[asked]
        from pytest_quantreg.probe import Budget
        from pytest_quantreg.search import Gates, Subject, find_fallback

        baseline = self.usable_baseline()
        if baseline is None:
            raise QuantregError(
                f"the fallback search judges {label} against the stored FP32 baseline, and there is no usable one at "
                f"{self.baseline_path}; record it with {baselines.UPDATE_FLAG}"
            )
        measured = self.measure(label, model, benchmark=None, timed=False)
        kept = self.keep_names(tokens)
        subject = Subject(label, precision.backend, model, lambda names: self._build_keeping(precision, names), kept, tokens)
        gates = Gates(baseline.reference(), limits, self.metric, self.labels, self.settings.fallback_headroom)
        budget = Budget(self.settings.fallback_max_passes, self.settings.fallback_max_seconds)
        with library_failures(precision.name, "running", self.hardware.describe):
            fp32_model = self.timing_partner()
            result, applied = find_fallback(
                subject, fp32_model, self.fp32_weights(), self.inputs, measured, gates, budget, cap, baseline.fallback_units(label)
            )
        if applied is not None:
            self.measurements[applied.precision] = applied
        self._searched[asked] = result
        self.fallback_reports[label] = result.to_json()
        if label in self.extra_infos:
            self.extra_infos[label].update(fallback_info(self.fallback_reports[label]))
        return result

    def measure(self, name: str, model: torch.nn.Module, benchmark: Any | None, timed: bool) -> Measurement:
        """Measure ``model`` (label ``name``) once per session; measure again only when a timed pass is
        asked of an untimed one."""
        from pytest_quantreg.models import known_noise_filtered, model_size_mb

        cached = self.measurements.get(name)
        if cached is not None and _satisfies(cached, benchmark, timed):
            return cached
        size = cached.size_mb if cached is not None else model_size_mb(model)
        timing = timed and not getattr(benchmark, "disabled", False)
        partner = self.timing_partner() if timing and name != FP32 else None
        with library_failures(name, "running", self.hardware.describe), known_noise_filtered():
            result = measure(
                model,
                self.inputs,
                precision=name,
                size_mb=size,
                warmup=self.settings.warmup,
                benchmark=benchmark,
                timed=timed,
                batch_size=self.settings.batch_size,
                partner=partner,
                pairs=self.settings.latency_pairs,
            )
        result = dataclasses.replace(result, kept_fp32=self.kept.get(name, ()))
        self.measurements[name] = result
        if result.repetitions > 1:
            self.notes[f"short forwards {name}"] = (
                f"{name}'s forwards (or FP32's) take under {MIN_TIMED_S * 1000:g} ms, too short to time one at a time: "
                f"each side of its latency pairs was timed {result.repetitions} forwards at a time"
            )
        return result

    def timing_partner(self) -> torch.nn.Module:
        """The FP32 model timed back to back with the other precisions' timed passes (built once)."""
        if self._partner is None:
            self._partner = self.build(self.registry[FP32])
        return self._partner

    def variant_model(self, name: str, keep_fp32: tuple[str, ...]) -> torch.nn.Module:
        """Precision ``name`` built keeping another set of modules in FP32 (a test's quantreg marker); built once."""
        label = self.label(name, keep_fp32)
        if label not in self._variants:
            self._variants[label] = self.build(self.registry[name], keep_fp32)
        return self._variants[label]

    def release_models(self) -> None:
        """Drop the FP32 timing partner and the marker variants: the session's tests are over."""
        if self._partner is not None or self._variants:
            self._partner = None
            self._variants.clear()
            release_memory()

    def fp32_reference(self) -> Measurement:
        """FP32 measured (timed) in this run, for a baseline: reused when a test already measured it, else measured now."""
        cached = self.measurements.get(FP32)
        if cached is not None and _satisfies(cached, None, timed=True):
            return cached
        model = self.build(self.registry[FP32])
        try:
            return self.measure(FP32, model, benchmark=None, timed=True)
        finally:
            del model
            release_memory()

    def weight_report(self, name: str, model: torch.nn.Module) -> WeightReport:
        """Per-layer weight error of ``model`` (precision ``name``) against FP32's weights; once per precision."""
        from pytest_quantreg.weights import weight_report

        if name not in self.weight_reports:
            reference = self.fp32_weights(model if name == FP32 else None)
            self.weight_reports[name] = weight_report(name, reference, model, self.kept.get(name, ()))
        return self.weight_reports[name]

    def fp32_weights(self, fp32_model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """FP32's Linear weights by layer name (read once): from ``fp32_model`` or the timing partner when
        at hand, else from an FP32 model built for it and released."""
        from pytest_quantreg.weights import linear_weights

        if self._fp32_weights is None:
            source = fp32_model if fp32_model is not None else self._partner
            if source is not None:
                self._fp32_weights = linear_weights(source)
            else:
                model = self.build(self.registry[FP32])
                try:
                    self._fp32_weights = linear_weights(model)
                finally:
                    del model
                    release_memory()
        return self._fp32_weights

    def statistics_reference(self) -> tuple[Reference, str] | None:
        """What the summary's paired statistics compare with: the stored baseline, else this run's FP32."""
        baseline = self.usable_baseline()
        if baseline is not None:
            return baseline.reference(), f"the stored FP32 baseline {baseline.path}"
        fp32 = self.measurements.get(FP32)
        if fp32 is not None:
            return Reference.from_measurement(fp32), "FP32 measured in this run (no usable stored baseline)"
        return None

    def baseline(self) -> baselines.Baseline:
        """The stored FP32 baseline, recorded first when asked; fail the test when unusable."""
        __tracebackhide__ = True
        path = self.baseline_path
        self._record_fp32_if_asked()
        found = baselines.load(path)
        if found is None:
            pytest.fail(
                f"no FP32 baseline for this model, sample and device at {path}\n"
                f"  record it with: pytest {baselines.UPDATE_FLAG}  (then commit the file)",
                pytrace=False,
            )
        problem = found.mismatch(self.provenance)
        if problem:
            pytest.fail(f"{problem}\n  not compared. If the change is intended, re-record with {baselines.UPDATE_FLAG}", pytrace=False)
        return found

    def _record_fp32_if_asked(self) -> None:
        """With ``--quantreg-update-baselines``, record FP32's outcome once per session."""
        if self.settings.update_baselines and not self._recorded_fp32:
            path = self.baseline_path
            document = baselines.record(self.fp32_reference(), self.provenance, self.hardware, library_versions())
            self.written.append((baselines.write(path, document), path))
            self._recorded_fp32 = True

    def record_key(self, label: str) -> str:
        """Under which name a latency ratio of ``label`` is recorded: a run that keeps other modules in FP32
        than the default builds another model, with its own speed, so its name says which."""
        if "[" in label or self.settings.keep_fp32 == (keep.DEFAULT,):
            return label
        return f"{label}[keep-fp32={keep.describe(self.settings.keep_fp32)}]"

    def latency_record(self, name: str) -> LatencyRatio | None:
        """The latency ratio recorded for ``name`` on this hardware class, or None (then noted for the summary)."""
        baseline = self.usable_baseline()
        key = self.record_key(name)
        record = baseline.latency_ratio(self.hardware.hardware_class, key) if baseline is not None else None
        if record is None and key not in self.unrecorded:
            self.unrecorded.append(key)
        return record

    def unrecorded_note(self) -> str | None:
        """The summary line naming the precisions judged without a latency record for this hardware class."""
        if not self.unrecorded:
            return None
        return (
            f"no latency ratio recorded for {', '.join(self.unrecorded)} on this hardware class ({self.hardware.hardware_class}) "
            f"in {self.baseline_path} (or recorded with an older timing protocol, {baselines.TIMING_PROTOCOL} here): only their "
            "fixed limits judged them; record them on this machine with --quantreg-record-latency"
        )

    def record_latency(self) -> None:
        """With ``--quantreg-update-baselines`` or ``--quantreg-record-latency``, store this run's paired
        latency ratios for this hardware class in the baseline."""
        timed = {self.record_key(name): m for name, m in self.measurements.items() if name != FP32}
        busy = [name for name, m in timed.items() if disturbance(m)]
        ratios = {name: latency_ratio(m.paired_s) for name, m in timed.items() if name not in busy}
        measured = {name: ratio for name, ratio in ratios.items() if ratio is not None}
        if not self.settings.records_latency:
            return
        if busy:
            self.notes["latency not recorded"] = (
                f"latency ratios of {', '.join(busy)} not recorded: the machine was busy while they were timed "
                "(their latency tests say how); record them on a quiet machine"
            )
        if not measured:
            return
        self._record_fp32_if_asked()
        if self.usable_baseline() is None:
            self.notes["latency recorded"] = (
                f"latency ratios not recorded: no usable FP32 baseline at {self.baseline_path}; record one with {baselines.UPDATE_FLAG}"
            )
            return
        path = self.baseline_path
        baselines.write_latency(path, self.hardware, measured, library_versions())
        listed = ", ".join(f"{name} {ratio.ratio:.3f}" for name, ratio in measured.items())
        self.notes["latency recorded"] = f"latency ratios recorded for {self.hardware.hardware_class}: {listed} in {path}"

    def build_difference(self) -> str | None:
        """When the example here has other bits than the baseline's build of the same recipe: how far apart."""
        if not self.measurements:
            return None  # nothing was run: do not build the example just to say this
        baseline = self.usable_baseline()
        if baseline is None or not baseline.rebuilt_from_recipe(self.provenance):
            return None
        text = (
            f"the example was built here with other bits than the baseline's (weights sha256 {self.weights_sha256[:12]} here, "
            f"{str(baseline.provenance.get('weights_sha256'))[:12]} in {baseline.path.name}; same recipe {self.recipe_key}, "
            "so another CPU architecture or kernel library): FP32 is judged by its drift gates against the stored predictions"
        )
        fp32 = self.measurements.get(FP32)
        if fp32 is not None:
            stats = compare(fp32, baseline.reference(), self.metric, self.labels)
            logit = f", max |logit change| {stats.max_logit_change:.4f}" if stats.max_logit_change is not None else ""
            text += f"; they differ by: flip rate {stats.flip_rate:.2%} ({stats.flips}/{stats.n}), mean KL {stats.kl_mean:.6f}{logit}"
        return text

    def usable_baseline(self) -> baselines.Baseline | None:
        """The stored baseline when it exists, reads and matches this run; never fails the test."""
        try:
            found = baselines.load(self.baseline_path)
        except QuantregError:
            return None
        return found if found is not None and found.mismatch(self.provenance) is None else None


def fallback_info(report: Mapping[str, Any]) -> dict[str, Any]:
    """The benchmark JSON's ``extra_info`` entries of a fallback search (what ``quantreg compare`` reads)."""
    return {"fallback_units": report["units"], "fallback_passes": report["passes"], "fallback_needed": report["needed"]}


def _satisfies(cached: Measurement, benchmark: Any | None, timed: bool) -> bool:
    """Whether a cached pass serves a request: pytest-benchmark stats when its fixture is enabled,
    any pass when it is disabled (no timing is possible), any timing when timed."""
    if benchmark is not None:
        return getattr(benchmark, "disabled", False) or cached.timer == "pytest-benchmark"
    return cached.latencies_s is not None or not timed


def release_memory() -> None:
    """Give freed model memory back (and CUDA's cache) before the next model is built."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _combined(digests: list[str]) -> str:
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest()
