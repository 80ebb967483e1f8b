"""A pytest plugin for the latency-stability benchmark (target 5).

Registers ``int8-dynamic-slow``: int8-dynamic plus real extra work on every forward pass (the
first two of the encoder's layers run twice; about 1.3x int8-dynamic's latency on the example)
and judged with int8-dynamic's own latency limit. At the end of the session it writes each
latency test's outcome and each precision's paired timings to ``$QUANTREG_BENCH_OUT`` (JSON).

    PYTHONPATH=benchmarks QUANTREG_BENCH_OUT=out.json pytest -p slow_precision --precision=int8-dynamic,int8-dynamic-slow ...
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from pytest_quantreg.precisions import BuildContext, builtin_registry

NAME = "int8-dynamic-slow"
OUTCOMES: dict[str, str] = {}


def _again(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
    """Forward hook: run the layer a second time on the same input (its output is discarded)."""
    layer.forward(*args, **kwargs)


def _slow_int8(ctx: BuildContext) -> Any:
    model = builtin_registry()["int8-dynamic"].build(ctx)
    for layer in model.base_model.encoder.layer[:2]:
        layer.register_forward_hook(_again, with_kwargs=True)
    return model


def pytest_quantreg_precisions(registry: Any) -> None:
    limit = builtin_registry()["int8-dynamic"].default_limit("max_latency_ratio", "cpu")
    registry.register(NAME, _slow_int8, devices=["cpu"], max_drop=100.0, max_latency_ratio={"cpu": limit})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        OUTCOMES[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    from pytest_quantreg.plugin import RUN

    run = session.config.stash.get(RUN, None)
    out = os.environ.get("QUANTREG_BENCH_OUT")
    if run is None or not out:
        return
    pairs = {name: m.paired_s for name, m in run.measurements.items() if m.paired_s}
    with open(out, "w", encoding="utf-8") as file:
        json.dump({"outcomes": OUTCOMES, "pairs": pairs}, file)
