"""The pytest plugin's hooks (the ``pytest11`` entry point): each a few lines, the work done elsewhere.

The plugin stays dormant until a run uses it (see :mod:`.startup`); torch and transformers are
imported only when a test needs a model.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_quantreg import options
from pytest_quantreg.plugin import fixtures, hookspec, marker, xdist
from pytest_quantreg.plugin.startup import RUN, YIELDED, activate, header, uses_quantreg


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser) -> Generator[None, None, None]:
    """Once the suite's conftests have declared their options: take --precision and --device where free."""
    result = yield
    early_config.stash[YIELDED] = options.add_short_options(parser)
    return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", marker.MARKER_HELP)
    config.pluginmanager.register(fixtures, "quantreg-fixtures")
    if not config.getoption("help") and options.requested(config):
        activate(config)  # else dormant until a collected test asks for quantreg


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash.get(RUN, None)
    return header(config, run) if run is not None else []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests that use the quantreg fixtures over the selected precisions."""
    if "quantreg_precision" not in metafunc.fixturenames:
        return
    try:
        run = activate(metafunc.config)
    except pytest.UsageError:
        return  # said once, as a usage error, when collection ends (pytest_collection_modifyitems)
    marker.parametrize(metafunc, run)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """A dormant run whose collected tests use quantreg (a fixture or the marker) becomes active here."""
    if RUN in config.stash or not any(uses_quantreg(item) for item in items):
        return
    lines = header(config, activate(config))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not config.option.collectonly:
        for line in lines:
            reporter.write_line(line)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist controller: take in what a finished worker measured."""
    output = getattr(node, "workeroutput", {}).get(xdist.KEY)
    if output is not None:  # the worker's run used quantreg: so does the controller's, which reports it
        activate(node.config).ledger.merge(output)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """A fallback search that ran after its precision was timed adds its set to that benchmark's entries."""
    run = config.stash.get(RUN, None)
    if run is not None:
        from pytest_quantreg.report.benchmark_info import add_fallbacks

        add_fallbacks(output_json, run.ledger.fallback_reports)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Finish the run (its records into the baseline), then write the files asked for; a pytest-xdist worker
    sends its ledger to the controller instead."""
    run = session.config.stash.get(RUN, None)
    if run is None:
        return
    run.builds.release()
    if xdist.is_worker(session.config):
        session.config.workeroutput[xdist.KEY] = run.ledger.to_json()  # type: ignore[attr-defined]
        return
    from pytest_quantreg.report.summary import write_files

    run.finish()
    write_files(run)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the comparison summary last, after pytest-benchmark's table: the run ends with it."""
    run = config.stash.get(RUN, None)
    if run is not None:
        from pytest_quantreg.report.summary import summary_lines

        summary_lines(run, terminalreporter)
