"""A pytest plugin for the benchmarks that check verdicts (targets 5 and 8): int8-dynamic changed
under its own name, as a new quantization recipe or library release would change it.

- ``QUANTREG_CHANGE=slow``: real extra work on every forward pass (the first two of the encoder's
  layers run twice: about 1.25-1.3x int8-dynamic's latency on the example), judged by
  int8-dynamic's fixed limit and by the ratio recorded for int8-dynamic on this hardware class.
  ``QUANTREG_CHANGE=slow-ffn``: the feed-forward blocks of the first three layers only (about 1.15x).
- ``QUANTREG_CHANGE=corrupt``: the FFN input projections get 4-bit per-tensor weights before the
  int8 quantization (a recipe misconfigured for one layer kind): on the example about 10 points of
  accuracy lost and 24% of the predictions changed.
- ``QUANTREG_GRADED=SIGMA,...:SEEDS``: besides int8-dynamic, its graded changes as precisions of their own:
  ``int8-dynamic.noiseSIGMA-sSEED`` adds seeded Gaussian noise of relative strength SIGMA (times each weight's
  std) to every Linear weight it quantizes before quantizing, for seeds 0 to SEEDS-1; ``int8-dynamic.keep-none``
  quantizes the output head too (a recipe change). graded_regressions.py gives them int8-dynamic's record.

At the end of the session it writes each test's outcome (and a failure's message) and each
precision's paired timings to ``$QUANTREG_BENCH_OUT`` (JSON).

    PYTHONPATH=benchmarks QUANTREG_CHANGE=slow QUANTREG_BENCH_OUT=out.json pytest -p changed_precision --precision=fp32,int8-dynamic
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from pytest_quantreg.backends.base import BuildContext, Builder
from pytest_quantreg.backends.registry import Registry
from pytest_quantreg.judge.drift import drift

NAME = "int8-dynamic"
OUTCOMES: dict[str, dict[str, str]] = {}


def _again(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
    """Forward hook: run the layer a second time on the same input (its output is discarded)."""
    layer.forward(*args, **kwargs)


def slowed(build: Builder, layers: int = 2) -> Builder:
    """``build``, with the model's first ``layers`` encoder layers running twice on every forward pass."""

    def slow_build(ctx: BuildContext) -> Any:
        model = build(ctx)
        for layer in model.base_model.encoder.layer[:layers]:
            layer.register_forward_hook(_again, with_kwargs=True)
        return model

    return slow_build


def corrupted(build: Builder) -> Builder:
    """``build``, with every FFN input projection rounded to 4-bit per-tensor weights first."""

    def corrupt_build(ctx: BuildContext) -> Any:
        def load(**kwargs: Any) -> Any:
            import torch

            model = BuildContext.load(ctx, **kwargs)
            with torch.no_grad():
                for layer in model.base_model.encoder.layer:
                    weight = layer.intermediate.dense.weight
                    scale = weight.abs().max() / 7
                    weight.copy_((weight / scale).round().clamp(-8, 7) * scale)
            return model

        return build(_Loading(ctx, load))

    return corrupt_build


class _Loading:
    """A build context whose ``load`` is replaced; everything else is the original's."""

    def __init__(self, ctx: BuildContext, load: Any) -> None:
        self._ctx, self.load = ctx, load

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def noisy(build: Builder, sigma: float, seed: int) -> Builder:
    """``build``, its Linear weights (those it quantizes) moved by seeded Gaussian noise of ``sigma`` times their std first."""

    def noisy_build(ctx: BuildContext) -> Any:
        def load(**kwargs: Any) -> Any:
            import torch

            model = BuildContext.load(ctx, **kwargs)
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for name, module in model.named_modules():
                    if type(module) is torch.nn.Linear and not ctx.keeps(name):
                        noise = torch.randn(module.weight.shape, generator=generator)
                        module.weight.add_(noise * module.weight.std() * sigma)
            return model

        return build(_Loading(ctx, load))

    return noisy_build


def head_quantized(build: Builder) -> Builder:
    """``build`` with nothing kept in FP32: the output head quantized too."""
    import dataclasses

    return lambda ctx: build(dataclasses.replace(ctx, keep_fp32=()))


def graded(spec: str) -> dict[str, Builder]:
    """The graded changes of int8-dynamic that ``QUANTREG_GRADED`` names, by precision name."""
    sigmas, _, seeds = spec.partition(":")
    noise = {f"{NAME}.noise{sigma}-s{seed}": (float(sigma), seed) for sigma in sigmas.split(",") for seed in range(int(seeds or 1))}
    return {name: noisy(BUILDS[NAME], *change) for name, change in noise.items()} | {f"{NAME}.keep-none": head_quantized(BUILDS[NAME])}


BUILDS: dict[str, Builder] = {}


def ffn_slowed(build: Builder, layers: int = 3) -> Builder:
    """``build``, with the feed-forward blocks (both Linear layers) of the first ``layers`` encoder layers running twice."""

    def slow_build(ctx: BuildContext) -> Any:
        model = build(ctx)
        for layer in model.base_model.encoder.layer[:layers]:
            for block in (layer.intermediate, layer.output):
                block.register_forward_hook(_again, with_kwargs=True)
        return model

    return slow_build


CHANGES = {"slow": slowed, "slow-ffn": ffn_slowed, "corrupt": corrupted}


def pytest_quantreg_precisions(registry: Registry) -> None:
    change = os.environ.get("QUANTREG_CHANGE")
    if change in CHANGES:
        registry.replace(NAME, build=CHANGES[change](registry[NAME].build))
    if os.environ.get("QUANTREG_GRADED"):
        BUILDS[NAME] = registry[NAME].build
        for name, build in graded(os.environ["QUANTREG_GRADED"]).items():
            registry.register(name, build, devices=["cpu"], max_drop=registry[NAME].max_drop, max_flip_rate=registry[NAME].max_flip_rate)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        OUTCOMES[report.nodeid] = {"outcome": report.outcome, "message": report.longreprtext if not report.passed else ""}


def pytest_sessionfinish(session: pytest.Session) -> None:
    from pytest_quantreg.plugin.startup import RUN

    run = session.config.stash.get(RUN, None)
    out = os.environ.get("QUANTREG_BENCH_OUT")
    if run is None or not out:
        return
    pairs = {name: m.paired_s for name, m in run.measurements.items() if m.paired_s}
    changed = {}
    for name, measurement in run.measurements.items():
        record, _ = run.outcome_record(name) if name != "fp32" else (None, "")
        found = drift(measurement, record) if record is not None else None
        if found is not None:
            changed[name] = {"changed": len(found.changed), "n": found.n, "kl": found.kl_mean}
    with open(out, "w", encoding="utf-8") as file:
        document = {"outcomes": OUTCOMES, "pairs": pairs, "hardware_class": run.subject.hardware.hardware_class, "drift": changed}
        json.dump(document, file)
