"""The ``quantreg`` marker (per-test gates, precisions, layers kept in FP32, fallback cap) and the
parametrization of tests over the selected precisions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pytest_quantreg import options
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.measure import keep
from pytest_quantreg.run.session import QuantregRun
from pytest_quantreg.settings import threshold

GATE_KEYS = tuple(gate.key for gate in options.GATES)
MARKER_KEYS = frozenset({*GATE_KEYS, "precisions", "keep_fp32", "max_fp32_units"})
MARKER_HELP = (
    f"quantreg({', '.join(f'{key}=None' for key in GATE_KEYS)}, precisions=None, keep_fp32=None, max_fp32_units=None): "
    "per-test gates (a number, or a dict of precision -> number), the precisions this test runs for, the modules its "
    "quantized models keep in FP32 (head, none or module names), and the most units a fallback search may keep in FP32"
)


def parametrize(metafunc: pytest.Metafunc, run: QuantregRun) -> None:
    """Parametrize a test over the selected precisions (those of its marker among them); a precision
    that cannot run here is a skipped parameter with the reason."""
    run.ledger.requested = True
    names = run.selected
    marker = metafunc.definition.get_closest_marker("quantreg")
    kwargs = marker_kwargs(marker, metafunc.definition.nodeid) if marker else {}
    if kwargs.get("precisions") is not None:
        try:
            wanted = run.registry.select(",".join(kwargs["precisions"]), run.settings.device_type)
        except QuantregError as exc:
            pytest.fail(f"{metafunc.definition.nodeid}: quantreg marker: {exc}", pytrace=False)
        names = [n for n in names if n in wanted]
        if not names:
            why = (
                f"its quantreg marker runs it for {', '.join(wanted)}, and none of them is selected "
                f"(--quantreg-precision={','.join(run.selected)}); add them to run it, e.g. "
                f"--quantreg-precision={','.join(dict.fromkeys([*run.selected, *wanted]))}"
            )
            metafunc.parametrize("quantreg_precision", [pytest.param(None, id="not-selected", marks=pytest.mark.skip(reason=why))])
            return
    run.ledger.asked.extend(name for name in names if name not in run.ledger.asked)
    params = []
    for name in names:
        reason = run.registry[name].unavailable_reason(run.settings.device_type)
        if reason:
            run.ledger.skipped[name] = reason
        params.append(pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else []))
    metafunc.parametrize("quantreg_precision", params, scope="session")


def marker_kwargs(marker: pytest.Mark | None, nodeid: str) -> dict[str, Any]:
    """The quantreg marker's keyword arguments, checked ({} without a marker)."""
    if marker is None:
        return {}
    if marker.args:
        pytest.fail(f"{nodeid}: the quantreg marker takes keyword arguments only ({', '.join(sorted(MARKER_KEYS))})", pytrace=False)
    unknown = set(marker.kwargs) - MARKER_KEYS
    if unknown:
        pytest.fail(
            f"{nodeid}: unknown quantreg marker argument(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(MARKER_KEYS))}",
            pytrace=False,
        )
    kwargs = dict(marker.kwargs)
    try:
        for gate in options.GATES:
            kwargs[gate.key] = _gate(gate, kwargs.get(gate.key))
        own = kwargs.get("keep_fp32")
        if isinstance(own, Mapping):  # by precision
            kwargs["keep_fp32"] = {str(k).lower(): keep.parse(v, f"quantreg marker keep_fp32 {k}") for k, v in own.items()}
        elif own is not None:
            kwargs["keep_fp32"] = keep.parse(own, "quantreg marker keep_fp32")
    except QuantregError as exc:
        pytest.fail(f"{nodeid}: {exc}", pytrace=False)
    cap = kwargs.get("max_fp32_units")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
        pytest.fail(f"{nodeid}: quantreg marker max_fp32_units must be a whole number of units, 0 or more; got {cap!r}", pytrace=False)
    precisions = kwargs.get("precisions")
    if isinstance(precisions, str):
        kwargs["precisions"] = [precisions]
    elif precisions is not None and not (isinstance(precisions, list | tuple) and all(isinstance(p, str) for p in precisions)):
        pytest.fail(f"{nodeid}: quantreg marker precisions must be a list of names, got {precisions!r}", pytrace=False)
    return kwargs


def _gate(gate: options.Gate, value: Any) -> float | dict[str, float] | None:
    """A marker gate: a number, or a dict of precision -> number."""
    where = f"quantreg marker {gate.key}"
    if isinstance(value, Mapping):
        return {str(k).lower(): threshold(gate, v, where) for k, v in value.items()}
    return threshold(gate, value, where) if value is not None else None
