"""Setting a run up: its settings resolved and checked before any test runs, and its header lines.

pytest loads the plugin into every run of the environment, so it stays dormant until the run uses
it: a quantreg option or ini setting activates it at configuration, otherwise the first collected
test that requests a quantreg fixture or carries the ``quantreg`` marker does. A dormant run prints
nothing, imports no torch, reads no data and writes no file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_quantreg import options
from pytest_quantreg.backends.registry import builtin_registry
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.fileio import check_writable
from pytest_quantreg.measure.loading import check_model_dir
from pytest_quantreg.run.session import QuantregRun
from pytest_quantreg.settings import Settings, resolve

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


def activate(config: pytest.Config) -> QuantregRun:
    """This session's quantreg run, set up and checked on first use; ``pytest.UsageError`` with the fix."""
    run = config.stash.get(RUN, None)
    if run is not None:
        return run
    settings = resolve(config)
    try:
        settings = _resolve_device(settings)
        registry = builtin_registry()
        config.hook.pytest_quantreg_precisions(registry=registry)
        settings = settings.with_canonical_limits(lambda name: registry.canonical(name, settings.device_type))
        run = QuantregRun(settings=settings, registry=registry, selected=registry.select(settings.precision, settings.device_type))
        if settings.model is not None:
            _check_max_length(settings, check_model_dir(settings.model, trust_remote_code=settings.trust_remote_code))
        _check_outputs(settings)
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            run.subject.uncaptured = capture.global_and_fixture_disabled
        run.subject.metric  # noqa: B018 -- reads and checks the data set, the sample size and --quantreg-metric now, not mid-run
    except QuantregError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[RUN] = run
    return run


def uses_quantreg(item: pytest.Item) -> bool:
    """Whether a collected test requests a quantreg fixture or carries the marker."""
    return not FIXTURES.isdisjoint(getattr(item, "fixturenames", ())) or item.get_closest_marker("quantreg") is not None


def header(config: pytest.Config, run: QuantregRun) -> list[str]:
    """The run's header lines, and which short options the suite kept for itself."""
    from pytest_quantreg.report.terminal import header

    lines = header(run, hardware=not config.option.collectonly)  # collection imports no torch
    yielded = config.stash.get(YIELDED, ())
    if yielded:
        ours = ", ".join(options.SHORT[name] for name in yielded)
        lines.append(f"quantreg: {', '.join(yielded)} belong to this suite (declared by its own plugin or conftest); quantreg reads {ours}")
    return lines


def _check_max_length(settings: Settings, config: Mapping[str, Any]) -> None:
    """Texts are truncated to --quantreg-max-length tokens: no more than the model has positions for."""
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and settings.max_length > positions:
        raise QuantregError(
            f"--quantreg-max-length={settings.max_length} is more tokens than the model in {settings.model} has positions for "
            f"(max_position_embeddings {positions}); use --quantreg-max-length={positions} or less"
        )


def _check_outputs(settings: Settings) -> None:
    """Every file this run was asked to write can be written: found out now, not after the tests."""
    if settings.records_latency:
        check_writable(settings.baseline_dir, "--quantreg-baseline-dir")
    if settings.weights_report is not None:
        check_writable(settings.weights_report.parent, "--quantreg-weights-report")
    if settings.fallback_report is not None:
        check_writable(settings.fallback_report.parent, "--quantreg-fallback-report")
    if settings.report_dir is not None:
        from pytest_quantreg.report.files import check_available

        check_available()
        check_writable(settings.report_dir, "--quantreg-report")


def _resolve_device(settings: Settings) -> Settings:
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
