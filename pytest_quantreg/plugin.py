"""The pytest plugin: options, configuration, parametrization, fixtures and the end-of-run table.

Sections in order: hooks that set up the run, collection, fixtures, reporting. The work is done
in modules named for the pipeline; torch and transformers are imported only when a test needs a
model.

pytest loads the plugin into every run of the environment, so it stays dormant until the run uses
it: a quantreg option or ini setting activates it at configuration, otherwise the first collected
test that requests a quantreg fixture or carries the ``quantreg`` marker does. A dormant run prints
nothing, imports no torch, reads no data and writes no file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_quantreg import hooks, keep, options, xdist
from pytest_quantreg.backends import builtin_registry
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.evaluation import Measurement
from pytest_quantreg.failures import LibraryFailure
from pytest_quantreg.gates import FP32, Limit, agreement, check_accuracy, check_latency, gate_failures
from pytest_quantreg.metrics import class_metrics
from pytest_quantreg.models import check_model_dir
from pytest_quantreg.report import timing_info
from pytest_quantreg.session import QuantregRun, fallback_info, release_memory
from pytest_quantreg.stats import Agreement, LatencyRatio

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.baselines import Baseline
    from pytest_quantreg.data import Sample
    from pytest_quantreg.fallback import Fallback
    from pytest_quantreg.weights import WeightReport

RUN = pytest.StashKey[QuantregRun]()
YIELDED = pytest.StashKey[tuple[str, ...]]()  # --precision / --device left to the suite that declared them
FIXTURES = frozenset(
    {
        "quantreg",
        "quantreg_run",
        "quantreg_precision",
        "quantreg_sample",
        "quantreg_model",
        "quantreg_fp32_model",
        "quantreg_weight_report",
        "quantreg_baseline",
        "quantreg_fallback",
    }
)
GATE_KEYS = tuple(gate.key for gate in options.GATES)
MARKER_KEYS = frozenset({*GATE_KEYS, "precisions", "keep_fp32", "max_fp32_units"})
MARKER_HELP = (
    f"quantreg({', '.join(f'{key}=None' for key in GATE_KEYS)}, precisions=None, keep_fp32=None, max_fp32_units=None): "
    "per-test gates (a number, or a dict of precision -> number), the precisions this test runs for, the modules its "
    "quantized models keep in FP32 (head, none or module names), and the most units a fallback search may keep in FP32"
)


# -- set-up ----------------------------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser) -> Generator[None, None, None]:
    """Once the suite's conftests have declared their options: take --precision and --device where free."""
    result = yield
    early_config.stash[YIELDED] = options.add_short_options(parser)
    return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    if config.getoption("help") or not options.requested(config):
        return  # dormant until a collected test asks for quantreg
    activate(config)


def activate(config: pytest.Config) -> QuantregRun:
    """This session's quantreg run, set up and checked on first use; ``pytest.UsageError`` with the fix."""
    run = config.stash.get(RUN, None)
    if run is not None:
        return run
    settings = options.resolve(config)
    try:
        settings = _resolve_device(settings)
        registry = builtin_registry()
        config.hook.pytest_quantreg_precisions(registry=registry)
        settings = settings.with_canonical_limits(lambda name: registry.canonical(name, settings.device_type))
        run = QuantregRun(settings=settings, registry=registry, selected=registry.select(settings.precision, settings.device_type))
        if settings.model is not None:
            _check_max_length(settings, check_model_dir(settings.model, trust_remote_code=settings.trust_remote_code))
        _check_outputs(settings)
        run.metric  # noqa: B018 -- reads and checks the data set, the sample size and --quantreg-metric now, not mid-run
    except QuantregError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[RUN] = run
    return run


def _check_max_length(settings: options.Settings, config: Mapping[str, Any]) -> None:
    """Texts are truncated to --quantreg-max-length tokens: no more than the model has positions for."""
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and settings.max_length > positions:
        raise QuantregError(
            f"--quantreg-max-length={settings.max_length} is more tokens than the model in {settings.model} has positions for "
            f"(max_position_embeddings {positions}); use --quantreg-max-length={positions} or less"
        )


def _check_outputs(settings: options.Settings) -> None:
    """Every file this run was asked to write can be written: found out now, not after the tests."""
    from pytest_quantreg.fileio import check_writable

    if settings.update_baselines or settings.record_latency:
        check_writable(settings.baseline_dir, "--quantreg-baseline-dir")
    if settings.weights_report is not None:
        check_writable(settings.weights_report.parent, "--quantreg-weights-report")
    if settings.fallback_report is not None:
        check_writable(settings.fallback_report.parent, "--quantreg-fallback-report")
    if settings.report_dir is not None:
        from pytest_quantreg.report_files import check_available

        check_available()
        check_writable(settings.report_dir, "--quantreg-report")


def _resolve_device(settings: options.Settings) -> options.Settings:
    """Turn ``auto`` into cpu or cuda; refuse a CUDA device this machine does not have."""
    if settings.device == "cpu":
        return settings
    if settings.device == "auto" and not _gpu_build():
        return dataclasses.replace(settings, device="cpu")  # torch not imported: collection stays fast
    import torch

    available = torch.cuda.is_available()
    if settings.device == "auto":
        return dataclasses.replace(settings, device="cuda:0" if available else "cpu")
    if not available:
        raise QuantregError(
            f"--device={settings.device}: CUDA is not available here (torch {torch.__version__}); "
            "run on a machine with a GPU and a CUDA build of torch, or use --device=cpu"
        )
    index = int(settings.device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise QuantregError(
            f"--device={settings.device}: this machine has {torch.cuda.device_count()} CUDA device(s), 0 to {torch.cuda.device_count() - 1}"
        )
    return dataclasses.replace(settings, device=f"cuda:{index}")


def _gpu_build() -> bool:
    """Whether the installed torch is built for a GPU, read from its version file without importing
    torch (seconds); False for a CPU build (``cuda`` and ``hip`` both None) or no torch at all."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text(encoding="utf-8")
    except OSError:
        return True  # cannot tell: let torch answer
    return not all(re.search(rf"^{name}\b[^=]*=\s*None\s*$", text, re.MULTILINE) for name in ("cuda", "hip"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash.get(RUN, None)
    return _header(config, run) if run is not None else []


def _header(config: pytest.Config, run: QuantregRun) -> list[str]:
    from pytest_quantreg.report import header

    lines = header(run, hardware=not config.option.collectonly)  # collection imports no torch
    yielded = config.stash.get(YIELDED, ())
    if yielded:
        ours = ", ".join(options.SHORT[name] for name in yielded)
        lines.append(f"quantreg: {', '.join(yielded)} belong to this suite (declared by its own plugin or conftest); quantreg reads {ours}")
    return lines


# -- collection ------------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests that use the quantreg fixtures over the selected precisions."""
    if "quantreg_precision" not in metafunc.fixturenames:
        return
    try:
        run = activate(metafunc.config)
    except pytest.UsageError:
        return  # said once, as a usage error, when collection ends (pytest_collection_modifyitems)
    run.requested = True
    names = run.selected
    marker = metafunc.definition.get_closest_marker("quantreg")
    kwargs = _marker_kwargs(marker, metafunc.definition.nodeid) if marker else {}
    if kwargs.get("precisions") is not None:
        try:
            wanted = set(run.registry.select(",".join(kwargs["precisions"]), run.settings.device_type))
        except QuantregError as exc:
            pytest.fail(f"{metafunc.definition.nodeid}: quantreg marker: {exc}", pytrace=False)
        names = [n for n in names if n in wanted]
    params = []
    for name in names:
        reason = run.registry[name].unavailable_reason(run.settings.device_type)
        if reason:
            run.skipped[name] = reason
        params.append(pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else []))
    metafunc.parametrize("quantreg_precision", params, scope="session")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """A dormant run whose collected tests use quantreg (a fixture or the marker) becomes active here."""
    if RUN in config.stash or not any(_uses_quantreg(item) for item in items):
        return
    run = activate(config)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not config.option.collectonly:
        for line in _header(config, run):
            reporter.write_line(line)


def _uses_quantreg(item: pytest.Item) -> bool:
    return not FIXTURES.isdisjoint(getattr(item, "fixturenames", ())) or item.get_closest_marker("quantreg") is not None


def _marker_kwargs(marker: pytest.Mark, nodeid: str) -> dict[str, Any]:
    """The quantreg marker's keyword arguments, checked."""
    if marker.args:
        pytest.fail(f"{nodeid}: the quantreg marker takes keyword arguments only ({', '.join(sorted(MARKER_KEYS))})", pytrace=False)
    unknown = set(marker.kwargs) - MARKER_KEYS
    if unknown:
        pytest.fail(
            f"{nodeid}: unknown quantreg marker argument(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(MARKER_KEYS))}",
            pytrace=False,
        )
    kwargs = dict(marker.kwargs)
    for gate in options.GATES:
        key, where = gate.key, f"quantreg marker {gate.key}"
        value = kwargs.get(key)
        try:
            if isinstance(value, Mapping):
                kwargs[key] = {str(k).lower(): options.threshold(gate, v, where) for k, v in value.items()}
            elif value is not None:
                kwargs[key] = options.threshold(gate, value, where)
        except QuantregError as exc:
            pytest.fail(f"{nodeid}: {exc}", pytrace=False)
    if kwargs.get("keep_fp32") is not None:
        try:
            kwargs["keep_fp32"] = keep.parse(kwargs["keep_fp32"], "quantreg marker keep_fp32")
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


# -- fixtures --------------------------------------------------------------------------------------


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
    return _user_errors(lambda: quantreg_run.sample)


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

    A precision whose libraries are installed but fail to import is skipped with the reason."""
    problem = run.registry[precision].import_problem()
    if problem:
        run.skipped[precision] = problem
        pytest.skip(problem)
    model = _user_errors(lambda: run.build(run.registry[precision]), run)
    if run.settings.weights_report is not None:
        run.weight_report(precision, model)
    yield model
    del model
    release_memory()


@pytest.fixture(scope="session")
def quantreg_weight_report(quantreg_run: QuantregRun, quantreg_precision: str, quantreg_model: torch.nn.Module) -> WeightReport:
    """Per-layer weight error of this precision's Linear layers against FP32's (``.layers``, ``.by_kind()``, ``.worst()``)."""
    return quantreg_run.weight_report(quantreg_precision, quantreg_model)


@pytest.fixture(scope="session")
def quantreg_baseline(quantreg_run: QuantregRun) -> Baseline:
    """The stored FP32 baseline record (fails the test when missing or recorded for something else)."""
    return _user_errors(quantreg_run.baseline)


@pytest.fixture
def quantreg_fallback(quantreg: Quantreg) -> Fallback:
    """This precision's fallback search: ``.sensitivity.effects`` (its units ranked by their effect on the
    outputs), ``.units`` (the smallest set to keep in FP32 so that it passes its gates; empty when it
    passes as it is), ``.passes``, ``.settings`` (that set for each backend). Run once per precision."""
    return quantreg.fallback()


@pytest.fixture
def quantreg(request: pytest.FixtureRequest, quantreg_run: QuantregRun, quantreg_precision: str) -> Quantreg:
    """Measure the model at this test's precision and check it against FP32."""
    marker = request.node.get_closest_marker("quantreg")
    return Quantreg(request, quantreg_run, quantreg_precision, _marker_kwargs(marker, request.node.nodeid) if marker else {})


class Quantreg:
    """The checks of one test at one precision."""

    def __init__(self, request: pytest.FixtureRequest, run: QuantregRun, precision: str, marker: dict[str, Any]) -> None:
        self._request = request
        self._run = run
        self._marker = marker
        self.precision = precision
        self.keep_fp32: tuple[str, ...] = marker.get("keep_fp32", run.settings.keep_fp32)
        self.label = run.label(precision, self.keep_fp32)  # the precision's name, or name[keep-fp32=...] for a marker's own set

    @property
    def model(self) -> torch.nn.Module:
        if self.label == self.precision:
            return self._request.getfixturevalue("quantreg_model")
        return _user_errors(lambda: self._run.variant_model(self.precision, self.keep_fp32), self._run)

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
        result = _user_errors(lambda: self._run.measure(self.label, model, benchmark, timed), self._run)
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
        baseline = _user_errors(run.baseline)
        result = self.measure()
        limits = {key: self.limit(key) for key in GATE_KEYS}
        context = ""
        if run.settings.fallback != "off" and self.precision != FP32:
            stats = _user_errors(lambda: agreement(result, baseline, run.metric, run.labels))
            if gate_failures(stats, limits)[0]:
                from pytest_quantreg.report import fallback_context

                found = self._fallback(limits)
                applied = run.measurements.get(f"{self.label}[fallback]") if run.settings.fallback == "enforce" else None
                context = fallback_context(found, enforced=applied is not None)
                if applied is not None:
                    result = dataclasses.replace(applied, precision=self.precision)
        return check_accuracy(result, baseline, limits, run.metric, run.labels, context)

    def fallback(self) -> Fallback:
        """This precision's fallback search (see the ``quantreg_fallback`` fixture), once per session."""
        return self._fallback({key: self.limit(key) for key in GATE_KEYS})

    def _fallback(self, limits: Mapping[str, Limit]) -> Fallback:
        run = self._run
        model = self.model
        cap = self._marker.get("max_fp32_units")
        return _user_errors(lambda: run.fallback(run.registry[self.precision], self.label, self.keep_fp32, model, limits, cap), run)

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
        return check_latency(result, self.limit("max_latency_ratio"), increase, record, self._run.hardware.hardware_class)

    def _benchmark(self) -> Any | None:
        if not self._request.config.pluginmanager.hasplugin("benchmark"):
            return None
        return self._request.getfixturevalue("benchmark")

    def _record_extra_info(self, benchmark: Any, result: Measurement) -> None:
        run = self._run
        benchmark.group = f"quantreg {run.model_name} {run.settings.device_type}"
        info: dict[str, Any] = {
            "precision": self.label,
            "device": run.device,
            "hardware": run.hardware.to_json(),
            "hardware_class": run.hardware.hardware_class,
            "keep_fp32": keep.describe(self.keep_fp32),
            "kept_fp32": list(result.kept_fp32),
            "model": run.model_name,
            "weights_sha256": run.weights_sha256,
            "dataset_sha256": run.dataset.sha256,
            "sample_sha256": run.sample.sha256,
            "n_samples": len(result.labels),
            "accuracy": result.accuracy,
            "avg_confidence": result.avg_confidence,
            "size_mb": result.size_mb,
            **class_metrics(result.labels, result.predictions, run.labels).to_json(),
        }
        baseline = run.usable_baseline()
        if baseline is not None:
            stats = _user_errors(lambda: agreement(result, baseline, run.metric, run.labels))
            info.update(
                metric=run.metric.spec,
                metric_value=stats.metric_value,
                baseline_metric=stats.fp32_metric,
                metric_drop_pp=stats.metric_drop_pp,
                metric_drop_ci95=list(stats.metric_drop_ci95),
                flips_by_class=stats.class_flips,
                baseline_accuracy=baseline.accuracy,
                accuracy_drop_pp=stats.accuracy_drop_pp,
                accuracy_drop_ci95=list(stats.accuracy_drop_ci95),
                mcnemar_p=stats.mcnemar_p,
                flip_rate=stats.flip_rate,
                agreement=stats.agreement,
                kl_mean=stats.kl_mean,
                max_logit_change=stats.max_logit_change,
                confidence_change_pp=stats.confidence_change_pp,
            )
        info.update(timing_info(result))
        if self.label in run.fallback_reports:
            info.update(fallback_info(run.fallback_reports[self.label]))
        benchmark.extra_info.update(info)
        run.extra_infos[self.label] = benchmark.extra_info  # a fallback search later in the session adds to it


def _user_errors(call: Any, run: QuantregRun | None = None) -> Any:
    """Run ``call``; a user mistake fails the test with its message instead of a traceback, and so does
    a library's crash (its traceback shown under the message with -v or --tb=long)."""
    __tracebackhide__ = True
    try:
        return call()
    except QuantregError as exc:
        pytest.fail(str(exc), pytrace=False)
    except LibraryFailure as exc:
        tracebacks = run is not None and run.settings.library_tracebacks
        raise pytest.fail.Exception(str(exc), pytrace=tracebacks) from (exc.__cause__ if tracebacks else None)


def _user_errors_or_none(call: Any) -> Any:
    try:
        return call()
    except QuantregError:
        return None


# -- reporting -------------------------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist controller: take in what a finished worker measured."""
    output = getattr(node, "workeroutput", {}).get(xdist.KEY)
    if output is not None:  # the worker's run used quantreg: so does the controller's, which reports it
        xdist.merge(activate(node.config), output)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the files asked for: the latency record, the weight report JSON and the Markdown report
    with charts. A pytest-xdist worker sends its results to the controller instead, which writes them."""
    run = session.config.stash.get(RUN, None)
    if run is None:
        return
    run.release_models()
    if xdist.is_worker(session.config):
        session.config.workeroutput[xdist.KEY] = xdist.worker_output(run)  # type: ignore[attr-defined]
        return
    try:
        run.record_latency()
    except QuantregError as exc:
        run.skipped["latency record"] = str(exc)
    path = run.settings.weights_report
    if path is not None and run.weight_reports:
        from pytest_quantreg.fileio import atomic_write_json

        try:
            atomic_write_json(path, {"model": run.model_name, "precisions": [r.to_json() for r in run.weight_reports.values()]})
            run.written.append(("written", path))
        except OSError as exc:
            run.skipped["weights report"] = f"cannot write {path}: {exc.strerror}; choose a writable --quantreg-weights-report path"
    _write_fallbacks(run)
    folder = run.settings.report_dir
    if folder is not None and run.measurements:
        from pytest_quantreg.report import TITLE, header
        from pytest_quantreg.report_files import write_report

        try:
            files = write_report(
                folder,
                f"{TITLE.title()}: {run.model_name}",
                header(run),
                run.ordered_measurements(),
                run.statistics_reference(),
                run.metric,
                run.labels,
            )
            run.written.extend(("written", file) for file in files)
        except OSError as exc:
            run.skipped["report"] = f"cannot write into {folder}: {exc.strerror}; choose a writable --quantreg-report folder"


def _write_fallbacks(run: QuantregRun) -> None:
    """The fallback searches' JSON file, and with ``--quantreg-update-baselines`` their sets in the baseline."""
    from pytest_quantreg.fileio import atomic_write_json

    reports = run.fallback_reports
    path = run.settings.fallback_report
    if path is not None and reports:
        try:
            atomic_write_json(path, {"model": run.model_name, "precisions": list(reports.values())})
            run.written.append(("written", path))
        except OSError as exc:
            run.skipped["fallback report"] = f"cannot write {path}: {exc.strerror}; choose a writable --quantreg-fallback-report path"
    setting = keep.describe(run.settings.keep_fp32)
    found = {label: {"units": r["units"], "keep_fp32": setting} for label, r in reports.items() if r["passes"]}
    if run.settings.update_baselines and found and run.usable_baseline() is not None:
        from pytest_quantreg.baselines import write_fallback
        from pytest_quantreg.example import library_versions

        try:
            write_fallback(run.baseline_path, found, library_versions())
            run.notes["fallback stored"] = f"fallback sets of {', '.join(found)} stored in {run.baseline_path}"
        except QuantregError as exc:
            run.skipped["fallback sets"] = str(exc)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the comparison summary last, after pytest-benchmark's table: the run ends with it."""
    from pytest_quantreg.report import TITLE, fallback_lines, summary_table, weight_lines

    run = config.stash.get(RUN, None)
    if run is None:
        return
    if run.measurements:
        terminalreporter.write_sep("=", f"{TITLE} ({run.model_name}, {len(run.sample)} samples, {run.device})")
        reference = _user_errors_or_none(run.statistics_reference)
        for line in summary_table(run.ordered_measurements(), reference[0] if reference else None, run.metric, run.labels):
            terminalreporter.write_line(line)
        if reference is not None:
            terminalreporter.write_line(f"paired statistics against {reference[1]}")
    if run.weight_reports:
        terminalreporter.write_sep("=", f"QUANTREG WEIGHT ERROR ({run.model_name})")
        for report in run.weight_reports.values():
            for line in weight_lines(report):
                terminalreporter.write_line(line)
    if run.fallback_reports:
        terminalreporter.write_sep("=", f"QUANTREG FALLBACK ({run.model_name})")
        for found in run.fallback_reports.values():
            for line in fallback_lines(found):
                terminalreporter.write_line(line)
    named = {run.settings.weights_report: "weight report", run.settings.fallback_report: "fallback report"}
    for outcome, path in run.written:
        what = named.get(path) or ("report file" if outcome == "written" else "baseline")
        terminalreporter.write_line(f"quantreg: {what} {outcome}: {path}")
    notes = [_user_errors_or_none(run.build_difference), run.unrecorded_note(), *run.notes.values()]
    for note in filter(None, notes):
        terminalreporter.write_line(f"quantreg: {note}")
    for name, reason in run.skipped.items():
        terminalreporter.write_line(f"quantreg: {name} skipped: {reason}")
    quantized = [n for n in run.selected if n != FP32]
    if run.requested and quantized and terminalreporter.stats.get("skipped") and not any(n in run.measurements for n in quantized):
        terminalreporter.write_line(
            f"quantreg: NO QUANTIZED MODEL WAS TESTED: every test of {', '.join(quantized)} was skipped (reasons above); "
            "this run says nothing about them",
            red=True,
            bold=True,
        )
