"""What a run found: measurements, verdicts, weight and fallback reports, files written, notes and skips.

A pytest-xdist worker sends its ledger to the controller as plain types (:meth:`Ledger.to_json`),
and the controller merges it into its own (:meth:`Ledger.merge`), so ``pytest -n 2`` reports the
same as a serial run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_quantreg.judge.verdict import Verdict
from pytest_quantreg.measure.evaluation import Measurement
from pytest_quantreg.measure.weights import LayerError, WeightReport


@dataclass
class Ledger:
    """One run's findings, keyed by measurement label (the precision's name, or ``name[keep-fp32=...]``)."""

    measurements: dict[str, Measurement] = field(default_factory=dict)
    weight_reports: dict[str, WeightReport] = field(default_factory=dict)
    fallback_reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> the search's report as JSON
    verdicts: dict[str, dict[str, Verdict]] = field(default_factory=dict)  # label -> gate -> its verdict
    written: list[tuple[str, Path]] = field(default_factory=list)  # (outcome, path) of every file written
    skipped: dict[str, str] = field(default_factory=dict)  # what was not done, and why
    notes: dict[str, str] = field(default_factory=dict)  # end-of-run lines, by topic
    unrecorded: list[str] = field(default_factory=list)  # precisions whose latency had no record for this hardware class
    unjudged_drift: dict[str, list[str]] = field(default_factory=dict)  # why no outcome record was compared -> precisions
    requested: bool = False  # a collected test is parametrized over the precisions
    asked: list[str] = field(default_factory=list)  # the precisions some collected test is parametrized with

    def ordered(self, selected: list[str]) -> dict[str, Measurement]:
        """The measurements in the order of ``selected`` (FP32 first), each marker variant after its precision."""
        order = {name: index for index, name in enumerate(selected)}

        def key(label: str) -> tuple[int, str]:
            return order.get(label.split("[", 1)[0], len(order)), label

        return {label: self.measurements[label] for label in sorted(self.measurements, key=key)}

    def wrote(self, outcome: str, path: Path) -> None:
        """Note a file written (``outcome``: written, created, updated), once."""
        if (outcome, path) not in self.written:
            self.written.append((outcome, path))

    def to_json(self) -> dict[str, Any]:
        """The ledger in plain types (execnet serializes lists, dicts, numbers and strings)."""
        return {
            "measurements": [dataclasses.asdict(m) for m in self.measurements.values()],
            "weight_reports": [dataclasses.asdict(r) for r in self.weight_reports.values()],
            "fallback_reports": dict(self.fallback_reports),
            "verdicts": {label: {gate: dataclasses.asdict(v) for gate, v in gates.items()} for label, gates in self.verdicts.items()},
            "written": [[outcome, str(path)] for outcome, path in self.written],
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "unrecorded": list(self.unrecorded),
            "unjudged_drift": {why: list(names) for why, names in self.unjudged_drift.items()},
            "requested": self.requested,
            "asked": list(self.asked),
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add another process's ledger (:meth:`to_json`) to this one."""
        for item in data.get("measurements", []):
            measurement = Measurement(**_tuples(item))
            self.measurements[measurement.precision] = measurement
        for item in data.get("weight_reports", []):
            layers = tuple(LayerError(**_tuples(layer)) for layer in item["layers"])
            self.weight_reports[item["precision"]] = WeightReport(item["precision"], layers, tuple(item.get("kept_fp32", ())))
        self.fallback_reports.update(data.get("fallback_reports", {}))
        for label, gates in data.get("verdicts", {}).items():
            self.verdicts.setdefault(label, {}).update({gate: Verdict(**_tuples(v)) for gate, v in gates.items()})
        for outcome, path in data.get("written", []):
            self.wrote(outcome, Path(path))
        self.skipped.update(data.get("skipped", {}))
        self.notes.update(data.get("notes", {}))
        self.unrecorded.extend(name for name in data.get("unrecorded", []) if name not in self.unrecorded)
        for why, names in data.get("unjudged_drift", {}).items():
            known = self.unjudged_drift.setdefault(why, [])
            known.extend(name for name in names if name not in known)
        self.requested = self.requested or bool(data.get("requested"))
        self.asked.extend(name for name in data.get("asked", []) if name not in self.asked)


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    """Lists back into the tuples the frozen dataclasses hold (nested one level for rows)."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in data.items()}
