"""What a precision is and how one is built: the types every backend module and user precision share.

A precision turns a model folder into something that maps a tokenized sample to logits on a
device and knows its size: a torch module, or an object such as an ONNX Runtime session (see
:func:`pytest_quantreg.measure.loading.device_of`). The built-ins live in :mod:`pytest_quantreg.backends`,
one module per quantization backend, and :mod:`pytest_quantreg.backends.registry` names them; users add
their own through the ``pytest_quantreg_precisions`` hook (see :mod:`pytest_quantreg.plugin.hookspec`). A
precision marked ``compilable`` (its build gives a torch module) also runs under ``torch.compile`` as
``NAME+compile``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pytest_quantreg.errors import QuantregError

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.measure.calibration import Calibration

COMPILE_SUFFIX = "+compile"


@dataclass(frozen=True)
class BuildContext:
    """What a build function gets: the FP32 model folder, the target device, whether the folder's
    own code may run (``--quantreg-trust-remote-code``), the Linear layers to keep in FP32
    (``--quantreg-keep-fp32`` resolved to module names; by default the output head), and for a
    ``calibrated`` precision the calibration texts, tokenized up to ``max_length`` tokens."""

    model_dir: Path
    device: str
    trust_remote_code: bool = False
    keep_fp32: tuple[str, ...] = ()
    calibration: Calibration | None = None
    max_length: int = 128

    def calibration_encodings(self) -> list[dict[str, Any]]:
        """The calibration texts tokenized one at a time (numpy arrays by input name)."""
        from pytest_quantreg.measure.loading import load_tokenizer

        if self.calibration is None:
            raise QuantregError("this precision calibrates on texts, and none were given; mark it calibrated=True when registering it")
        return self.calibration.encodings(load_tokenizer(self.model_dir, self.trust_remote_code), self.max_length)

    @property
    def calibration_hash(self) -> str | None:
        """The calibration texts' hash, for cache keys (None without calibration)."""
        return self.calibration.sha256 if self.calibration is not None else None

    def keeps(self, module_name: str) -> bool:
        """Whether the Linear layer ``module_name`` is to stay in FP32."""
        return module_name in self.keep_fp32

    def load(self, **kwargs: Any) -> torch.nn.Module:
        """Load the model folder (offline, safetensors) with extra ``from_pretrained`` arguments.

        Without a ``device_map`` the model is moved to :attr:`device`.
        """
        from pytest_quantreg.measure.loading import load_classifier

        model: torch.nn.Module = load_classifier(self.model_dir, trust_remote_code=self.trust_remote_code, **kwargs)
        return model if "device_map" in kwargs else model.to(self.device)


@dataclass(frozen=True)
class Logits:
    """What a forward pass of a model that is not a transformers model returns, as a transformers model's output does."""

    logits: torch.Tensor


@runtime_checkable
class Classifier(Protocol):
    """What a build returns when it is not a torch module (an exported file run by its own runtime).

    It is called like a transformers model (the sample's tensors by input name, returning
    :class:`Logits`), says where it runs, its size, which of the Linear layers asked for it really kept
    in FP32 (read from what it runs, not from what was asked) and every Linear layer's weight read back
    to FP32 for the weight report. A torch module needs none of this: the plugin reads it from its modules.
    """

    device: Any  # a torch.device or its name

    def __call__(self, **encoding: torch.Tensor) -> Logits: ...

    def size_mb(self) -> float:
        """Its size in MB of 2**20 bytes (what is deployed: a file, or the tensors it holds)."""
        ...

    def kept_in_fp32(self, names: Sequence[str]) -> tuple[str, ...]:
        """Which of the Linear layers ``names`` it holds in FP32."""
        ...

    def dequantized_weights(self) -> Iterator[tuple[str, torch.Tensor, str]]:
        """Each Linear layer's name, its weight as float32 ``[out, in]`` and how it is stored."""
        ...


@runtime_checkable
class RestoresLayers(Protocol):
    """A :class:`Classifier` that can restore Linear layers to FP32 itself, without quantizing again: the
    fallback search then probes a set of layers with a copy instead of a rebuild."""

    def with_fp32(self, layers: Iterable[str], fp32_weights: Mapping[str, torch.Tensor]) -> Classifier: ...


def contract_problem(model: object, precision: str) -> str | None:
    """Why a build's result can be neither run nor measured, or None: a torch module or a :class:`Classifier`."""
    import torch

    if isinstance(model, (torch.nn.Module, Classifier)):
        return None
    members = ("device", "__call__", "size_mb", "kept_in_fp32", "dequantized_weights")
    missing = [name for name in members if not hasattr(model, name)]
    return (
        f"{precision}'s build returned a {type(model).__name__}, which is neither a torch module nor a "
        f"pytest_quantreg.backends.base.Classifier (it lacks {', '.join(missing)}); return the model, or give it those members"
    )


Dequantizer = Callable[["torch.nn.Module"], "tuple[torch.Tensor, str] | None"]  # a layer's FP32 weight and its storage, or None


@dataclass(frozen=True)
class KnownFailure:
    """An exception of ``library`` whose message holds ``text``, with its known cause and what to do (``fix``)."""

    library: str
    text: str
    fix: str


@dataclass(frozen=True)
class Noise:
    """What a library says on every build or call that says nothing about the user's model: warnings
    (message pattern, category), log records (logger, message pattern), and loggers held back below
    ERROR while it imports and while transformers loads a model."""

    warnings: tuple[tuple[str, type[Warning]], ...] = ()
    log_records: tuple[tuple[str, str], ...] = ()
    loggers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backend:
    """A quantization library: everything the plugin knows of it, so that nothing outside its module does.

    ``name`` is how the fallback report names it; ``keep_setting`` the setting of its own API that keeps
    the Linear layers ``layers`` in FP32 (what a user pastes into their deployment code); ``dequantize``
    how the weight report reads a layer it quantized back to FP32 (None: its layers are not torch
    modules, or it has none of its own); ``libraries`` the distributions it runs on (their versions
    are recorded with every baseline, and an exception raised inside them is reported as theirs);
    ``known_failures`` the exceptions with a known fix; ``noise`` what it says that the run filters out;
    ``kernel_env`` the environment variables that cap its own CPU kernels to an instruction set (set to
    oneDNN's names, as torch's are, when a run emulates an older CPU generation).
    """

    name: str
    keep_setting: Callable[[Sequence[str]], str]
    dequantize: Dequantizer | None = None
    libraries: tuple[str, ...] = ()
    known_failures: tuple[KnownFailure, ...] = ()
    noise: Noise = Noise()
    kernel_env: tuple[str, ...] = ()


Builder = Callable[[BuildContext], Any]  # a torch module or a Classifier


@dataclass(frozen=True)
class Precision:
    """A named way to build a model, with the gates that apply to it by default."""

    name: str
    build: Builder
    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    description: str = ""
    max_drop: float = 1.0
    max_latency_ratio: Mapping[str, float] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    max_flip_rate: float | None = None
    max_kl: float | None = None
    max_latency_increase: float | None = 10.0
    max_drift_flip_rate: float | None = 1.0  # against its own record on this hardware class: as tight as FP32's drift gate
    max_drift_kl: float | None = 0.001
    backend: str = ""  # whose API keeps layers in FP32 (the fallback search prints that setting): a Backend's name
    extra: str = ""  # the pytest-quantreg extra that installs ``requires`` (torchao, onnx); "" for core dependencies
    unsupported: Callable[[str], str | None] | None = None  # why it cannot run on a device type here, beyond devices/requires
    compilable: bool = False  # its build gives a torch module that torch.compile can run: NAME+compile is offered
    quantizes_linear: bool = True  # it quantizes Linear layers, so --quantreg-keep-fp32 applies (the float casts do not)
    min_linear_inputs: int = 0  # Linear layers with fewer inputs stay in FP32 on every CPU: the backend cannot quantize them
    calibrated: bool = False  # static quantization: its build gets the run's calibration texts (never texts of the sample)
    batch_dependent: bool = False  # it scales activations per batch: in batches a prediction depends on its batch-mates

    def missing(self) -> str | None:
        """The first package it needs that is not installed, or None."""
        return next((module for module in self.requires if importlib.util.find_spec(module) is None), None)

    def installed(self) -> bool:
        """Whether the packages it needs are installed (``all`` leaves out precisions of missing extras)."""
        return self.missing() is None

    def unavailable_reason(self, device_type: str) -> str | None:
        """Why this precision cannot run on ``device_type`` here, or None when it can."""
        if device_type not in self.devices:
            return f"{self.name} does not run on {device_type} (runs on: {', '.join(sorted(self.devices))})"
        module = self.missing()
        if module is not None:
            command = f"pip install 'pytest-quantreg[{self.extra}]'" if self.extra else f"pip install {module}"
            return f"{self.name} needs the '{module}' package, which is not installed (`{command}`)"
        return self.unsupported(device_type) if self.unsupported is not None else None

    def import_problem(self) -> str | None:
        """Why a required library that is installed cannot be imported, or None when all import."""
        for module in self.requires:
            try:
                _quiet_import(module)
            except Exception as exc:  # a broken install fails in many ways (ImportError, OSError, RuntimeError)
                return (
                    f"{self.name} needs '{module}', which is installed but fails to import ({type(exc).__name__}: {exc}); "
                    f"reinstall it (`pip install --force-reinstall {module}`) or leave {self.name} out of --precision"
                )
        return None

    def default_limit(self, key: str, device_type: str) -> float | None:
        """This precision's default for the gate ``key`` on ``device_type`` (None: not gated by default)."""
        if key == "max_latency_ratio":
            return self.max_latency_ratio.get(device_type)
        if key == "max_latency_increase":
            return self.max_latency_increase
        return {
            "max_drop": self.max_drop,
            "max_flip_rate": self.max_flip_rate,
            "max_kl": self.max_kl,
            "max_drift_flip_rate": self.max_drift_flip_rate,
            "max_drift_kl": self.max_drift_kl,
        }.get(key)


def _quiet_import(module: str) -> None:
    """Import ``module`` with its own loggers' warnings (and the backends' held-back loggers) held back:
    a library may log at import that an optional kernel package or extension it does not need here is
    missing, which says nothing about the model under test."""
    from pytest_quantreg.measure.loading import held_back_loggers, quiet_loggers

    with quiet_loggers(module, *held_back_loggers()):
        importlib.import_module(module)
