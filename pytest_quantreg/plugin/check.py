"""The ``quantreg`` fixture's value: the checks of one test at one precision."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge.drift import differences, drift, judge_drift
from pytest_quantreg.judge.gates import FP32, Limit, gate_failures, judge_accuracy, judge_latency
from pytest_quantreg.judge.stats import Agreement, LatencyRatio, latency_ratio
from pytest_quantreg.judge.verdict import Verdict
from pytest_quantreg.measure.evaluation import Measurement
from pytest_quantreg.measure.failures import LibraryFailure
from pytest_quantreg.plugin import xdist
from pytest_quantreg.plugin.marker import GATE_KEYS
from pytest_quantreg.report.benchmark_info import extra_info
from pytest_quantreg.run.session import QuantregRun

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.fallback.result import Fallback

T = TypeVar("T")


class Quantreg:
    """The checks of one test at one precision."""

    def __init__(self, request: pytest.FixtureRequest, run: QuantregRun, precision: str, marker: dict[str, Any]) -> None:
        self._request = request
        self._run = run
        self._marker = marker
        self.precision = precision
        own = marker.get("keep_fp32")
        if isinstance(own, Mapping):  # the marker's settings by precision
            own = own.get(precision)
        self.keep_fp32: tuple[str, ...] = own if own is not None else run.settings.keep_for(precision)
        self.label = run.builds.label(precision, self.keep_fp32)  # the precision's name, or name[keep-fp32=...] for a marker's own set

    @property
    def model(self) -> torch.nn.Module:
        if self.label == self.precision:
            return self._request.getfixturevalue("quantreg_model")
        return user_errors(lambda: self._run.builds.variant(self.precision, self.keep_fp32), self._run)

    def limit(self, key: str) -> Limit:
        """The threshold of gate ``key`` (e.g. ``max_drop``, ``max_flip_rate``) for this precision, and its source."""
        if key not in GATE_KEYS:
            raise ValueError(f"unknown gate {key!r}; gates: {', '.join(GATE_KEYS)}")
        marker = self._marker.get(key)
        if isinstance(marker, Mapping):
            marker = marker.get(self.precision)
        default = self._run.registry[self.precision].default_limit(key, self._run.settings.device_type)
        value, source = self._run.settings.limits[key].lookup(self.precision, marker, default)
        return Limit(value, source)

    def measure(self, timed: bool = False) -> Measurement:
        """The pass at this precision: reused within the session, timed through pytest-benchmark when asked."""
        model = self.model  # built before pytest-benchmark's fixture is asked for: a failed build leaves it unrequested
        benchmark = self._benchmark() if timed else None
        result = user_errors(lambda: self._run.measure(self.label, model, benchmark, timed), self._run)
        if benchmark is not None:
            self._record_extra_info(benchmark, result)
        return result

    def check_accuracy(self) -> Agreement:
        """Fail when the predictions regressed against the stored FP32 baseline (accuracy drop, relative
        accuracy, flip rate, mean KL; significance-aware with ``alpha``); return the paired statistics.

        With ``--quantreg-fallback`` a failing precision gets a fallback search: ``report`` names the set
        of units to keep in FP32 in the failure, ``enforce`` judges the precision with that set applied."""
        __tracebackhide__ = True
        run = self._run
        baseline = user_errors(run.baseline)
        result = self.measure()
        limits = {key: self.limit(key) for key in GATE_KEYS}
        stats = user_errors(lambda: run.agreement(self.label, result, baseline))
        context = ""
        if run.settings.fallback != "off" and self.precision != FP32 and gate_failures(stats, limits)[0]:
            from pytest_quantreg.report.terminal import fallback_context

            found = self._fallback(limits)
            applied = run.measurements.get(f"{self.label}[fallback]") if run.settings.fallback == "enforce" else None
            context = fallback_context(found, enforced=applied is not None)
            if applied is not None:
                stats = user_errors(lambda: run.agreement(applied.precision, applied, baseline))
        against_fp32 = judge_accuracy(self.precision, stats, baseline, limits, context)
        self._outcome(against_fp32, self._drift(result, limits))
        return stats

    def _drift(self, result: Measurement, limits: Mapping[str, Limit]) -> Verdict | None:
        """The regression gate's verdict against this precision's own record on this hardware class; None
        for FP32 (its record is the baseline), in a run that records, and without a record (noted at the end)."""
        run = self._run
        if self.precision == FP32 or run.settings.records_outcomes:
            return None
        record, _ = run.outcome_record(self.label)
        found = drift(result, record) if record is not None else None
        if record is None or found is None:
            return None
        where = f"{run.store.path} (hardware class {run.subject.hardware.hardware_class}, recorded {record.recorded})"
        changes = differences(record.provenance, run.outcome_provenance(self.label))
        texts = {example.id: example.text for example in run.subject.sample.examples}
        return judge_drift(self.precision, found, limits, changes, texts, run.subject.labels, where)

    def fallback(self) -> Fallback:
        """This precision's fallback search (see the ``quantreg_fallback`` fixture), once per session."""
        return self._fallback({key: self.limit(key) for key in GATE_KEYS})

    def _fallback(self, limits: Mapping[str, Limit]) -> Fallback:
        run = self._run
        model = self.model
        cap = self._marker.get("max_fp32_units")
        return user_errors(lambda: run.fallback(run.registry[self.precision], self.label, self.keep_fp32, model, limits, cap), run)

    def check_latency(self) -> LatencyRatio:
        """Fail when the latency ratio to FP32 (same run) is above the limit beyond noise; return it."""
        __tracebackhide__ = True
        if xdist.is_worker(self._request.config):
            pytest.skip(
                f"latency gate for {self.precision} not judged under pytest-xdist: pytest-benchmark does not time in workers "
                "and parallel workers share the CPU; run the latency tests without -n (e.g. pytest -k latency)"
            )
        result = self.measure(timed=True)
        increase = self.limit("max_latency_increase")
        # FP32 is the reference, and a run that records ratios does not judge against the old ones
        judge_record = self.precision != FP32 and increase.value is not None and not self._run.settings.records_latency
        record = self._run.latency_record(self.label) if judge_record else None
        ratio = LatencyRatio(1.0, (1.0, 1.0), len(result.latencies_s or ())) if self.precision == FP32 else latency_ratio(result.paired_s)
        hardware_class = self._run.subject.hardware.hardware_class
        self._outcome(judge_latency(result, ratio, self.limit("max_latency_ratio"), increase, record, hardware_class))
        assert ratio is not None  # a verdict without a ratio is never passed
        return ratio

    def _outcome(self, verdict: Verdict, *more: Verdict | None) -> None:
        """Keep the verdicts on the run, then fail the test when one failed (with every failure's message)
        and skip it when the first was not judged."""
        __tracebackhide__ = True
        verdicts = [verdict, *(v for v in more if v is not None)]
        for one in verdicts:
            self._run.ledger.verdicts.setdefault(self.label, {})[one.gate] = one
        failures = [one.message for one in verdicts if one.failed]
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)
        if not verdict.passed:
            pytest.skip(verdict.message)

    def _benchmark(self) -> Any | None:
        if not self._request.config.pluginmanager.hasplugin("benchmark"):
            return None
        return self._request.getfixturevalue("benchmark")

    def _record_extra_info(self, benchmark: Any, result: Measurement) -> None:
        run = self._run
        benchmark.group = f"quantreg {run.subject.model_name} {run.settings.device_type}"
        baseline = run.store.usable()
        against = None
        if baseline is not None:
            against = (user_errors(lambda: run.agreement(self.label, result, baseline)), baseline)
        info = extra_info(run, self.label, self.keep_fp32, result, against)
        self._request.config.hook.pytest_quantreg_update_extra_info(config=self._request.config, precision=self.label, extra_info=info)
        benchmark.extra_info.update(info)


def user_errors(call: Callable[[], T], run: QuantregRun | None = None) -> T:
    """Run ``call``; a user mistake fails the test with its message instead of a traceback, and so does
    a library's crash (its traceback shown under the message with -v or --tb=long)."""
    __tracebackhide__ = True
    try:
        return call()
    except QuantregError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None  # the message alone, once
    except LibraryFailure as exc:
        tracebacks = run is not None and run.settings.library_tracebacks
        raise pytest.fail.Exception(str(exc), pytrace=tracebacks) from (exc.__cause__ if tracebacks else None)
