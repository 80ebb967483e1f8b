"""The state of one quantreg run: settings, lazily loaded data and models, measurements, writes.

Everything expensive is loaded on first use and once: the data set, its sample, the tokenized
inputs, the FP32 reference measurement, the baseline, and the FP32 model that timed passes of the
other precisions pair with (kept until the session ends).
"""

from __future__ import annotations

import functools
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_quantreg import baselines
from pytest_quantreg.data import EMBEDDED_LABELS, Dataset, Sample, draw_sample, load_embedded, load_file
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.evaluation import Inputs, Measurement, measure, tokenize
from pytest_quantreg.example import library_versions
from pytest_quantreg.gates import FP32
from pytest_quantreg.options import Settings
from pytest_quantreg.precisions import BuildContext, Precision, Registry
from pytest_quantreg.stats import Reference

if TYPE_CHECKING:
    import torch

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
    _fp32_weights: dict[str, torch.Tensor] | None = None
    _partner: torch.nn.Module | None = None

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
        )

    @property
    def baseline_path(self) -> Path:
        return baselines.baseline_path(self.settings.baseline_dir, self.provenance)

    def build(self, precision: Precision) -> torch.nn.Module:
        """Build the model of ``precision`` on this run's device."""
        from pytest_quantreg.models import known_noise_filtered

        with known_noise_filtered():
            return precision.build(BuildContext(self.model_dir, self.device, self.settings.trust_remote_code))

    def measure(self, name: str, model: torch.nn.Module, benchmark: Any | None, timed: bool) -> Measurement:
        """Measure ``model`` once per session; measure again only when a timed pass is asked of an untimed one."""
        from pytest_quantreg.models import known_noise_filtered, state_dict_size_mb

        cached = self.measurements.get(name)
        if cached is not None and _satisfies(cached, benchmark, timed):
            return cached
        size = cached.size_mb if cached is not None else state_dict_size_mb(model)
        timing = timed and not getattr(benchmark, "disabled", False)
        partner = self.timing_partner() if timing and name != FP32 else None
        with known_noise_filtered():
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
        self.measurements[name] = result
        return result

    def timing_partner(self) -> torch.nn.Module:
        """The FP32 model timed back to back with the other precisions' timed passes (built once)."""
        if self._partner is None:
            self._partner = self.build(self.registry[FP32])
        return self._partner

    def release_partner(self) -> None:
        """Drop the FP32 timing partner: the session's timed passes are over."""
        if self._partner is not None:
            self._partner = None
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
        from pytest_quantreg.weights import linear_weights, weight_report

        if name not in self.weight_reports:
            if self._fp32_weights is None:
                self._fp32_weights = linear_weights(model) if name == FP32 else self._load_fp32_weights()
            self.weight_reports[name] = weight_report(name, self._fp32_weights, model)
        return self.weight_reports[name]

    def _load_fp32_weights(self) -> dict[str, torch.Tensor]:
        from pytest_quantreg.weights import linear_weights

        model = self.build(self.registry[FP32])
        try:
            return linear_weights(model)
        finally:
            del model
            release_memory()

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
        if self.settings.update_baselines and not any(p == path for _, p in self.written):
            reference = self.fp32_reference()
            document = baselines.record(reference, self.provenance, self.device_name, library_versions())
            self.written.append((baselines.write(path, document), path))
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

    def usable_baseline(self) -> baselines.Baseline | None:
        """The stored baseline when it exists, reads and matches this run; never fails the test."""
        try:
            found = baselines.load(self.baseline_path)
        except QuantregError:
            return None
        return found if found is not None and found.mismatch(self.provenance) is None else None

    @functools.cached_property
    def device_name(self) -> str:
        import platform

        if self.settings.device_type == "cuda":
            import torch

            return str(torch.cuda.get_device_name(self.device))
        return platform.processor() or platform.machine()


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
