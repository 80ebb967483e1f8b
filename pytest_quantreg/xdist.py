"""pytest-xdist: each worker sends what it measured to the controller, which reports the whole run.

Workers run the tests; the controller prints the summary table and writes the report files, so
``pytest -n 2`` shows the same table as a serial run and no two processes write the same file.
Only plain types cross the channel (execnet serializes lists, dicts, numbers and strings).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pytest_quantreg.evaluation import Measurement
from pytest_quantreg.session import QuantregRun
from pytest_quantreg.weights import LayerError, WeightReport

KEY = "quantreg"


def is_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker."""
    return hasattr(config, "workerinput")


def worker_output(run: QuantregRun) -> dict[str, Any]:
    """What a worker measured, in plain types."""
    return {
        "measurements": [dataclasses.asdict(m) for m in run.measurements.values()],
        "skipped": dict(run.skipped),
        "notes": dict(run.notes),
        "unrecorded": list(run.unrecorded),
        "written": [[outcome, str(path)] for outcome, path in run.written],
        "weight_reports": [dataclasses.asdict(r) for r in run.weight_reports.values()],
        "fallback_reports": dict(run.fallback_reports),
        "requested": run.requested,
    }


def merge(run: QuantregRun, output: dict[str, Any]) -> None:
    """Add one worker's results to the controller's run."""
    for data in output.get("measurements", []):
        measurement = Measurement(**_tuples(data))
        run.measurements[measurement.precision] = measurement
    run.skipped.update(output.get("skipped", {}))
    run.notes.update(output.get("notes", {}))
    run.unrecorded.extend(name for name in output.get("unrecorded", []) if name not in run.unrecorded)
    for outcome, path in output.get("written", []):
        if (outcome, Path(path)) not in run.written:
            run.written.append((outcome, Path(path)))
    for data in output.get("weight_reports", []):
        layers = tuple(LayerError(**_tuples(layer)) for layer in data["layers"])
        run.weight_reports[data["precision"]] = WeightReport(data["precision"], layers, tuple(data.get("kept_fp32", ())))
    run.fallback_reports.update(output.get("fallback_reports", {}))
    run.requested = run.requested or bool(output.get("requested"))


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    """Lists back into the tuples the frozen dataclasses hold (nested one level for rows)."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in data.items()}
