"""Stored FP32 baselines: one diff-friendly JSON file per model x data set sample x device type.

A baseline holds FP32's accuracy, confidence, size, latency as recorded, and per-sample
predictions and probabilities keyed by sample id (never texts), with the provenance that decides
whether it may be compared with this run at all, and the hardware it was recorded on. It also
holds, per hardware class, the paired latency ratios of the other precisions and their per-sample
outcomes (predictions and probabilities), which later runs on the same class of hardware are judged
against, and per precision the set of units its fallback search kept in FP32, which later searches
check first. Files are validated on read, written
atomically, and only ever written when the user asks (``--quantreg-update-baselines``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.fileio import atomic_write_json
from pytest_quantreg.judge.drift import OutcomeRecord
from pytest_quantreg.judge.stats import LatencyRatio, Reference
from pytest_quantreg.measure.evaluation import Measurement
from pytest_quantreg.measure.hardware import Hardware

SCHEMA_VERSION = 1
UPDATE_FLAG = "--quantreg-update-baselines"
_SLUG = re.compile(r"[^a-z0-9._-]+")

# How paired latency ratios are timed; a record made another way is not compared with (re-record it).
# "settled-warm-1": each side after the process went quiet and two untimed forwards, disturbed pairs re-timed.
TIMING_PROTOCOL = "settled-warm-1"
# How a precision's outcome is recorded: predictions and float32 probabilities of every sample, in the
# order of the sorted sample ids, at the run's batch size. A record made another way is not compared with.
OUTCOME_PROTOCOL = "outcome-1"


@dataclass(frozen=True)
class Provenance:
    """What a baseline was recorded for; a baseline is comparable only when these match."""

    model: str
    weights_sha256: str
    dataset: str
    dataset_sha256: str
    sample_spec: str
    seed: int
    sample_sha256: str
    n_samples: int
    max_length: int
    labels: tuple[str, ...]
    device_type: str
    recipe: str | None = None  # the embedded example's recipe key: its identity where CPUs build other bits
    calibration_sha256: str | None = None  # the static INT8 precisions' calibration texts (None: the data set leaves none)

    def filename(self) -> str:
        """A file name that cannot leave the baseline folder."""
        return baseline_filename(self.model, self.dataset, self.n_samples, self.seed, self.max_length, self.device_type)


def baseline_filename(model: str, dataset: str, n_samples: int, seed: int, max_length: int, device_type: str) -> str:
    """The baseline's file name: from what names the run, none of it needing the model built."""
    parts = (model, dataset, f"n{n_samples}-seed{seed}-len{max_length}", device_type)
    return "__".join(_slug(p) for p in parts) + ".json"


@dataclass(frozen=True)
class Baseline:
    """A validated baseline file."""

    path: Path
    provenance: dict[str, Any]
    accuracy: float
    avg_confidence: float
    size_mb: float
    latency_ms: dict[str, float] | None
    predictions: dict[str, dict[str, Any]]
    latency_records: dict[str, dict[str, Any]]
    fallback_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcome_records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fallback_units(self, label: str) -> tuple[str, ...] | None:
        """The units the fallback search of precision ``label`` stored, or None."""
        entry = self.fallback_sets.get(label)
        return tuple(entry["units"]) if entry is not None else None

    def latency_ratio(self, hardware_class: str, name: str) -> LatencyRatio | None:
        """The paired latency ratio recorded for precision ``name`` on ``hardware_class`` with this
        version's timing protocol, or None (a ratio paired the older way is not comparable)."""
        entry = self.latency_records.get(hardware_class, {}).get("ratios", {}).get(name)
        if entry is None or entry.get("timing") != TIMING_PROTOCOL:
            return None
        low, high = entry["ci95"]
        return LatencyRatio(float(entry["ratio"]), (float(low), float(high)), int(entry["pairs"]))

    def outcome_record(self, hardware_class: str, name: str) -> tuple[OutcomeRecord | None, str]:
        """The outcome recorded for precision ``name`` on ``hardware_class`` and "", or None and why there is
        none that this version can compare with."""
        entry = self.outcome_records.get(hardware_class, {}).get("precisions", {}).get(name)
        if entry is None:
            return None, "no outcome record"
        if entry.get("protocol") != OUTCOME_PROTOCOL:
            return None, f"an outcome record made another way ({entry.get('protocol')}; {OUTCOME_PROTOCOL} here)"
        ids = sorted(self.predictions)
        predictions, probabilities = _decode_outcome(entry, len(ids))
        if len(predictions) != len(ids):
            return None, f"an outcome record of {len(predictions)} samples, not the {len(ids)} of this sample"
        return OutcomeRecord(
            predictions=dict(zip(ids, predictions, strict=True)),
            probabilities=dict(zip(ids, probabilities, strict=True)),
            size_mb=float(entry["size_mb"]),
            batch_size=int(entry["batch_size"]),
            provenance=dict(entry.get("provenance") or {}),
            recorded=str(entry.get("recorded", "")),
        ), ""

    def reference(self) -> Reference:
        """FP32's per-sample outcome, for the paired statistics (logits when the file has them)."""
        entries = self.predictions.items()
        with_logits = all("logits" in v for v in self.predictions.values())
        return Reference(
            predictions={k: v["label"] for k, v in entries},
            probabilities={k: v["probs"] for k, v in entries},
            logits={k: v["logits"] for k, v in entries} if with_logits else None,
        )

    def mismatch(self, current: Provenance) -> str | None:
        """Why this baseline must not be compared with ``current``, or None.

        Other weights are refused, except for the embedded example built from the same recipe
        (another CPU may build other bits): its FP32 drift gates judge how far they are."""
        recorded = self.provenance
        for key, what in (
            ("weights_sha256", "another model (different weights)"),
            ("dataset_sha256", "another data set"),
            ("sample_sha256", "another sample"),
            ("labels", "other labels"),
            ("max_length", "another max length"),
        ):
            now = asdict(current)[key]
            now = list(now) if isinstance(now, tuple) else now
            if key == "weights_sha256" and self.rebuilt_from_recipe(current):
                continue
            if recorded.get(key) != now:
                return f"{self.path} was recorded for {what}: {key} is {_short(recorded.get(key))} there, {_short(now)} in this run"
        return None

    def rebuilt_from_recipe(self, current: Provenance) -> bool:
        """Whether ``current`` is the embedded example built with other bits from this baseline's recipe."""
        recipe = self.provenance.get("recipe")
        return recipe is not None and recipe == current.recipe and self.provenance.get("weights_sha256") != current.weights_sha256


def baseline_path(directory: Path, filename: str) -> Path:
    """Where the baseline named ``filename`` lives (always inside ``directory``)."""
    path = (directory / filename).resolve()
    if path.parent != directory.resolve():
        raise QuantregError(f"baseline name {filename!r} would leave {directory}")
    return path


def load(path: Path) -> Baseline | None:
    """Read and validate a baseline; None when there is none; ``QuantregError`` when it is broken."""
    if not path.exists():
        return None
    fix = f"fix or delete it, or re-record it with {UPDATE_FLAG}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantregError(f"baseline {path} is not readable JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise QuantregError(f"baseline {path} is not a JSON object; {fix}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise QuantregError(f"baseline {path} has schema version {version!r}, this pytest-quantreg reads {SCHEMA_VERSION}; {fix}")
    try:
        fp32 = data["fp32"]
        baseline = Baseline(
            path=path,
            provenance=dict(data["provenance"]),
            accuracy=_number(fp32["accuracy"]),
            avg_confidence=_number(fp32["avg_confidence"]),
            size_mb=_number(fp32["size_mb"]),
            latency_ms={k: _number(v) for k, v in fp32["latency_ms"].items()} if fp32.get("latency_ms") else None,
            predictions={str(k): _prediction(v) for k, v in data["predictions"].items()},
            latency_records={str(k): _latency_record(v) for k, v in (data.get("latency_records") or {}).items()},
            fallback_sets={str(k): _fallback_set(v) for k, v in (data.get("fallback_sets") or {}).items()},
            outcome_records={str(k): _outcome_records(v) for k, v in (data.get("outcome_records") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise QuantregError(f"baseline {path} is incomplete or malformed ({type(exc).__name__}: {exc}); {fix}") from None
    if len(baseline.predictions) != baseline.provenance.get("n_samples"):
        raise QuantregError(
            f"baseline {path} holds {len(baseline.predictions)} predictions for {baseline.provenance.get('n_samples')} samples; {fix}"
        )
    return baseline


def record(measurement: Measurement, provenance: Provenance, hardware: Hardware, versions: dict[str, str]) -> dict[str, Any]:
    """The JSON document of a baseline from an FP32 measurement (latency records are added by :func:`write_latency`)."""
    latency = measurement.latency
    return {
        "schema_version": SCHEMA_VERSION,
        "provenance": {**asdict(provenance), "labels": list(provenance.labels)},
        "environment": {"device_name": hardware.name, "hardware": hardware.to_json(), "versions": versions, "timer": measurement.timer},
        "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "fp32": {
            "accuracy": measurement.accuracy,
            "avg_confidence": measurement.avg_confidence,
            "size_mb": measurement.size_mb,
            "latency_ms": asdict(latency) if latency else None,
        },
        "predictions": {
            i: {"label": p, "probs": [round(x, 6) for x in probs], "logits": [round(x, 6) for x in logits]}
            for i, p, probs, logits in zip(
                measurement.ids, measurement.predictions, measurement.probabilities, measurement.logits, strict=True
            )
        },
    }


def write(path: Path, document: dict[str, Any]) -> str:
    """Write atomically; return 'created', 'updated' or 'unchanged' (outcome ignoring date, timings).

    The latency and outcome records and the fallback sets of the file being replaced are kept while its
    provenance stays: they belong to other hardware and other precisions too."""
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        old = {}
    if old is not None and _stable(old) == _stable(document):
        return "unchanged"
    if isinstance(old, dict) and _stable(old)[0] == _stable(document)[0]:
        kept = {key: old[key] for key in ("latency_records", "fallback_sets", "outcome_records") if isinstance(old.get(key), dict)}
        document = {**document, **kept}
    _atomic_write(path, document)
    return "created" if old is None else "updated"


def write_latency(path: Path, hardware: Hardware, ratios: dict[str, LatencyRatio], versions: dict[str, str]) -> None:
    """Store ``ratios`` under ``hardware``'s class in the baseline at ``path`` (which must exist),
    replacing those precisions' earlier records for that class and keeping every other record."""
    document = json.loads(path.read_text(encoding="utf-8"))
    records = dict(document.get("latency_records") or {})
    entry = dict(records.get(hardware.hardware_class) or {})
    entry.update(
        hardware=hardware.to_json(),
        versions=versions,
        recorded=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ratios={
            **dict(entry.get("ratios") or {}),
            **{name: {"ratio": r.ratio, "ci95": list(r.ci95), "pairs": r.n, "timing": TIMING_PROTOCOL} for name, r in ratios.items()},
        },
    )
    records[hardware.hardware_class] = entry
    _atomic_write(path, {**document, "latency_records": records})


def write_outcomes(path: Path, hardware: Hardware, outcomes: dict[str, dict[str, Any]], versions: dict[str, str]) -> None:
    """Store each precision's outcome (:func:`outcome_entry`) under ``hardware``'s class in the baseline at
    ``path`` (which must exist), replacing those precisions' earlier records for that class and keeping the rest."""
    document = json.loads(path.read_text(encoding="utf-8"))
    records = dict(document.get("outcome_records") or {})
    entry = dict(records.get(hardware.hardware_class) or {})
    recorded = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    entry.update(
        hardware=hardware.to_json(),
        precisions={**dict(entry.get("precisions") or {}), **{name: {**e, "recorded": recorded} for name, e in outcomes.items()}},
    )
    records[hardware.hardware_class] = entry
    _atomic_write(path, {**document, "outcome_records": records})


def outcome_entry(measurement: Measurement, provenance: dict[str, Any]) -> dict[str, Any]:
    """A precision's outcome as the baseline stores it: one line of predictions and the float32 probabilities
    in base64, both in the order of the sorted sample ids (a diff shows that it changed, the gate shows how)."""
    import numpy as np

    order = sorted(range(len(measurement.ids)), key=lambda i: measurement.ids[i])
    probabilities = np.asarray([measurement.probabilities[i] for i in order], dtype="<f4")
    return {
        "protocol": OUTCOME_PROTOCOL,
        "predictions": ",".join(str(measurement.predictions[i]) for i in order),
        "probabilities": base64.b64encode(probabilities.tobytes()).decode("ascii"),
        "classes": int(probabilities.shape[1]),
        "accuracy": measurement.accuracy,
        "size_mb": measurement.size_mb,
        "batch_size": measurement.batch_size,
        "provenance": provenance,
    }


def _decode_outcome(entry: dict[str, Any], n: int) -> tuple[list[int], list[tuple[float, ...]]]:
    import numpy as np

    predictions = [int(x) for x in str(entry["predictions"]).split(",")] if entry["predictions"] else []
    flat = np.frombuffer(base64.b64decode(entry["probabilities"]), dtype="<f4")
    classes = int(entry["classes"])
    if classes <= 0 or flat.size != len(predictions) * classes:
        raise TypeError(f"outcome record holds {flat.size} probabilities for {len(predictions)} predictions of {classes} classes")
    return predictions, [tuple(float(x) for x in row) for row in flat.reshape(-1, classes)]


def write_fallback(path: Path, sets: dict[str, dict[str, Any]], versions: dict[str, str]) -> None:
    """Store each precision's fallback set (``{"units": [...], ...}``) in the baseline at ``path`` (which
    must exist), replacing those precisions' earlier sets and keeping the others."""
    document = json.loads(path.read_text(encoding="utf-8"))
    recorded = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    stored = dict(document.get("fallback_sets") or {})
    stored.update({label: {**entry, "versions": versions, "recorded": recorded} for label, entry in sets.items()})
    _atomic_write(path, {**document, "fallback_sets": stored})


def _atomic_write(path: Path, document: dict[str, Any]) -> None:
    try:
        atomic_write_json(path, document)
    except OSError as exc:
        raise QuantregError(
            f"cannot write baseline {path}: {exc.strerror}; it is left as it was. "
            f"Free space in or make {path.parent} writable, or set --quantreg-baseline-dir"
        ) from None


def _stable(document: dict[str, Any]) -> Any:
    """The parts of a baseline that say whether the model's outcome changed."""
    fp32 = dict(document.get("fp32") or {})
    fp32.pop("latency_ms", None)
    return document.get("provenance"), fp32, document.get("predictions")


def _prediction(entry: dict[str, Any]) -> dict[str, Any]:
    """One sample's FP32 outcome; ``logits`` is optional (baselines recorded before it was stored lack it)."""
    checked: dict[str, Any] = {"label": int(entry["label"]), "probs": [_number(p) for p in entry["probs"]]}
    if "logits" in entry:
        checked["logits"] = [_number(x) for x in entry["logits"]]
    return checked


def _latency_record(entry: dict[str, Any]) -> dict[str, Any]:
    """One hardware class's latency record, checked: ratios with their interval and pair count."""
    ratios = {}
    for name, value in dict(entry["ratios"]).items():
        low, high = value["ci95"]
        ratios[str(name)] = {
            "ratio": _number(value["ratio"]),
            "ci95": [_number(low), _number(high)],
            "pairs": int(value["pairs"]),
            "timing": str(value.get("timing", "")),
        }
    return {**entry, "ratios": ratios}


def _outcome_records(entry: dict[str, Any]) -> dict[str, Any]:
    """One hardware class's outcome records, checked: each decodes (predictions and probabilities agree)."""
    precisions = dict(entry["precisions"])
    for value in precisions.values():
        if value.get("protocol") == OUTCOME_PROTOCOL:
            _decode_outcome(value, 0)
            _number(value["size_mb"])
            int(value["batch_size"])
    return {**entry, "precisions": precisions}


def _fallback_set(entry: dict[str, Any]) -> dict[str, Any]:
    """One precision's stored fallback set, checked: its units are module names."""
    units = entry["units"]
    if not isinstance(units, list) or not all(isinstance(u, str) and u for u in units):
        raise TypeError(f"fallback units must be a list of module names, got {units!r}")
    return dict(entry)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _slug(text: str) -> str:
    slug = _SLUG.sub("-", text.lower()).strip("-.")
    return slug or "unnamed"


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if re.fullmatch(r"[0-9a-f]{64}", text) else text
