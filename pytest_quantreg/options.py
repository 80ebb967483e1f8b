"""The command-line options and ini settings: their names, defaults and help, the short spellings
taken where a suite leaves them free, and whether a run asked for quantreg at all.

Every option has an ini twin (``quantreg_precision`` for ``--quantreg-precision`` and so on); the
command line wins. :mod:`pytest_quantreg.settings` reads and checks their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from pytest_quantreg.backends.registry import ALIASES_BY_DEVICE, DEFAULT_PRECISIONS, builtin_registry
from pytest_quantreg.measure import keep

FALLBACK_MODES = ("off", "report", "enforce")
MIN_PAIRS = 6  # the fewest pairs whose median has a distribution-free 95% interval inside their range

# (option, ini name, default, help); flags are declared separately.
_VALUED: list[tuple[str, str, str, str]] = [
    (
        "--quantreg-precision",
        "quantreg_precision",
        DEFAULT_PRECISIONS,
        "Comma-separated precisions to test: %(precisions)s, those a conftest.py registers, NAME+compile of the "
        "compilable ones, the aliases %(aliases)s, or all (default: %(default)s)",
    ),
    (
        "--quantreg-device",
        "quantreg_device",
        "auto",
        "Device to run on: cpu, cuda, cuda:N or auto (CUDA when available; default: %(default)s)",
    ),
    ("--quantreg-model", "quantreg_model", "", "Local Hugging Face folder of a sequence classifier (default: the embedded example)"),
    ("--quantreg-dataset", "quantreg_dataset", "", "CSV or JSON Lines file with texts and labels (default: the embedded tweets)"),
    ("--quantreg-text-column", "quantreg_text_column", "text", "Text column of --quantreg-dataset (default: %(default)s)"),
    (
        "--quantreg-label-column",
        "quantreg_label_column",
        "label",
        "Label column of --quantreg-dataset: ids or names (default: %(default)s)",
    ),
    (
        "--quantreg-samples",
        "quantreg_samples",
        "all",
        "Samples to evaluate: a count, a fraction such as 0.5 or 1/30, or all (default: %(default)s)",
    ),
    ("--quantreg-seed", "quantreg_seed", "0", "Seed of the stratified sample (default: %(default)s)"),
    (
        "--quantreg-calibration-samples",
        "quantreg_calibration_samples",
        "300",
        "Calibration texts of the static INT8 precisions (onnx-int8-static, openvino-int8-static): drawn from the data set's "
        "texts outside the evaluation sample, label-stratified, seeded by --quantreg-seed (default: %(default)s)",
    ),
    (
        "--quantreg-calibration-file",
        "quantreg_calibration_file",
        "",
        "CSV or JSON Lines file whose --quantreg-text-column holds the calibration texts, instead of the data set's own "
        "(texts of the evaluation sample are left out)",
    ),
    ("--quantreg-max-length", "quantreg_max_length", "128", "Tokens per text before truncation (default: %(default)s)"),
    ("--quantreg-warmup", "quantreg_warmup", "5", "Warmup forward passes before timing each precision (default: %(default)s)"),
    (
        "--quantreg-batch-size",
        "quantreg_batch_size",
        "1",
        "Batch size of untimed accuracy passes, length-bucketed to limit padding; timed passes stay at 1 (default: %(default)s)",
    ),
    (
        "--quantreg-latency-pairs",
        "quantreg_latency_pairs",
        "50",
        "Samples, spread over the sample, on which FP32 is timed back to back with each other precision's timed pass; "
        f"the latency ratio and its confidence interval come from these pairs (at least {MIN_PAIRS}; default: %(default)s)",
    ),
    (
        "--quantreg-metric",
        "quantreg_metric",
        "accuracy",
        "What the drop gates (max drop, relative accuracy, alpha) judge: accuracy, macro-f1, weighted-f1, "
        "or recall:CLASS, precision:CLASS, f1:CLASS of one class (default: %(default)s)",
    ),
    (
        "--quantreg-keep-fp32",
        "quantreg_keep_fp32",
        keep.DEFAULT,
        "Modules the precisions that quantize Linear layers keep in FP32: head (the output head), none, "
        "or comma-separated module names such as bert.pooler,bert.encoder.layer.5 (default: %(default)s)",
    ),
    (
        "--quantreg-fallback",
        "quantreg_fallback",
        "off",
        "Fallback search for precisions that fail their accuracy gates: report (find the smallest set of units to keep "
        "in FP32 and show it; the test still fails), enforce (judge the precision with that set applied) or off "
        "(default: %(default)s)",
    ),
    (
        "--quantreg-fallback-max-passes",
        "quantreg_fallback_max_passes",
        "20000",
        "Budget of one precision's fallback search in forward passes of one sample (default: %(default)s)",
    ),
    (
        "--quantreg-fallback-max-seconds",
        "quantreg_fallback_max_seconds",
        "600",
        "Budget of one precision's fallback search in seconds (default: %(default)s)",
    ),
    (
        "--quantreg-fallback-headroom",
        "quantreg_fallback_headroom",
        "20",
        "Percent by which the fallback search tightens each accuracy limit on the half it decides on, so that the set "
        "it finds also passes the held-out half (default: %(default)s)",
    ),
    (
        "--quantreg-fallback-report",
        "quantreg_fallback_report",
        "",
        "Write each fallback search's unit ranking, set and settings to this JSON file (put it beside --quantreg-weights-report)",
    ),
    (
        "--quantreg-baseline-dir",
        "quantreg_baseline_dir",
        "baselines",
        "Folder of the stored FP32 baselines, relative to the rootdir (default: %(default)s)",
    ),
    (
        "--quantreg-report",
        "quantreg_report",
        "",
        "Write a Markdown report and PNG charts of the run into this folder (needs matplotlib: pytest-quantreg[report])",
    ),
    (
        "--quantreg-weights-report",
        "quantreg_weights_report",
        "",
        "Write the per-layer weight quantization error of every built precision to this JSON file and print the worst layers",
    ),
]
_FLAGS: list[tuple[str, str, str]] = [
    (
        "--quantreg-update-baselines",
        "quantreg_update_baselines",
        "Record missing FP32 baselines and refresh existing ones, with this hardware class's records (--quantreg-record); "
        "the only way a baseline is created",
    ),
    (
        "--quantreg-record",
        "quantreg_record",
        "Record, for this hardware class, each precision's per-sample outcome (which later runs are judged against) and its "
        "latency ratio in the existing baseline; FP32's outcome there is left as it is",
    ),
    (
        "--quantreg-record-latency",
        "quantreg_record_latency",
        "Record only this run's latency ratios for this hardware class in the existing baseline (--quantreg-record records outcomes too)",
    ),
    (
        "--quantreg-accept-reference",
        "quantreg_accept_reference",
        "Record and judge against an FP32 reference that fails the sanity checks (at or below chance, labels never "
        "predicted, a tokenizer that is not the model's); off unless given",
    ),
    (
        "--quantreg-trust-remote-code",
        "quantreg_trust_remote_code",
        "Allow a model folder's own Python code (auto_map) to run when it loads; off unless given (read that code first)",
    ),
]


@dataclass(frozen=True)
class Gate:
    """A per-precision threshold: its option (``--quantreg-`` + key), ini name and marker keyword are ``key``."""

    key: str
    help: str
    upper: float = math.inf

    @property
    def option(self) -> str:
        return "--quantreg-" + self.key.replace("_", "-")

    @property
    def ini(self) -> str:
        return "quantreg_" + self.key


GATES: tuple[Gate, ...] = (
    Gate("max_drop", "Largest drop of the --quantreg-metric (accuracy by default) vs the FP32 baseline, in percentage points"),
    Gate("min_relative_accuracy", "Smallest --quantreg-metric value as a percentage of FP32's, MLPerf style (e.g. 99)", upper=100.0),
    Gate(
        "alpha",
        "Significance level: the accuracy gates fail only when the drop is also significant (one-sided exact McNemar p < alpha)",
        upper=0.5,
    ),
    Gate("max_flip_rate", "Largest share of samples whose predicted label differs from FP32's, in percent", upper=100.0),
    Gate("max_kl", "Largest mean KL divergence of FP32's softmax to this precision's, in nats"),
    Gate(
        "max_drift_flip_rate",
        "Largest share of samples whose prediction differs from this precision's own record for this hardware class, in percent",
        upper=100.0,
    ),
    Gate("max_drift_kl", "Largest mean KL divergence of this precision's recorded softmax (this hardware class) to this run's, in nats"),
    Gate(
        "max_latency_ratio",
        "Largest latency over FP32's, timed back to back on the same samples (median of the per-sample ratios); "
        "fails only when the ratio's 95% CI is above it",
    ),
    Gate(
        "max_latency_increase",
        "Largest rise, in percent, of the latency ratio over the one recorded in the baseline for this hardware class; "
        "fails only when the ratio's 95% CI is above it",
    ),
)


SHORT = {"--precision": "--quantreg-precision", "--device": "--quantreg-device"}  # short spelling -> our own
GROUP = "quantreg"


def add_options(parser: pytest.Parser) -> None:
    """Declare the ``quantreg`` option group and the ini settings (the short spellings come later:
    :func:`add_short_options`)."""
    group = parser.getgroup(GROUP, "quantization regression (pytest-quantreg)")
    for option, ini, default, help_text in _VALUED:
        text = help_text % {"default": default, **_registered()}
        group.addoption(option, dest=ini, default=None, metavar=option.rsplit("-", 1)[-1].upper(), help=text)
        parser.addini(ini, help_text.split(" (default")[0].split(":")[0], default=default)
    for gate in GATES:
        help_text = f"{gate.help}: N for every precision or NAME=N,... per precision".replace("%", "%%")  # argparse formats help
        group.addoption(gate.option, dest=gate.ini, default=None, metavar="N", help=help_text)
        parser.addini(gate.ini, gate.help, default="")
    for option, ini, help_text in _FLAGS:
        group.addoption(option, dest=ini, action="store_true", default=None, help=help_text)
        parser.addini(ini, help_text, type="bool", default=False)


def _registered() -> dict[str, str]:
    """The built-in precisions and the aliases, as ``--help`` lists them."""
    aliases = [
        f"{alias} ({' on cpu, '.join(by_device[alias] for by_device in ALIASES_BY_DEVICE.values())} on cuda)"
        for alias in ALIASES_BY_DEVICE["cpu"]
    ]
    return {"precisions": ", ".join(builtin_registry().names()), "aliases": ", ".join(aliases)}


def add_short_options(parser: pytest.Parser) -> tuple[str, ...]:
    """Add ``--precision`` and ``--device`` as spellings of ``--quantreg-precision`` and
    ``--quantreg-device`` where no other plugin or conftest has claimed them, once every option of
    the run is declared; return the ones left to their owners (the suite keeps working)."""
    taken = _declared_names(parser)
    group = parser.getgroup(GROUP)
    yielded = []
    for short, own in SHORT.items():
        if short in taken:
            yielded.append(short)
            continue
        ini, default, help_text = next((ini, default, text) for option, ini, default, text in _VALUED if option == own)
        group.addoption(
            short,
            dest=ini,
            default=None,
            metavar=short.lstrip("-").upper(),
            help=f"Same as {own}: " + help_text % {"default": default, **_registered()},
        )
    return tuple(yielded)


def _declared_names(parser: pytest.Parser) -> set[str]:
    """Every option string declared so far, in any group (pytest has no public way to list them)."""
    groups = [getattr(parser, "_anonymous", None), *getattr(parser, "_groups", [])]
    return {name for group in groups if group is not None for option in group.options for name in option.names()}


def requested(config: pytest.Config) -> bool:
    """Whether this run asks for quantreg by an option on the command line or a setting in the ini
    file (one that differs from its default: pytest cannot tell a setting from its default)."""
    defaults = {ini: default for _, ini, default, _ in _VALUED} | {gate.ini: "" for gate in GATES} | {ini: False for _, ini, _ in _FLAGS}
    if any(config.getoption(ini, None) is not None for ini in defaults):
        return True
    return any(config.getini(ini) != default for ini, default in defaults.items())
