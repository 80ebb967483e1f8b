"""The models of a run: each precision built on the run's device with its layers kept in FP32, the FP32
model that timed passes pair with, marker variants, and FP32's Linear weights for the reports.

A library's exception while building raises :class:`~pytest_quantreg.measure.failures.LibraryFailure`.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pytest_quantreg.backends.base import BuildContext, Precision, contract_problem
from pytest_quantreg.backends.registry import Registry, known_failures, libraries
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.gates import FP32
from pytest_quantreg.measure import keep
from pytest_quantreg.measure.failures import library_failures

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.run.subject import Subject
    from pytest_quantreg.settings import Settings


class Builds:
    """Builds models for one run and holds the few it keeps for the session."""

    def __init__(self, settings: Settings, registry: Registry, subject: Subject, notes: dict[str, str]) -> None:
        self.settings = settings
        self.notes = notes  # end-of-run lines: the layers a backend could not quantize
        self.registry = registry
        self.subject = subject
        self.kept: dict[str, tuple[str, ...]] = {}  # label -> Linear layers really kept in FP32
        self._keep_names: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._partner: torch.nn.Module | None = None
        self._variants: dict[str, torch.nn.Module] = {}
        self._fp32_weights: dict[str, torch.Tensor] | None = None

    def label(self, name: str, keep_fp32: tuple[str, ...] | None = None) -> str:
        """The measurement label of precision ``name`` built keeping ``keep_fp32`` (None: this run's setting);
        a precision that quantizes no Linear layer keeps its name, as the setting does not change it."""
        if keep_fp32 is None or keep_fp32 == self.settings.keep_for(name) or not self.registry[name].quantizes_linear:
            return name
        return f"{name}[keep-fp32={keep.describe(keep_fp32)}]"

    def keep_names(self, tokens: tuple[str, ...]) -> tuple[str, ...]:
        """``--quantreg-keep-fp32`` tokens resolved to this model's Linear layer names (once per setting)."""
        if tokens not in self._keep_names:
            if not tokens:
                self._keep_names[tokens] = ()
            else:
                model = keep.meta_model(self.subject.model_dir, self.settings.trust_remote_code)
                num_labels = int(getattr(getattr(model, "config", None), "num_labels", len(self.subject.labels)))
                self._keep_names[tokens] = keep.resolve(tokens, keep.linear_layers(model), num_labels)
        return self._keep_names[tokens]

    def kept_names(self, precision: Precision, tokens: tuple[str, ...]) -> tuple[str, ...]:
        """The Linear layers ``precision`` keeps in FP32: those ``tokens`` name, and those its backend cannot
        quantize (fewer inputs than ``precision.min_linear_inputs``), named at the end of the run."""
        if not precision.quantizes_linear:
            return ()
        names = self.keep_names(tokens)
        if precision.min_linear_inputs:
            narrow = keep.narrow_layers(
                keep.meta_model(self.subject.model_dir, self.settings.trust_remote_code), precision.min_linear_inputs
            )
            added = [name for name in narrow if name not in names]
            if added:
                self.notes[f"narrow {precision.name}"] = (
                    f"{precision.name} kept {len(added)} Linear layer(s) with fewer than {precision.min_linear_inputs} inputs in FP32, "
                    f"as its backend cannot quantize them (on every CPU, so the verdict is the same on all): {', '.join(added)}"
                )
                names = (*names, *added)
        return names

    def build(self, precision: Precision, keep_fp32: tuple[str, ...] | None = None) -> torch.nn.Module:
        """Build ``precision`` keeping ``keep_fp32`` (None: the run's setting) in FP32; record which Linear
        layers it really kept."""
        tokens = self.settings.keep_for(precision.name) if keep_fp32 is None else keep_fp32
        names = self.kept_names(precision, tokens)
        model = self.build_keeping(precision, names)
        self.kept[self.label(precision.name, tokens)] = keep.kept_in_fp32(model, names)
        return model

    def build_keeping(self, precision: Precision, names: tuple[str, ...]) -> torch.nn.Module:
        """``precision`` built keeping exactly the Linear layers ``names`` in FP32 (the fallback search's rebuilds)."""
        s = self.settings
        calibration = self.subject.calibration if precision.calibrated else None
        context = BuildContext(self.subject.model_dir, s.device, s.trust_remote_code, names, calibration, s.max_length)
        with guarded(precision.name, "building", self.subject.hardware.describe):
            model = precision.build(context)
        problem = contract_problem(model, precision.name)
        if problem is not None:
            raise QuantregError(problem)
        return model

    def timing_partner(self) -> torch.nn.Module:
        """The FP32 model timed back to back with the other precisions' timed passes (built once)."""
        if self._partner is None:
            self._partner = self.build(self.registry[FP32])
        return self._partner

    def variant(self, name: str, keep_fp32: tuple[str, ...]) -> torch.nn.Module:
        """Precision ``name`` built keeping another set of modules in FP32 (a test's quantreg marker); built once."""
        label = self.label(name, keep_fp32)
        if label not in self._variants:
            self._variants[label] = self.build(self.registry[name], keep_fp32)
        return self._variants[label]

    def release(self) -> None:
        """Drop the FP32 timing partner and the marker variants: the session's tests are over."""
        if self._partner is not None or self._variants:
            self._partner = None
            self._variants.clear()
            release_memory()

    def fp32_weights(self, fp32_model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """FP32's Linear weights by layer name (read once): from ``fp32_model`` or the timing partner when
        at hand, else from an FP32 model built for it and released."""
        from pytest_quantreg.measure.weights import linear_weights

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


def release_memory() -> None:
    """Give freed model memory back (and CUDA's cache) before the next model is built."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def guarded(precision: str, stage: str, hardware: Callable[[], str]) -> Iterator[None]:
    """``precision`` built or run (``stage``): an exception raised inside a library becomes one message
    (with the backends' known fixes), and what the libraries say that says nothing about the model is filtered."""
    from pytest_quantreg.measure.loading import known_noise_filtered

    with library_failures(precision, stage, hardware, libraries(), known_failures()), known_noise_filtered():
        yield
