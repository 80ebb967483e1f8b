"""The registry: precisions by name, their aliases, the default selection and the built-ins.

The built-in precisions come from one module per backend (:mod:`.casts`, :mod:`.torch_dynamic`,
:mod:`.bnb`, :mod:`.torchao`, :mod:`.ort`, :mod:`.openvino`); each module's ``precisions()`` lists what it offers and its
``BACKEND`` everything else the plugin knows of its library (how its API keeps layers in FP32, how
its layers read back to FP32, its distributions, known failures and noise). Adding a backend is one
module and one line in :data:`BUILTIN`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

from pytest_quantreg.backends import bnb, casts, openvino, ort, torch_dynamic, torchao
from pytest_quantreg.backends.base import COMPILE_SUFFIX, Backend, Builder, Dequantizer, KnownFailure, Precision
from pytest_quantreg.backends.compiled import compiled
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.measure import hardware, keep
from pytest_quantreg.measure.hardware import library_versions
from pytest_quantreg.measure.loading import add_noise

ALIASES_BY_DEVICE: dict[str, dict[str, str]] = {
    "cpu": {"int8": "int8-dynamic", "int4": "int4-nf4"},
    "cuda": {"int8": "int8-bnb", "int4": "int4-nf4"},
}
DEFAULT_PRECISIONS = "fp32,fp16,int8"
BUILTIN: tuple[ModuleType, ...] = (casts, torch_dynamic, bnb, torchao, ort, openvino)  # in the order ``all`` runs them
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
REGISTERABLE = frozenset(f.name for f in dataclasses.fields(Precision)) - {"name", "build"}
CORE_LIBRARIES = ("torch", "transformers")
SUPPORT_LIBRARIES = ("tokenizers", "numpy")


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

    def register(self, name: str, build: Builder, **fields: Any) -> None:
        """Register a custom precision (the argument of the ``pytest_quantreg_precisions`` hook): ``fields``
        are :class:`~pytest_quantreg.backends.base.Precision`'s, e.g. ``devices=["cpu"], max_drop=2.0``."""
        unknown = sorted(set(fields) - REGISTERABLE)
        if unknown:
            raise QuantregError(
                f"precision {name!r}: unknown field(s) {', '.join(unknown)}; a precision has {', '.join(sorted(REGISTERABLE))}"
            )
        devices = frozenset(fields.pop("devices", ("cpu", "cuda")))
        if not devices or not devices <= {"cpu", "cuda"}:
            raise QuantregError(f"precision {name!r}: devices must be a subset of cpu, cuda; got {sorted(devices)}")
        fields["max_latency_ratio"] = dict(fields.get("max_latency_ratio") or {})
        fields["requires"] = tuple(fields.get("requires", ()))
        self.add(Precision(name=name, build=build, devices=devices, **fields))

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


def builtin_registry() -> Registry:
    """The built-in precisions with their documented default gates, in the order ``all`` runs them.

    The gates of the seed's precisions were set from the example measured under
    ATEN_CPU_CAPABILITY=default, avx2 and AVX512 on one machine (benchmarks/capabilities.py;
    benchmarks/RESULTS.md, section 8): every default passes all three with headroom, and a broken
    int8 fails on all three. Latency ratios are medians of per-sample ratios to FP32 timed back to
    back in the same run; a slowdown of any precision is caught by ``max_latency_increase`` against
    the ratio recorded for the same hardware class.
    """
    return Registry([precision for module in BUILTIN for precision in module.precisions()])


def backends() -> tuple[Backend, ...]:
    """The built-in backends, in :data:`BUILTIN`'s order (a module without quantized layers has none)."""
    return tuple(module.BACKEND for module in BUILTIN if hasattr(module, "BACKEND"))


def dequantizers() -> tuple[Dequantizer, ...]:
    """How the weight report reads each built-in backend's quantized layers back to FP32."""
    return tuple(backend.dequantize for backend in backends() if backend.dequantize is not None)


def libraries() -> tuple[str, ...]:
    """The distributions whose versions a run records, and whose exceptions are reported as theirs:
    torch and transformers, each built-in backend's, then tokenizers and numpy."""
    found = [*CORE_LIBRARIES, *(name for backend in backends() for name in backend.libraries), *SUPPORT_LIBRARIES]
    return tuple(dict.fromkeys(found))


def versions() -> dict[str, str]:
    """The installed versions of Python and of :func:`libraries` ("not installed" where one is not)."""
    return library_versions(libraries())


def kernel_env() -> tuple[str, ...]:
    """The environment variables that cap the built-in backends' own CPU kernels."""
    return tuple(name for backend in backends() for name in backend.kernel_env)


def capability_env(capability: str) -> dict[str, str]:
    """The environment that runs torch's and every built-in backend's CPU kernels as on an older CPU
    generation (``default`` or ``avx2``): set it for a new process."""
    return hardware.capability_env(capability, kernel_env())


def known_failures() -> tuple[KnownFailure, ...]:
    """The built-in backends' exceptions with a known fix."""
    return tuple(failure for backend in backends() for failure in backend.known_failures)


def keep_settings(tokens: Sequence[str], layers: Sequence[str]) -> dict[str, str]:
    """The setting that keeps ``layers`` in FP32: this plugin's option (``tokens``), then each built-in
    backend's own API, by the backend's name."""
    return {"pytest-quantreg": f"{keep.OPTION}={keep.describe(tokens)}", **{b.name: b.keep_setting(layers) for b in backends()}}


for _backend in backends():  # what each built-in backend says that says nothing about the model is filtered from now on
    add_noise(_backend.noise)
