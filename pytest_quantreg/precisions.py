"""The precision registry: what a precision is, how one is built, and how names are chosen.

A precision turns a model folder into something that maps a tokenized sample to logits on a
device and knows its size: a torch module, or an object such as an ONNX Runtime session (see
:func:`pytest_quantreg.models.device_of`). The built-ins live in :mod:`pytest_quantreg.backends`,
one module per quantization backend; users add their own through the ``pytest_quantreg_precisions``
hook (see :mod:`pytest_quantreg.hooks`). A precision marked ``compilable`` (its build gives a torch
module) also runs under ``torch.compile`` as ``NAME+compile``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_quantreg.errors import QuantregError

if TYPE_CHECKING:
    import torch

ALIASES_BY_DEVICE: dict[str, dict[str, str]] = {
    "cpu": {"int8": "int8-dynamic", "int4": "int4-nf4"},
    "cuda": {"int8": "int8-bnb", "int4": "int4-nf4"},
}
DEFAULT_PRECISIONS = "fp32,fp16,int8"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
COMPILE_SUFFIX = "+compile"


@dataclass(frozen=True)
class BuildContext:
    """What a build function gets: the FP32 model folder, the target device, whether the folder's
    own code may run (``--quantreg-trust-remote-code``), and the Linear layers to keep in FP32
    (``--quantreg-keep-fp32`` resolved to module names; by default the output head)."""

    model_dir: Path
    device: str
    trust_remote_code: bool = False
    keep_fp32: tuple[str, ...] = ()

    def keeps(self, module_name: str) -> bool:
        """Whether the Linear layer ``module_name`` is to stay in FP32."""
        return module_name in self.keep_fp32

    def load(self, **kwargs: Any) -> torch.nn.Module:
        """Load the model folder (offline, safetensors) with extra ``from_pretrained`` arguments.

        Without a ``device_map`` the model is moved to :attr:`device`.
        """
        from pytest_quantreg.models import load_classifier

        model: torch.nn.Module = load_classifier(self.model_dir, trust_remote_code=self.trust_remote_code, **kwargs)
        return model if "device_map" in kwargs else model.to(self.device)


Builder = Callable[[BuildContext], Any]  # a torch module, or an object with __call__(**encoding) -> .logits, device, size_mb()


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
    backend: str = ""  # whose API keeps layers in FP32 (the fallback search prints that setting): see units.settings
    extra: str = ""  # the pytest-quantreg extra that installs ``requires`` (torchao, onnx); "" for core dependencies
    unsupported: Callable[[str], str | None] | None = None  # why it cannot run on a device type here, beyond devices/requires
    compilable: bool = False  # its build gives a torch module that torch.compile can run: NAME+compile is offered

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
        return {"max_drop": self.max_drop, "max_flip_rate": self.max_flip_rate, "max_kl": self.max_kl}.get(key)


def _quiet_import(module: str) -> None:
    """Import ``module`` with its loggers' warnings held back: on AVX-512 BF16 CPUs bitsandbytes logs at
    import that an optional kernel package (fetched from a hub) is missing, and torchao that its
    CUDA-only extensions do not load; neither says anything about the model under test."""
    from pytest_quantreg.models import LOAD_NOISE, quiet_loggers

    with quiet_loggers(module, *LOAD_NOISE):
        importlib.import_module(module)


class Registry:
    """Precisions by name, in registration order."""

    def __init__(self, precisions: Iterable[Precision] = ()) -> None:
        self._items: dict[str, Precision] = {}
        for precision in precisions:
            self.add(precision)

    def add(self, precision: Precision) -> None:
        if not _NAME.match(precision.name):
            raise QuantregError(f"precision name {precision.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if precision.name in self._items or precision.name in {"all", *ALIASES_BY_DEVICE["cpu"]}:
            raise QuantregError(f"precision {precision.name!r} is already registered; choose another name")
        self._items[precision.name] = precision

    def register(
        self,
        name: str,
        build: Builder,
        *,
        devices: Iterable[str] = ("cpu", "cuda"),
        description: str = "",
        max_drop: float = 1.0,
        max_latency_ratio: Mapping[str, float] | None = None,
        requires: Iterable[str] = (),
        max_flip_rate: float | None = None,
        max_kl: float | None = None,
        max_latency_increase: float | None = 10.0,
        backend: str = "",
        compilable: bool = False,
    ) -> None:
        """Register a custom precision (the argument of the ``pytest_quantreg_precisions`` hook)."""
        devices = frozenset(devices)
        if not devices or not devices <= {"cpu", "cuda"}:
            raise QuantregError(f"precision {name!r}: devices must be a subset of cpu, cuda; got {sorted(devices)}")
        self.add(
            Precision(
                name=name,
                build=build,
                devices=devices,
                description=description,
                max_drop=max_drop,
                max_latency_ratio=dict(max_latency_ratio or {}),
                requires=tuple(requires),
                max_flip_rate=max_flip_rate,
                max_kl=max_kl,
                max_latency_increase=max_latency_increase,
                backend=backend,
                compilable=compilable,
            )
        )

    def replace(self, name: str, **changes: Any) -> None:
        """Change a registered precision: wrap a built-in's build, or change its default gates, e.g.
        ``registry.replace("int8-dynamic", build=compiled(registry["int8-dynamic"].build))``."""
        if name not in self._items:
            raise QuantregError(f"no precision {name!r} to replace; registered: {', '.join(self.names())}")
        self._items[name] = dataclasses.replace(self._items[name], **changes)

    def __getitem__(self, name: str) -> Precision:
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def canonical(self, name: str, device_type: str) -> str:
        """The registered name for ``name`` or an alias on this device type; ``NAME+compile`` of a
        precision that builds a torch module is registered on first use."""
        key = name.strip().lower()
        key = ALIASES_BY_DEVICE[device_type].get(key, key)
        base = key.removesuffix(COMPILE_SUFFIX)
        if key not in self._items and key != base and base in self._items and self._items[base].compilable:
            from pytest_quantreg.backends.compiled import compiled

            self.add(compiled(self._items[base]))
        if key not in self._items:
            valid = ", ".join([*self.names(), *ALIASES_BY_DEVICE[device_type], "all"])
            compilable = [n for n in self.names() if self._items[n].compilable]
            more = f" (and NAME+compile of {_abbreviated(compilable)})" if compilable else ""
            raise QuantregError(f"unknown precision {name.strip()!r}; valid names: {valid}{more}")
        return key

    def select(self, spec: str, device_type: str) -> list[str]:
        """Resolve a comma-separated list of names, aliases and ``all`` (every precision whose packages are
        installed); FP32 first, no repeats."""
        chosen: list[str] = []
        for raw in filter(None, (part.strip() for part in spec.split(","))):
            expanded = [n for n in self.names() if self[n].installed()] if raw.lower() == "all" else [self.canonical(raw, device_type)]
            chosen.extend(n for n in expanded if n not in chosen)
        if not chosen:
            raise QuantregError(f"no precision selected in {spec!r}; name at least one, e.g. --precision=fp32,int8")
        return sorted(chosen, key=lambda n: n != "fp32")


def _abbreviated(names: list[str]) -> str:
    """``fp32, fp16, torchao-*``: names that share a prefix up to their first '-' with two others folded into one."""
    prefixes = [name.split("-", 1)[0] for name in names]
    shown: list[str] = []
    for name, prefix in zip(names, prefixes, strict=True):
        item = f"{prefix}-*" if "-" in name and prefixes.count(prefix) > 2 else name
        if item not in shown:
            shown.append(item)
    return ", ".join(shown)
