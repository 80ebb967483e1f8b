"""The hardware a run measures on: what quantized kernels depend on, and the class latency is judged in.

CPUs of one "kind" differ in the instructions quantized kernels use (AVX2, AVX-512, VNNI,
AVX-512 BF16, AMX), and torch picks its own kernels by its CPU capability, which
``ATEN_CPU_CAPABILITY`` can lower. Two runs' latency ratios are comparable only within one
hardware class: the same CPU (or GPU) model, torch capability, instruction set and thread count.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# torch.cpu's checks of the CPU itself (cpuinfo), which ATEN_CPU_CAPABILITY does not change
_FEATURES = (
    ("avx2", "_is_avx2_supported"),
    ("avx512", "_is_avx512_supported"),
    ("vnni", "_is_vnni_supported"),
    ("avx512_bf16", "_is_avx512_bf16_supported"),
    ("amx", "_is_amx_tile_supported"),
)
# Environment variables that make torch and its kernel libraries use an older CPU generation's code
TORCH_KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")
# oneDNN's cap for each torch capability: a backend whose kernels come through oneDNN follows it, so a run
# that emulates an older CPU for torch sets it too (and each backend's own cap, its Backend.kernel_env)
ONEDNN_ISA = {"default": "SSE41", "avx2": "AVX2"}


def capability_env(capability: str, backend_env: Sequence[str] = ()) -> dict[str, str]:
    """The environment that runs torch's CPU kernels (and oneDNN's, and those capped by the variables
    ``backend_env``) as on an older CPU generation (``ATEN_CPU_CAPABILITY=default`` or ``avx2``); read when
    the libraries load, so set it for a new process."""
    isa = ONEDNN_ISA[capability.lower()]
    return {"ATEN_CPU_CAPABILITY": capability, "ONEDNN_MAX_CPU_ISA": isa, **dict.fromkeys(backend_env, isa)}


@dataclass(frozen=True)
class Hardware:
    """The device of a run, as far as kernels and timings depend on it."""

    device_type: str
    name: str
    arch: str
    capability: str  # torch's CPU capability (AVX2, AVX512, DEFAULT, ...) or the CUDA compute capability (sm_90)
    features: tuple[str, ...]  # instruction-set extensions present on the CPU
    quantized_engine: str
    threads: int
    kernel_env: tuple[tuple[str, str], ...] = ()  # kernel caps set for this run (TORCH_KERNEL_ENV, the backends')

    @property
    def hardware_class(self) -> str:
        """The key latency records are stored and compared under."""
        if self.device_type == "cuda":
            return f"cuda | {self.name} | {self.capability}"
        features = ",".join(self.features) or "no avx2"
        return f"cpu | {self.name} | {self.arch} | torch {self.capability} | {features} | {self.threads} threads"

    def describe(self) -> str:
        """One line for the header and failure messages."""
        if self.device_type == "cuda":
            return f"{self.name} (compute capability {self.capability}), torch quantized engine {self.quantized_engine}"
        present = set(self.features)
        isa = ", ".join(f"{name} {'yes' if name in present else 'no'}" for name, _ in _FEATURES)
        env = "".join(f", {key}={value}" for key, value in self.kernel_env)
        return (
            f"{self.name} ({self.arch}), torch CPU capability {self.capability}{env}, {isa}, "
            f"quantized engine {self.quantized_engine}, {self.threads} threads"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kernel_env": dict(self.kernel_env), "hardware_class": self.hardware_class}


def detect(device: str, backend_env: Sequence[str] = ()) -> Hardware:
    """The hardware of ``device`` (``cpu`` or ``cuda:N``) as this process sees it, with the kernel caps
    set in its environment (torch's and the backends' ``backend_env``)."""
    import torch

    engine = str(torch.backends.quantized.engine)
    threads = torch.get_num_threads()
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(device)
        return Hardware("cuda", str(torch.cuda.get_device_name(device)), platform.machine(), f"sm_{major}{minor}", (), engine, threads)
    env = tuple((key, os.environ[key]) for key in (*TORCH_KERNEL_ENV, *backend_env) if os.environ.get(key))
    return Hardware("cpu", cpu_name(), platform.machine(), torch.backends.cpu.get_cpu_capability(), cpu_features(), engine, threads, env)


def cpu_features() -> tuple[str, ...]:
    """The CPU's instruction-set extensions that quantized kernels choose by (from torch's cpuinfo)."""
    import torch

    present = []
    for name, check in _FEATURES:
        probe = getattr(torch.cpu, check, None)
        if probe is not None and probe():
            present.append(name)
    return tuple(present)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def int8_reduce_range(device: str) -> bool:
    """Whether int8 kernels on ``device`` should quantize to a reduced range (7 bits) so that their products
    cannot overflow: on a CPU without VNNI, as the int8 backends advise. A run whose torch kernels
    are capped below AVX-512 (``ATEN_CPU_CAPABILITY=avx2`` or ``default``) builds as such a CPU would, so
    that one machine can check the verdict of another generation."""
    if not device.startswith("cpu"):
        return False
    import torch

    capped = torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2")
    return capped or "vnni" not in cpu_features()


def version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(libraries: Sequence[str]) -> dict[str, str]:
    """Versions of Python and of ``libraries`` (the ones whose changes this tool guards against)."""
    return {"python": sys.version.split()[0], **{name: version(name) or "not installed" for name in libraries}}
