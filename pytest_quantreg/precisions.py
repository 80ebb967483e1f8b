"""The precision registry: one build function per quantization backend.

A precision turns a model folder into a model on a device. Built-ins cover the seed's methods
(torch dynamic int8 on CPU, bitsandbytes LLM.int8 and 4-bit); users add their own through the
``pytest_quantreg_precisions`` hook (see :mod:`pytest_quantreg.hooks`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
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
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


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


Builder = Callable[[BuildContext], "torch.nn.Module"]


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

    def unavailable_reason(self, device_type: str) -> str | None:
        """Why this precision cannot run on ``device_type`` here, or None when it can."""
        if device_type not in self.devices:
            return f"{self.name} does not run on {device_type} (runs on: {', '.join(sorted(self.devices))})"
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"{self.name} needs the '{module}' package, which is not installed (`pip install {module}`)"
        return None

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
    import that an optional kernel package (fetched from a hub) is missing, which says nothing about
    the model under test."""
    logger = logging.getLogger(module)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module(module)
    finally:
        logger.setLevel(level)


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
        """The registered name for ``name`` or an alias on this device type."""
        key = name.strip().lower()
        key = ALIASES_BY_DEVICE[device_type].get(key, key)
        if key not in self._items:
            valid = ", ".join([*self.names(), *ALIASES_BY_DEVICE[device_type], "all"])
            raise QuantregError(f"unknown precision {name.strip()!r}; valid names: {valid}")
        return key

    def select(self, spec: str, device_type: str) -> list[str]:
        """Resolve a comma-separated list of names, aliases and ``all``; FP32 first, no repeats."""
        chosen: list[str] = []
        for raw in filter(None, (part.strip() for part in spec.split(","))):
            expanded = self.names() if raw.lower() == "all" else [self.canonical(raw, device_type)]
            chosen.extend(n for n in expanded if n not in chosen)
        if not chosen:
            raise QuantregError(f"no precision selected in {spec!r}; name at least one, e.g. --precision=fp32,int8")
        return sorted(chosen, key=lambda n: n != "fp32")


def _fp32(ctx: BuildContext) -> torch.nn.Module:
    return ctx.load()


def _fp16(ctx: BuildContext) -> torch.nn.Module:
    import torch

    return ctx.load(dtype=torch.float16)


def _bf16(ctx: BuildContext) -> torch.nn.Module:
    import torch

    return ctx.load(dtype=torch.bfloat16)


def _int8_dynamic(ctx: BuildContext) -> torch.nn.Module:
    import torch

    model = ctx.load()
    linear = {name for name, module in model.named_modules() if type(module) is torch.nn.Linear and not ctx.keeps(name)}
    return torch.ao.quantization.quantize_dynamic(model, linear, dtype=torch.qint8)


def _bnb(**config: Any) -> Builder:
    def build(ctx: BuildContext) -> torch.nn.Module:
        import torch
        from transformers import BitsAndBytesConfig

        options = dict(config)
        if options.get("load_in_4bit"):
            options["bnb_4bit_compute_dtype"] = torch.float16 if ctx.device.startswith("cuda") else torch.float32
        options["llm_int8_skip_modules"] = list(ctx.keep_fp32)  # [] quantizes all: None would add transformers' own picks
        device_map: dict[str, Any] = {"": torch.device(ctx.device)}
        return ctx.load(quantization_config=BitsAndBytesConfig(**options), device_map=device_map)

    return build


def builtin_registry() -> Registry:
    """The built-in precisions with their documented default gates.

    Set from the example measured under ATEN_CPU_CAPABILITY=default, avx2 and AVX512 on one
    machine (benchmarks/capabilities.py; benchmarks/RESULTS.md, section 8): every default passes
    all three with headroom (smallest: int8-dynamic's flips, 15% against 10.59%, and drop, 6.0
    against 4.13 points), and an int8-dynamic with 4-bit FFN input weights (9.8 points lost, 24%
    flips) fails on all three. Latency ratios are medians of per-sample ratios to FP32 timed back to
    back in the same run. On a CPU only int8-dynamic's 0.9 is a speed contract (it measures 0.43
    with VNNI, 0.8 with AVX2 only); fp16 ran 2.2x FP32 natively and 14.6-17.4x under
    ATEN_CPU_CAPABILITY=default, so the fp16 / bf16 / bitsandbytes CPU limits are ceilings against
    a catastrophe. A slowdown of any precision is caught by ``max_latency_increase`` against the
    ratio recorded for the same hardware class.
    """
    bnb = ("bitsandbytes", "accelerate")
    return Registry(
        [
            Precision(
                "fp32",
                _fp32,
                description="the FP32 original, checked against its stored baseline",
                max_drop=0.5,
                max_latency_ratio={},
                max_flip_rate=1.0,
                max_kl=0.001,
            ),
            Precision(
                "fp16",
                _fp16,
                description="half precision weights and activations",
                max_drop=1.0,
                max_latency_ratio={"cpu": 40.0, "cuda": 1.2},
                max_flip_rate=2.0,
                max_kl=0.005,
            ),
            Precision(
                "bf16",
                _bf16,
                description="bfloat16 weights and activations",
                max_drop=3.0,
                max_latency_ratio={"cpu": 40.0, "cuda": 1.2},
                max_flip_rate=3.0,
                max_kl=0.01,
            ),
            Precision(
                "int8-dynamic",
                _int8_dynamic,
                devices=frozenset({"cpu"}),
                max_drop=6.0,
                description="torch quantize_dynamic (qint8) on the Linear layers",
                max_latency_ratio={"cpu": 0.9},
                max_flip_rate=15.0,
                max_kl=0.1,
                backend="torch.ao quantize_dynamic",
            ),
            Precision(
                "int8-bnb",
                _bnb(load_in_8bit=True),
                requires=bnb,
                max_drop=3.0,
                description="bitsandbytes LLM.int8 (BitsAndBytesConfig(load_in_8bit=True))",
                max_latency_ratio={"cpu": 8.0, "cuda": 4.0},
                max_flip_rate=3.0,
                max_kl=0.01,
                backend="bitsandbytes",
            ),
            *(
                Precision(
                    f"int4-{kind}",
                    _bnb(load_in_4bit=True, bnb_4bit_quant_type=kind),
                    requires=bnb,
                    max_drop=10.0,
                    description=f"bitsandbytes 4-bit {what} weights",
                    max_latency_ratio={"cpu": 4.0, "cuda": 4.0},
                    max_flip_rate=10.0,
                    max_kl=0.1,
                    backend="bitsandbytes",
                )
                for kind, what in (("nf4", "NormalFloat"), ("fp4", "float"))
            ),
        ]
    )
