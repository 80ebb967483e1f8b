"""The fixtures: the run, the sample, the models, the weight report, the baseline, the fallback search
and ``quantreg``, the checks of one test at one precision."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_quantreg.errors import NoCalibrationTexts
from pytest_quantreg.judge.gates import FP32
from pytest_quantreg.plugin.check import Quantreg, user_errors
from pytest_quantreg.plugin.marker import marker_kwargs
from pytest_quantreg.plugin.startup import activate
from pytest_quantreg.run.builds import release_memory
from pytest_quantreg.run.session import QuantregRun

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.fallback.result import Fallback
    from pytest_quantreg.judge.baselines import Baseline
    from pytest_quantreg.measure.data import Sample
    from pytest_quantreg.measure.weights import WeightReport


@pytest.fixture(scope="session")
def quantreg_run(pytestconfig: pytest.Config) -> QuantregRun:
    """This session's quantreg state (settings, registry, measurements)."""
    try:
        return activate(pytestconfig)
    except pytest.UsageError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def quantreg_sample(quantreg_run: QuantregRun) -> Sample:
    """The sampled evaluation data set (embedded tweets by default)."""
    return user_errors(lambda: quantreg_run.subject.sample)


@pytest.fixture(scope="session")
def quantreg_fp32_model(quantreg_run: QuantregRun) -> Iterator[torch.nn.Module]:
    """The FP32 baseline model on the selected device."""
    yield from _model_lifetime(quantreg_run, FP32)


@pytest.fixture(scope="session")
def quantreg_model(quantreg_run: QuantregRun, quantreg_precision: str) -> Iterator[torch.nn.Module]:
    """The model at the precision this test is parametrized with; built once, released after its tests."""
    yield from _model_lifetime(quantreg_run, quantreg_precision)


def _model_lifetime(run: QuantregRun, precision: str) -> Iterator[torch.nn.Module]:
    """Build the model (and its weight report when asked), hand it out, then free its memory.

    A precision whose libraries are installed but fail to import, or a static one for which the data
    set leaves no calibration texts, is skipped with the reason."""
    problem = run.registry[precision].import_problem() or _no_calibration(run, precision)
    if problem:
        run.ledger.skipped[precision] = problem
        pytest.skip(problem)
    model = user_errors(lambda: run.builds.build(run.registry[precision]), run)
    if run.settings.weights_report is not None:
        run.weight_report(precision, model)
    yield model
    del model
    release_memory()


def _no_calibration(run: QuantregRun, precision: str) -> str | None:
    """Why a calibrated precision has no texts to calibrate on, or None."""
    if not run.registry[precision].calibrated:
        return None
    try:
        run.subject.calibration  # noqa: B018  (drawn once and kept)
    except NoCalibrationTexts as exc:
        return f"{precision}: {exc}"
    return None


@pytest.fixture(scope="session")
def quantreg_weight_report(quantreg_run: QuantregRun, quantreg_precision: str, quantreg_model: torch.nn.Module) -> WeightReport:
    """Per-layer weight error of this precision's Linear layers against FP32's (``.layers``, ``.by_kind()``, ``.worst()``)."""
    return quantreg_run.weight_report(quantreg_precision, quantreg_model)


@pytest.fixture(scope="session")
def quantreg_baseline(quantreg_run: QuantregRun) -> Baseline:
    """The stored FP32 baseline record (fails the test when missing or recorded for something else)."""
    return user_errors(quantreg_run.baseline)


@pytest.fixture
def quantreg_fallback(quantreg: Quantreg) -> Fallback:
    """This precision's fallback search: ``.sensitivity.effects`` (its units ranked by their effect on the
    outputs), ``.units`` (the smallest set to keep in FP32 so that it passes its gates; empty when it
    passes as it is), ``.passes``, ``.settings`` (that set for each backend). Run once per precision."""
    return quantreg.fallback()


@pytest.fixture
def quantreg(request: pytest.FixtureRequest, quantreg_run: QuantregRun, quantreg_precision: str) -> Quantreg:
    """Measure the model at this test's precision and check it against FP32."""
    return Quantreg(
        request, quantreg_run, quantreg_precision, marker_kwargs(request.node.get_closest_marker("quantreg"), request.node.nodeid)
    )
