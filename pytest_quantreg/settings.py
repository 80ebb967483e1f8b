"""The quantreg settings of a run, resolved once from the command line and the ini file into frozen
:class:`Settings`: the command line wins, and every value is checked here, so a mistake is a usage
error before any model loads."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.measure import keep
from pytest_quantreg.measure.data import SampleSpec, parse_sample_spec
from pytest_quantreg.options import FALLBACK_MODES, GATES, MIN_PAIRS, Gate

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Limits:
    """A threshold option as given on the command line and in the ini file, per precision."""

    option: str
    command_line: dict[str, float]
    ini: dict[str, float]

    def canonical(self, canonical_name: Callable[[str], str]) -> Limits:
        """The same limits with precision names and aliases resolved (unknown names raise)."""

        def resolve(table: dict[str, float]) -> dict[str, float]:
            return {key if key == "*" else canonical_name(key): value for key, value in table.items()}

        return Limits(self.option, resolve(self.command_line), resolve(self.ini))

    def lookup(self, precision: str, marker: float | None, default: float | None) -> tuple[float | None, str]:
        """The limit for ``precision`` and where it came from: command line > marker > ini > default."""
        for table, source in (
            (self.command_line, "command line"),
            ({"*": marker} if marker is not None else {}, "quantreg marker"),
            (self.ini, "ini file"),
        ):
            for key in (precision, "*"):
                if key in table:
                    return table[key], f"{source}: {self.option}" if source != "quantreg marker" else source
        return default, f"default for {precision}"


@dataclass(frozen=True)
class Settings:
    """Every quantreg setting of this run, checked."""

    precision: str
    device: str
    model: Path | None
    dataset: Path | None
    text_column: str
    label_column: str
    samples: SampleSpec
    seed: int
    calibration_samples: int
    calibration_file: Path | None
    max_length: int
    warmup: int
    batch_size: int
    latency_pairs: int
    metric: str
    keep_fp32: tuple[str, ...]  # the layers every precision that quantizes Linear layers keeps in FP32 ...
    keep_by_precision: dict[str, tuple[str, ...]]  # ... unless it has its own setting here
    fallback: str
    fallback_max_passes: int
    fallback_max_seconds: float
    fallback_headroom: float
    fallback_report: Path | None
    baseline_dir: Path
    update_baselines: bool
    record: bool
    record_latency: bool
    trust_remote_code: bool
    accept_reference: bool
    weights_report: Path | None
    report_dir: Path | None
    limits: dict[str, Limits]
    library_tracebacks: bool = False  # -v or --tb=long: show a library's traceback under its one-line failure

    @property
    def records_latency(self) -> bool:
        """Whether this run writes its latency ratios (and so does not judge against the old ones)."""
        return self.update_baselines or self.record or self.record_latency

    @property
    def records_outcomes(self) -> bool:
        """Whether this run writes each precision's outcome (and so does not judge against the old ones)."""
        return self.update_baselines or self.record

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def keep_for(self, precision: str) -> tuple[str, ...]:
        """The ``--quantreg-keep-fp32`` tokens of ``precision``: its own setting, else every precision's."""
        return self.keep_by_precision.get(precision, self.keep_fp32)

    def with_canonical_limits(self, canonical_name: Callable[[str], str]) -> Settings:
        """Settings whose threshold and keep-setting keys name registered precisions."""
        limits = {key: limits.canonical(canonical_name) for key, limits in self.limits.items()}
        return replace(self, limits=limits, keep_by_precision={canonical_name(k): v for k, v in self.keep_by_precision.items()})


def resolve(config: pytest.Config) -> Settings:
    """Read the command line (winning) and the ini file; raise ``pytest.UsageError`` with the fix."""

    def get(ini: str) -> str:
        value = config.getoption(ini)
        return str(value if value is not None else config.getini(ini)).strip()

    def path(ini: str) -> Path | None:
        value = get(ini)
        return (config.invocation_params.dir / value).resolve() if value else None

    def flag(ini: str) -> bool:
        value = config.getoption(ini)
        return bool(value if value is not None else config.getini(ini))

    try:
        keep_setting = keep.parse_setting(get("quantreg_keep_fp32"))
        return Settings(
            precision=get("quantreg_precision"),
            device=_device(get("quantreg_device")),
            model=path("quantreg_model"),
            dataset=path("quantreg_dataset"),
            text_column=get("quantreg_text_column"),
            label_column=get("quantreg_label_column"),
            samples=parse_sample_spec(get("quantreg_samples")),
            seed=_integer("--quantreg-seed", get("quantreg_seed"), minimum=0),
            calibration_samples=_integer("--quantreg-calibration-samples", get("quantreg_calibration_samples"), minimum=1),
            calibration_file=path("quantreg_calibration_file"),
            max_length=_integer("--quantreg-max-length", get("quantreg_max_length"), minimum=8),
            warmup=_integer("--quantreg-warmup", get("quantreg_warmup"), minimum=0),
            batch_size=_integer("--quantreg-batch-size", get("quantreg_batch_size"), minimum=1),
            latency_pairs=_integer("--quantreg-latency-pairs", get("quantreg_latency_pairs"), minimum=MIN_PAIRS),
            metric=get("quantreg_metric"),
            keep_fp32=keep_setting[0],
            keep_by_precision=keep_setting[1],
            fallback=_choice("--quantreg-fallback", get("quantreg_fallback"), FALLBACK_MODES),
            fallback_max_passes=_integer("--quantreg-fallback-max-passes", get("quantreg_fallback_max_passes"), minimum=1),
            fallback_max_seconds=_seconds("--quantreg-fallback-max-seconds", get("quantreg_fallback_max_seconds")),
            fallback_headroom=_percent("--quantreg-fallback-headroom", get("quantreg_fallback_headroom")),
            fallback_report=path("quantreg_fallback_report"),
            baseline_dir=(config.rootpath / get("quantreg_baseline_dir")).resolve(),
            update_baselines=flag("quantreg_update_baselines"),
            record=flag("quantreg_record"),
            record_latency=flag("quantreg_record_latency"),
            trust_remote_code=flag("quantreg_trust_remote_code"),
            accept_reference=flag("quantreg_accept_reference"),
            weights_report=path("quantreg_weights_report"),
            report_dir=path("quantreg_report"),
            limits={gate.key: _limits(config, gate) for gate in GATES},
            library_tracebacks=config.get_verbosity() > 0 or config.getoption("tbstyle", "auto") in ("long", "native"),
        )
    except QuantregError as exc:
        raise pytest.UsageError(str(exc)) from None


def _limits(config: pytest.Config, gate: Gate) -> Limits:
    command_line = config.getoption(gate.ini)
    return Limits(
        option=gate.option,
        command_line=parse_thresholds(gate, command_line) if command_line is not None else {},
        ini=parse_thresholds(gate, str(config.getini(gate.ini))),
    )


def parse_thresholds(gate: Gate, value: str) -> dict[str, float]:
    """``1.5`` -> every precision (key ``*``); ``int8=1.5,fp16=0.5`` -> per precision."""
    limits: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, number = part.rpartition("=")
        limits[name.strip().lower() or "*"] = threshold(gate, number)
    return limits


def threshold(gate: Gate, value: object, where: str = "") -> float:
    """A finite number from 0 to the gate's upper bound, or a ``QuantregError`` naming the option."""
    name = where or gate.option
    try:
        number = float(str(value).strip().rstrip("%"))
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise QuantregError(
            f"{name}: {value!r} is not a non-negative number; use e.g. {gate.option}=1.5 or {gate.option}=int8=1.5,fp16=0.5"
        )
    if number > gate.upper or (gate.key == "alpha" and number == 0):
        low = "above 0" if gate.key == "alpha" else "from 0"
        raise QuantregError(f"{name}: {value!r} is out of range; use a number {low} to {gate.upper:g}")
    return number


def _device(value: str) -> str:
    text = value.strip().lower()
    if not _DEVICE.match(text):
        raise QuantregError(f"--device: {value!r} is not a device; use cpu, cuda, cuda:N (N = GPU index) or auto")
    return text


def _choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    text = value.strip().lower()
    if text not in choices:
        raise QuantregError(f"{option}: {value!r} is not one of {', '.join(choices)}; use e.g. {option}={choices[1]}")
    return text


def _seconds(option: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise QuantregError(f"{option}: {value!r} is not a positive number of seconds; use e.g. {option}=300")
    return number


def _percent(option: str, value: str) -> float:
    try:
        number = float(value.strip().rstrip("%"))
    except ValueError:
        number = math.nan
    if not 0 <= number < 100:
        raise QuantregError(f"{option}: {value!r} is not a percentage from 0 up to (not including) 100; use e.g. {option}=20")
    return number


def _integer(option: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise QuantregError(f"{option}: {value!r} is not a whole number; use e.g. {option}={max(minimum, 1)}") from None
    if number < minimum:
        raise QuantregError(f"{option}: {number} is below the minimum {minimum}")
    return number
