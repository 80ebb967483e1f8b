"""What a run measures: the model folder, its labels, the data set and its sample, the metric, the
tokenized inputs, the hashes that make a baseline reproducible, and the hardware.

Each is loaded on first use and once: collecting tests reads nothing, and a dormant run nothing at all.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_quantreg.backends.registry import kernel_env
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.baselines import Provenance, baseline_filename
from pytest_quantreg.judge.metrics import Metric, check_sample, parse_metric
from pytest_quantreg.judge.sanity import Tokens
from pytest_quantreg.measure.data import EMBEDDED_LABELS, Dataset, Sample, draw_sample, load_embedded, load_file

if TYPE_CHECKING:
    from pytest_quantreg.measure.calibration import Calibration
    from pytest_quantreg.measure.hardware import Hardware
    from pytest_quantreg.measure.inputs import Inputs
    from pytest_quantreg.settings import Settings

EXAMPLE_NAME = "quantreg-example-minilm-tweets"


class Subject:
    """The model, data and hardware of one run, from its settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.uncaptured: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext  # where long work shows progress

    @functools.cached_property
    def model_dir(self) -> Path:
        """The model under test: the user's folder, or the example (built on first use)."""
        if self.settings.model is not None:
            return self.settings.model
        from pytest_quantreg.measure.example import example_model

        with self.uncaptured():  # the build's progress bar on the terminal, not in a captured test's output
            return example_model(progress=True)

    @property
    def model_name(self) -> str:
        return self.settings.model.name if self.settings.model is not None else EXAMPLE_NAME

    @functools.cached_property
    def labels(self) -> tuple[str, ...]:
        """Label names by id: the example's are known; a user model's come from its config.json."""
        if self.settings.model is None:
            return EMBEDDED_LABELS
        from pytest_quantreg.measure.loading import label_names

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
    def calibration(self) -> Calibration:
        """The static INT8 precisions' calibration texts: never texts of the sample (raises when there are none)."""
        from pytest_quantreg.measure.calibration import draw_calibration, load_calibration

        s = self.settings
        if s.calibration_file is not None:
            return load_calibration(s.calibration_file, s.text_column, self.sample, s.calibration_samples)
        return draw_calibration(self.sample, s.calibration_samples, s.seed)

    def calibration_hash(self) -> str | None:
        """The calibration texts' hash for the provenance; None when the data set leaves none."""
        try:
            return self.calibration.sha256
        except QuantregError:
            return None

    @functools.cached_property
    def metric(self) -> Metric:
        """``--quantreg-metric`` for this model's classes, checked against the sample."""
        metric = parse_metric(self.settings.metric, self.labels)
        check_sample(metric, [e.label for e in self.sample.examples], self.labels)
        return metric

    @functools.cached_property
    def weights_sha256(self) -> str:
        from pytest_quantreg.measure.weights import weights_sha256

        return weights_sha256(self.model_dir)

    @functools.cached_property
    def inputs(self) -> Inputs:
        from pytest_quantreg.measure.inputs import tokenize
        from pytest_quantreg.measure.loading import load_tokenizer

        return tokenize(load_tokenizer(self.model_dir, self.settings.trust_remote_code), self.sample, self.settings.max_length)

    @functools.cached_property
    def tokens(self) -> Tokens:
        """The tokenizer's size and unknown-token share on the sample, and the embedding matrix's rows."""
        from pytest_quantreg.measure.loading import read_config

        rows = read_config(self.model_dir).get("vocab_size")
        inputs = self.inputs
        return Tokens(inputs.vocabulary or 0, rows if isinstance(rows, int) else None, inputs.unknown_share or 0.0)

    @functools.cached_property
    def recipe_key(self) -> str | None:
        """The embedded example's recipe key (None for the user's own model)."""
        if self.settings.model is not None:
            return None
        from pytest_quantreg.measure.example import recipe_key

        return recipe_key(self.model_dir)

    @property
    def baseline_filename(self) -> str:
        """The baseline's file name (reads the data set, builds no model)."""
        s = self.settings
        return baseline_filename(self.model_name, self.dataset.name, len(self.sample), s.seed, s.max_length, s.device_type)

    @functools.cached_property
    def provenance(self) -> Provenance:
        return Provenance(
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
            calibration_sha256=self.calibration_hash(),
        )

    @functools.cached_property
    def hardware(self) -> Hardware:
        """The device this run measures on, as kernels and timings depend on it."""
        from pytest_quantreg.measure.hardware import detect

        return detect(self.settings.device, kernel_env())
