"""The baseline file of a run: the only place that reads or writes it.

The file is read once and again only when it changed on disk (a write of this run, or of a
pytest-xdist worker), and checked against what this run measures before anything is judged by it.
Its name needs no model: a file that cannot be read is found out before the model is built (or,
for the example, trained).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_quantreg.backends.registry import versions
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge import baselines
from pytest_quantreg.judge.baselines import Baseline, Provenance
from pytest_quantreg.judge.stats import LatencyRatio
from pytest_quantreg.measure.evaluation import Measurement
from pytest_quantreg.measure.hardware import Hardware


class BaselineStore:
    """The stored FP32 baseline of one model, sample and device type, in ``directory``."""

    def __init__(self, directory: Path, filename: str, provenance: Callable[[], Provenance]) -> None:
        self.path = baselines.baseline_path(directory, filename)
        self._provenance = provenance  # hashes the weights: called only to check a file that reads
        self._read: tuple[tuple[int, int] | None, Baseline | None, str | None] | None = None  # (stamp, baseline, why unusable)

    def _load(self) -> tuple[Baseline | None, str | None]:
        """The baseline and None, or None and why it cannot be used (None, None: there is no file)."""
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if self._read is None or self._read[0] != stamp:
            try:
                found, problem = baselines.load(self.path), None
            except QuantregError as exc:
                found, problem = None, str(exc)
            if found is not None:
                problem = found.mismatch(self._provenance())
                if problem:
                    problem += f"\n  not compared. If the change is intended, re-record with {baselines.UPDATE_FLAG}"
            self._read = (stamp, found if problem is None else None, problem)
        return self._read[1], self._read[2]

    def usable(self) -> Baseline | None:
        """The baseline when it exists, reads and matches this run; None otherwise (never raises)."""
        return self._load()[0]

    def required(self) -> Baseline:
        """The baseline; :class:`QuantregError` saying how to record it when it is missing or unusable."""
        found, problem = self._load()
        if problem is not None:
            raise QuantregError(problem)
        if found is None:
            raise QuantregError(
                f"no FP32 baseline for this model, sample and device at {self.path}\n"
                f"  record it with: pytest {baselines.UPDATE_FLAG}  (then commit the file)"
            )
        return found

    def latency_ratio(self, hardware_class: str, key: str) -> LatencyRatio | None:
        """The latency ratio recorded for ``key`` on ``hardware_class`` (None without a usable baseline)."""
        found = self.usable()
        return found.latency_ratio(hardware_class, key) if found is not None else None

    def unreadable(self) -> str | None:
        """Why the file cannot be read as a baseline, found without the model (None: it reads, or there is none)."""
        try:
            baselines.load(self.path)
        except QuantregError as exc:
            return str(exc)
        return None

    def record_fp32(self, measurement: Measurement, hardware: Hardware) -> str:
        """Write FP32's outcome (``--quantreg-update-baselines``); returns created, updated or unchanged."""
        return baselines.write(self.path, baselines.record(measurement, self._provenance(), hardware, versions()))

    def record_latency(self, hardware: Hardware, ratios: dict[str, LatencyRatio]) -> None:
        """Store latency ratios for ``hardware``'s class in the existing baseline."""
        baselines.write_latency(self.path, hardware, ratios, versions())

    def record_outcomes(self, hardware: Hardware, outcomes: dict[str, dict[str, Any]]) -> None:
        """Store precisions' outcomes for ``hardware``'s class in the existing baseline."""
        baselines.write_outcomes(self.path, hardware, outcomes, versions())

    def record_fallback(self, sets: dict[str, dict[str, Any]]) -> None:
        """Store the fallback searches' sets in the existing baseline."""
        baselines.write_fallback(self.path, sets, versions())
