"""Portable verdicts: the same example on every CPU, the output head kept in FP32, a library's crash
as one message, the hardware in every record, and latency judged against the same hardware class.

``ATEN_CPU_CAPABILITY`` makes this machine run an older CPU generation's kernels, so the tests
that need two kinds of CPU run child processes under it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from custom_precisions import CUSTOM_PRECISIONS
from outcomes import assert_verdicts, busy_skips, until_judged
from projects import record_baseline, record_baseline_with

from pytest_quantreg.backends import registry
from pytest_quantreg.backends.base import BuildContext
from pytest_quantreg.backends.casts import bf16_blocked
from pytest_quantreg.backends.registry import builtin_registry, libraries
from pytest_quantreg.errors import QuantregError
from pytest_quantreg.fileio import file_sha256
from pytest_quantreg.judge.baselines import load
from pytest_quantreg.measure import keep
from pytest_quantreg.measure.example import CACHE_ENV, example_model, read_manifest
from pytest_quantreg.measure.failures import failing_library
from pytest_quantreg.measure.hardware import TORCH_KERNEL_ENV
from pytest_quantreg.measure.loading import known_noise_filtered

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_BASELINE = REPO / "baselines" / "quantreg-example-minilm-tweets__tweets__n387-seed0-len128__cpu.json"
LINEAR_BACKENDS = ["int8-dynamic", "int8-bnb", "int4-nf4", "int4-fp4"]


def capability_env(capability: str | None) -> dict[str, str]:
    """This process's environment without kernel caps, with ``capability``'s for torch and the backends (None: native)."""
    env = {k: v for k, v in os.environ.items() if k not in (*TORCH_KERNEL_ENV, *registry.kernel_env())}
    return {**env, **registry.capability_env(capability)} if capability else env


# -- the example is the same model everywhere ---------------------------------------------------------

SMOKE_BUILD = (
    "import dataclasses; from pytest_quantreg.measure.example import default_recipe, example_model; "
    "print(example_model(recipe=dataclasses.replace(default_recipe(), epochs=1, train_limit=48), progress=False))"
)


def test_example_builds_the_same_bits_whatever_the_callers_cpu_kernels(tmp_path: Path) -> None:
    """Built natively these smoke builds differ on an AVX-512 machine (torch's AVX512 and DEFAULT
    kernels round differently); the build pins its kernels to AVX2, so the caller's do not matter."""
    hashes = {}
    for capability in ("default", None):
        env = {**capability_env(capability), CACHE_ENV: str(tmp_path / str(capability))}
        result = subprocess.run([sys.executable, "-c", SMOKE_BUILD], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        folder = Path(result.stdout.strip().splitlines()[-1])
        hashes[capability] = file_sha256(folder / "model.safetensors")
        kernels = read_manifest(folder)["kernels"]
        assert isinstance(kernels, dict)
        if torch.cpu._is_avx2_supported():
            assert kernels["torch_cpu_capability"] == "AVX2"
            assert kernels["env"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert hashes["default"] == hashes[None]


def example_project(pytester: pytest.Pytester, edit: dict[str, str]) -> pytest.Pytester:
    """A project running the example's tests against a copy of its committed baseline, provenance edited."""
    from projects import EXAMPLE_TESTS

    pytester.makepyfile(test_regression=EXAMPLE_TESTS)
    pytester.makeini("[pytest]\nquantreg_device = cpu\n")
    document = json.loads(EXAMPLE_BASELINE.read_text(encoding="utf-8"))
    document["provenance"].update(edit)
    (pytester.path / "baselines").mkdir()
    (pytester.path / "baselines" / EXAMPLE_BASELINE.name).write_text(json.dumps(document), encoding="utf-8")
    return pytester


def test_example_built_with_other_bits_is_judged_by_fp32_drift_not_refused(bitsandbytes_imported: None, pytester: pytest.Pytester) -> None:
    here = read_manifest(example_model(progress=False))["weights_sha256"]
    project = example_project(pytester, {"weights_sha256": "0" * 64})  # as if recorded on a CPU that builds other bits
    result = project.runpytest("--precision=fp32", "-k", "accuracy")
    assert_verdicts(result, passed=1)
    result.stdout.fnmatch_lines(
        [
            f"quantreg: the example was built here with other bits than the baseline's (weights sha256 {str(here)[:12]} here, "
            f"000000000000 in {EXAMPLE_BASELINE.name}; same recipe *): FP32 is judged by its drift gates against the stored "
            "predictions; they differ by: flip rate 0.00% (0/387), mean KL *, max |logit change| *",
        ]
    )


def test_example_from_another_recipe_is_still_refused(bitsandbytes_imported: None, pytester: pytest.Pytester) -> None:
    project = example_project(pytester, {"weights_sha256": "0" * 64, "recipe": "another12345"})
    result = project.runpytest("--precision=fp32", "-k", "accuracy")
    assert_verdicts(result, failed=1)
    result.stdout.fnmatch_lines(["*was recorded for another model (different weights): weights_sha256 is 000000000000 there*"])


LATENCY_PROTOCOL_ON = ("fp32", "int8-dynamic", "onnx-int8-dynamic", "openvino-int8-static")  # torch, ONNX Runtime, OpenVINO kernels


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_example_suite_passes_under_another_cpu_generation(capability: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What CI checks for every runner it may get: the README's suite under an older CPU generation's kernels.

    Every precision's accuracy verdict (against FP32, and against its own record where the baseline has one
    for this hardware class), and under AVX2, the common runner, the latency protocol on one precision of
    each runtime. Timing every precision under both would double CI's time; the latency ceilings of every
    precision under both are measured by benchmarks/capabilities.py (benchmarks/RESULTS.md, sections 8 and 14)."""
    timed = [] if capability == "default" else [f"test_latency[{name}]" for name in LATENCY_PROTOCOL_ON]
    command = [sys.executable, "-m", "pytest", "tests/test_quantization.py", "--precision=all", "-p", "no:cacheprovider", "-rs"]
    command += ["-k", " or ".join(["accuracy", *timed])]
    result = subprocess.run(command, cwd=REPO, env=capability_env(capability), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    registry = builtin_registry()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)  # what can run depends on it (bf16 on a CPU with AMX)
    runs = [name for name in registry.select("all", "cpu") if registry[name].unavailable_reason("cpu") is None]
    latency = [name for name in runs if f"test_latency[{name}]" in timed]
    busy = busy_skips(result.stdout)  # a latency test the machine kept busy is not judged: not what this test is about
    assert f"{len(runs) + len(latency) - busy} passed" in result.stdout  # every installed precision that runs on a CPU
    assert f"torch CPU capability {capability.upper()}" in result.stdout


# -- the output head stays in FP32 --------------------------------------------------------------------


@known_noise_filtered()
@pytest.mark.parametrize("precision", LINEAR_BACKENDS)
def test_builtin_backends_keep_the_head_in_fp32_and_none_quantizes_it(tiny_model_dir: Path, precision: str) -> None:
    chosen = builtin_registry()[precision]
    if chosen.unavailable_reason("cpu") or chosen.import_problem():
        pytest.skip(chosen.unavailable_reason("cpu") or chosen.import_problem())
    head = keep.resolve((keep.HEAD,), keep.linear_layers(keep.meta_model(tiny_model_dir)), num_labels=2)
    assert head == ("classifier",)
    kept = chosen.build(BuildContext(tiny_model_dir, "cpu", keep_fp32=head))
    assert type(kept.classifier) is torch.nn.Linear
    assert kept.classifier.weight.dtype == torch.float32
    assert type(kept.bert.pooler.dense) is not torch.nn.Linear  # everything else is quantized
    assert keep.kept_in_fp32(kept, ["classifier", "bert.pooler.dense"]) == ("classifier",)
    everything = chosen.build(BuildContext(tiny_model_dir, "cpu", keep_fp32=()))
    assert type(everything.classifier) is not torch.nn.Linear
    with torch.inference_mode():  # runs on every CPU, AVX-512 BF16 ones included (bitsandbytes needs 32-row layers there)
        kept(input_ids=torch.tensor([[2, 10, 11, 3]]))


LAYERS = [("bert.encoder.layer.0.attention.self.query", 64), ("bert.encoder.layer.1.output.dense", 64), ("bert.pooler.dense", 64)]


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (("head",), ("classifier",)),
        (("bert.pooler",), ("bert.pooler.dense",)),
        (("bert.encoder.layer.1", "head"), ("bert.encoder.layer.1.output.dense", "classifier")),
        ((), ()),
    ],
)
def test_keep_names_resolve_to_linear_layers(tokens: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert keep.resolve(tokens, [*LAYERS, ("classifier", 2)], num_labels=2) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("head,none", "'none' cannot be combined with module names"),
        (" , ", "no module named; use --quantreg-keep-fp32=head (the default)"),
    ],
)
def test_bad_keep_settings_say_what_to_write(value: str, message: str) -> None:
    with pytest.raises(QuantregError, match=message.replace("(", r"\(").replace(")", r"\)")):
        keep.parse(value)


def test_unknown_module_and_headless_models_name_the_fix() -> None:
    with pytest.raises(QuantregError, match=r"no Linear layer or module named 'clasifier'; its Linear layers are named like bert\."):
        keep.resolve(("clasifier",), [*LAYERS, ("classifier", 2)], num_labels=2)
    with pytest.raises(QuantregError, match="no Linear layer with 3 outputs"):
        keep.resolve(("head",), [*LAYERS, ("classifier", 2)], num_labels=3)
    assert keep.parse("none") == ()
    assert keep.parse(["head", "bert.pooler"]) == ("head", "bert.pooler")


def test_keep_option_and_marker_reach_the_build_the_table_and_the_json(quantreg_pytester: pytest.Pytester) -> None:
    quantreg_pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.quantreg(keep_fp32="bert.encoder.layer.1,head", precisions=["int8-dynamic"])
        def test_own_set(quantreg):
            assert quantreg.label == "int8-dynamic[keep-fp32=bert.encoder.layer.1,head]"
            measured = quantreg.measure()
            assert len(measured.kept_fp32) == 7  # six Linear layers in block 1, and the head
            assert measured.kept_fp32[-1] == "classifier"
        """
    )
    result = quantreg_pytester.runpytest("--precision=fp32,int8", "--benchmark-json=head.json")
    assert_verdicts(result, passed=3, failed=2)  # the accuracy tests have no baseline: not what this test is about
    result.stdout.fnmatch_lines(
        [
            "quantreg: kept in FP32 by the precisions that quantize Linear layers: head (--quantreg-keep-fp32; *",
            "kept in FP32 * | * - | * classifier | * 7 layers |*",
        ]
    )
    kept = {
        b["extra_info"]["precision"]: b["extra_info"]["kept_fp32"]
        for b in json.loads((quantreg_pytester.path / "head.json").read_text())["benchmarks"]
    }
    assert kept == {"fp32": [], "int8-dynamic": ["classifier"]}

    none = quantreg_pytester.runpytest("--precision=fp32,int8", "--quantreg-keep-fp32=none", "-k", "latency", "--benchmark-json=none.json")
    assert_verdicts(none, passed=2)
    infos = [b["extra_info"] for b in json.loads((quantreg_pytester.path / "none.json").read_text())["benchmarks"]]
    assert {i["precision"]: (i["keep_fp32"], i["kept_fp32"]) for i in infos}["int8-dynamic"] == ("none", [])
    none.stdout.fnmatch_lines(["quantreg: kept in FP32 by the precisions that quantize Linear layers: none *"])
    assert "kept in FP32  " not in none.stdout.str()  # no table row: nothing was kept

    typo = quantreg_pytester.runpytest("--precision=int8", "--quantreg-keep-fp32=clasifier", "-k", "latency")
    assert_verdicts(typo, failed=1)
    typo.stdout.fnmatch_lines(["*--quantreg-keep-fp32: the model has no Linear layer or module named 'clasifier'; its Linear layers*"])
    assert "Traceback" not in typo.stdout.str()

    usage = quantreg_pytester.runpytest("--quantreg-keep-fp32=head,none")
    assert usage.ret == pytest.ExitCode.USAGE_ERROR
    assert "--quantreg-keep-fp32: 'none' cannot be combined with module names (head, none)" in usage.stderr.str()


# -- a library's crash is one message -----------------------------------------------------------------

BROKEN = textwrap.dedent(
    """
    import torch
    from transformers import BitsAndBytesConfig

    def _bad_config(ctx):
        return ctx.load(quantization_config=BitsAndBytesConfig(load_in_8bit=True, load_in_4bit=True))  # transformers raises

    def _bad_forward(ctx):
        model = ctx.load()
        model.classifier = torch.nn.Linear(7, 2)  # the wrong input size: torch raises in every forward pass
        return model

    def _own_bug(ctx):
        raise RuntimeError("a bug in my own build function")

    def pytest_quantreg_precisions(registry):
        registry.register("bad-config", _bad_config, devices=["cpu"])
        registry.register("bad-forward", _bad_forward, devices=["cpu"])
        registry.register("own-bug", _own_bug, devices=["cpu"])
    """
)


def test_library_failure_fails_its_precision_with_one_message(quantreg_pytester: pytest.Pytester) -> None:
    quantreg_pytester.makeconftest(BROKEN)
    record_baseline(quantreg_pytester)
    result = quantreg_pytester.runpytest("--precision=fp32,bad-config,bad-forward", "-k", "accuracy")
    assert_verdicts(result, passed=1, failed=2)  # FP32 keeps running
    result.stdout.fnmatch_lines(
        [
            "bad-config failed inside transformers * while building the model: ValueError: load_in_4bit and load_in_8bit are both True*",
            "  hardware: * torch CPU capability *, quantized engine *, * threads",
            "  what to do: leave bad-config out of --precision, or try another transformers release; "
            "-v or --tb=long shows transformers's traceback",
            f"bad-forward failed inside torch {torch.__version__} while running the model: RuntimeError: mat1 and mat2 shapes cannot*",
        ]
    )
    text = result.stdout.str()
    assert "Traceback" not in text
    assert "quantization_config.py" not in text  # no library frames by default

    verbose = quantreg_pytester.runpytest("--precision=bad-forward", "-k", "accuracy", "--tb=long")
    assert_verdicts(verbose, failed=1)
    verbose.stdout.fnmatch_lines(
        ["*torch/nn/modules/linear.py*", "*The above exception was the direct cause*", "*bad-forward failed inside torch*"]
    )

    own = quantreg_pytester.runpytest("--precision=own-bug", "-k", "accuracy")
    assert_verdicts(own, failed=1)
    own.stdout.fnmatch_lines(['*raise RuntimeError("a bug in my own build function")*'])  # the user's bug keeps its traceback
    assert "failed inside" not in own.stdout.str()


def test_importing_bitsandbytes_shows_no_noise() -> None:
    """On AVX-512 BF16 CPUs bitsandbytes logs at import that the hub package 'kernels' is missing."""
    code = "from pytest_quantreg.backends.registry import builtin_registry; print(builtin_registry()['int4-nf4'].import_problem())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "None"
    assert "kernels" not in result.stderr, result.stderr


def test_failing_library_is_the_innermost_frame() -> None:
    def raise_in_torch() -> None:
        torch.nn.functional.linear(torch.ones(1, 3), torch.ones(2, 4))

    with pytest.raises(RuntimeError) as from_torch:
        torch.nn.Linear(4, 2)(torch.ones(1, 3))
    assert failing_library(from_torch.value.__traceback__, libraries()) == "torch"
    with pytest.raises(RuntimeError) as from_here:
        raise_in_torch()  # torch's C++ code raised, called from this file: this file's bug
    assert failing_library(from_here.value.__traceback__, libraries()) is None


# -- hardware in the record, latency against the same hardware class ---------------------------------

LATENCY = ("--precision=fp32,int8", "-k", "latency", "--quantreg-max-latency-increase=50")  # the tiny model's ratio is per-call overhead


def test_hardware_is_in_the_header_the_baseline_and_the_json(quantreg_pytester: pytest.Pytester) -> None:
    args = ("--precision=fp32,int8", "--quantreg-update-baselines", "--benchmark-json=run.json")
    result = until_judged(lambda: quantreg_pytester.runpytest(*args))  # a busy machine's ratio is not recorded
    result.assert_outcomes(passed=4)
    capability = torch.backends.cpu.get_cpu_capability()
    result.stdout.fnmatch_lines([f"quantreg hardware: * torch CPU capability {capability},* avx2 *, vnni *, amx *, quantized engine *"])
    (baseline,) = (quantreg_pytester.path / "baselines").glob("*.json")
    recorded = json.loads(baseline.read_text())
    hardware = recorded["environment"]["hardware"]
    assert hardware["capability"] == capability
    assert hardware["threads"] == torch.get_num_threads()
    assert ("avx2" in hardware["features"]) == torch.cpu._is_avx2_supported()
    infos = [b["extra_info"] for b in json.loads((quantreg_pytester.path / "run.json").read_text())["benchmarks"]]
    assert {info["hardware_class"] for info in infos} == {hardware["hardware_class"]}
    assert list(recorded["latency_records"]) == [hardware["hardware_class"]]  # the update recorded int8's ratio too
    assert set(recorded["latency_records"][hardware["hardware_class"]]["ratios"]) == {"int8-dynamic"}


def test_latency_is_judged_against_the_ratio_recorded_for_this_hardware(
    quantreg_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    quantreg_pytester.makeconftest(CUSTOM_PRECISIONS)
    unrecorded = quantreg_pytester.runpytest("--precision=fp32,int8", "-k", "latency", "--quantreg-record-latency")
    unrecorded.stdout.fnmatch_lines(
        ["quantreg: latency ratios not recorded: no usable FP32 baseline at *; record one with --quantreg-update-baselines"]
    )
    record_baseline(quantreg_pytester)
    (baseline,) = (quantreg_pytester.path / "baselines").glob("*.json")
    before = json.loads(baseline.read_text())

    recorded = until_judged(lambda: quantreg_pytester.runpytest(*LATENCY, "--quantreg-record-latency"))
    recorded.assert_outcomes(passed=2)
    recorded.stdout.fnmatch_lines(["quantreg: latency ratios recorded for cpu | * threads: int8-dynamic * in *.json"])
    after = json.loads(baseline.read_text())
    assert {k: v for k, v in after.items() if k != "latency_records"} == before  # FP32's record is left as it was
    (hardware_class,) = after["latency_records"]

    assert_verdicts(quantreg_pytester.runpytest(*LATENCY), passed=2)  # unchanged: within the recorded ratio + 50%
    monkeypatch.setenv("TINY_SLOW", "1")
    slowed = until_judged(lambda: quantreg_pytester.runpytest(*LATENCY))
    slowed.assert_outcomes(passed=1, failed=1)  # the fixed limit (1000 in this project) passes it; the record does not
    slowed.stdout.fnmatch_lines(
        [
            "*int8-dynamic is too slow against FP32: latency ratio *",
            "*  - the whole interval is above *: the * recorded for this hardware class + 50% (command line: --quantreg-max-latency-inc*",
            f"*  hardware class: {hardware_class}",
        ]
    )
    monkeypatch.delenv("TINY_SLOW")

    record_baseline_with(quantreg_pytester)
    assert json.loads(baseline.read_text())["latency_records"] == after["latency_records"]  # refreshing FP32 keeps them

    # another CPU generation: another hardware class, no record yet (whatever capability this suite runs under)
    other = "avx2" if torch.backends.cpu.get_cpu_capability() == "DEFAULT" else "default"
    if other == "avx2" and not torch.cpu._is_avx2_supported():
        pytest.skip("a CPU without AVX2 runs torch's DEFAULT kernels only: no second hardware class to try")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", other)
    elsewhere = quantreg_pytester.runpytest_subprocess(*LATENCY)
    assert_verdicts(elsewhere, passed=2)
    elsewhere.stdout.fnmatch_lines(
        [f"quantreg: no latency ratio recorded for int8-dynamic on this hardware class (cpu | * | torch {other.upper()} | *) in *: only*"]
    )
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")


def test_example_baseline_holds_records_for_the_committed_hardware_classes() -> None:
    """The committed baseline carries ratios for the classes CI runs under (this kind of machine, three capabilities)."""
    document = json.loads(EXAMPLE_BASELINE.read_text(encoding="utf-8"))
    records = document["latency_records"]
    assert {entry["hardware"]["capability"] for entry in records.values()} >= {"DEFAULT", "AVX2"}
    registry = builtin_registry()
    on_cpu = {name for name in registry.names() if name != "fp32" and "cpu" in registry[name].devices}
    runnable = {name for name in on_cpu if registry[name].unsupported is None or registry[name].unsupported("cpu") is None}
    for entry in records.values():
        hardware = entry["hardware"]
        blocked = {"bf16"} if bf16_blocked(hardware["capability"], "amx" in hardware["features"]) else set()
        assert set(entry["ratios"]) == runnable - blocked  # torchao-int4-weight has no CPU kernel, bf16 none with AMX capped
        assert all(r["ci95"][0] <= r["ratio"] <= r["ci95"][1] for r in entry["ratios"].values())
    outcomes = load(EXAMPLE_BASELINE).outcome_records  # each record decodes: load checks them
    assert {entry["hardware"]["capability"] for entry in outcomes.values()} >= {"DEFAULT", "AVX2", "AVX512"}
    for entry in outcomes.values():
        assert set(entry["precisions"]) == runnable  # this AMD EPYC machine has no AMX: bf16 runs under every capability
    # No claim about which CPUs build the committed bits: the AMD EPYC machines here built 121a798302f5, two Intel
    # Xeon classes (with AMX, and with AVX-512 VNNI only) c1d951a86d20, and what decides it is not known. A run
    # that built other bits judges FP32 by its drift gates: test_example_built_with_other_bits_is_judged_by_fp32_drift_not_refused.
