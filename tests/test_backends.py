"""The torchao and ONNX Runtime backends and compiled precisions, end to end on the tiny model and the example.

These precisions need the extras (``pip install 'pytest-quantreg[torchao,onnx]'``, which
``scripts/setup.sh`` installs); without them their tests skip with that command.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import textwrap
from pathlib import Path

import pytest
from outcomes import assert_verdicts, busy_skips, until_judged
from projects import labelled_csv, lenient_project, run_example, save_tiny, tiny_model, tiny_texts
from test_plugin import record_baseline

from pytest_quantreg.backends.registry import builtin_registry
from pytest_quantreg.measure.evaluation import warmup_indices
from pytest_quantreg.measure.hardware import int8_reduce_range
from pytest_quantreg.measure.inputs import Inputs

EXTRAS = "pip install 'pytest-quantreg[torchao,onnx]'"
needs_extras = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None or importlib.util.find_spec("onnxruntime") is None,
    reason=f"the torchao and onnx extras are not installed: {EXTRAS}",
)
NEW = ("torchao-int8-dynamic", "torchao-int8-weight", "onnx-fp32", "onnx-int8-dynamic")
# the tiny model is untrained: its margins are thin, and int8 flips 2 or 3 of its 60 predictions (conftest.py)
TINY_GATES = ("--quantreg-max-drop=10", "--quantreg-max-flip-rate=10")


def by_precision(path: Path) -> dict[str, dict]:
    return {b["params"]["quantreg_precision"]: b for b in json.loads(path.read_text(encoding="utf-8"))["benchmarks"]}


def weight_layers(path: Path) -> dict[str, dict[str, dict]]:
    reports = json.loads(path.read_text(encoding="utf-8"))["precisions"]
    return {report["precision"]: {layer["name"]: layer for layer in report["layers"]} for report in reports}


@needs_extras
def test_new_backends_end_to_end_on_the_tiny_model(quantreg_pytester: pytest.Pytester) -> None:
    record_baseline(quantreg_pytester)
    result = quantreg_pytester.runpytest(
        f"--precision=fp32,int8-dynamic,{','.join(NEW)}",
        "--benchmark-json=bench.json",
        "--quantreg-weights-report=weights.json",
        *TINY_GATES,
    )
    assert_verdicts(result, passed=12)
    result.stdout.fnmatch_lines(["*TORCHAO-INT8-DYNAMIC |*ONNX-FP32 |*ONNX-INT8-DYNAMIC |*"])
    bench = by_precision(quantreg_pytester.path / "bench.json")
    for name in NEW:
        info = bench[name]["extra_info"]
        assert bench[name]["stats"]["rounds"] == 60, name  # one timed round per sample
        assert info.get("latency_pairs", 0) > 0 or info.get("latency_disturbed"), name  # timed back to back with FP32, unless busy
        assert info["kept_fp32"] == ["classifier"], name
        assert info["flip_rate"] <= 0.1, name  # 7-bit weights without VNNI (reduce_range) flip 4 of 60 here
    assert bench["onnx-fp32"]["extra_info"]["flip_rate"] == 0
    assert bench["onnx-fp32"]["extra_info"]["kl_mean"] < 1e-6  # the export computes what FP32 computes
    fp32_mb = bench["fp32"]["extra_info"]["size_mb"]
    assert bench["onnx-fp32"]["extra_info"]["size_mb"] == pytest.approx(fp32_mb, rel=0.15)  # the .onnx file: weights and graph
    for name in ("torchao-int8-dynamic", "torchao-int8-weight", "onnx-int8-dynamic"):
        assert bench[name]["extra_info"]["size_mb"] < 0.8 * fp32_mb, name

    layers = weight_layers(quantreg_pytester.path / "weights.json")
    dense = "bert.encoder.layer.0.output.dense"
    assert layers["torchao-int8-dynamic"][dense]["storage"] == "torchao Int8Tensor"
    assert layers["onnx-int8-dynamic"][dense]["storage"] == "onnxruntime int8 per-channel"
    assert layers["onnx-fp32"][dense]["snr_db"] is None  # exact: written as null
    assert "kept in FP32" in layers["onnx-int8-dynamic"]["classifier"]["storage"]
    assert layers["onnx-int8-dynamic"]["classifier"]["snr_db"] is None
    # without VNNI (or with torch's kernels capped below AVX-512) ONNX Runtime quantizes weights to 7 bits: 6.02 dB less
    gap = 20 * math.log10(2) if int8_reduce_range("cpu") else 0.0
    for name, layer in layers["torchao-int8-weight"].items():
        if name == "classifier":
            continue
        onnx_snr = layers["onnx-int8-dynamic"][name]["snr_db"]
        # both are symmetric per-output-channel int8 of the same weights: the same error, read from two storages
        assert 30 < layer["snr_db"] < 60, name
        assert onnx_snr == pytest.approx(layer["snr_db"] - gap, abs=0.5), name
        assert layers["int8-dynamic"][name]["snr_db"] < layer["snr_db"], name  # per-tensor int8 loses more


@needs_extras
def test_layers_kept_in_fp32_are_kept_by_torchao_and_onnx_runtime(quantreg_pytester: pytest.Pytester) -> None:
    record_baseline(quantreg_pytester)
    kept = "bert.encoder.layer.1.output.dense"
    result = quantreg_pytester.runpytest(
        "--precision=torchao-int8-dynamic,onnx-int8-dynamic",
        f"--quantreg-keep-fp32=head,{kept}",
        "--quantreg-weights-report=weights.json",
        *TINY_GATES,
        "-k",
        "accuracy",
    )
    assert_verdicts(result, passed=2)
    layers = weight_layers(quantreg_pytester.path / "weights.json")
    for name in ("torchao-int8-dynamic", "onnx-int8-dynamic"):
        assert layers[name][kept]["snr_db"] is None, name  # FP32 weights, exactly
        assert "kept in FP32" in layers[name][kept]["storage"], name
        assert layers[name]["bert.encoder.layer.0.output.dense"]["snr_db"] is not None, name  # its neighbour is quantized
    assert any(line.startswith("kept in FP32") and line.count(f"{kept}, classifier") == 2 for line in result.stdout.lines)


SWAPPED = textwrap.dedent(
    """
    from pytest_quantreg.backends import ort

    def pytest_quantreg_precisions(registry):
        # the export bug of the issue: input names given in another order than the graph's inputs
        registry.register(
            "onnx-swapped",
            lambda ctx: ort.classifier(ctx, "fp32", order=("attention_mask", "input_ids", "token_type_ids")),
            devices=["cpu"], max_drop=0.5, max_flip_rate=1.0, max_kl=0.001, requires=["onnxruntime", "onnx"],
        )
    """
)


@needs_extras
def test_an_export_with_swapped_inputs_fails_the_fp32_onnx_gate(quantreg_pytester: pytest.Pytester) -> None:
    quantreg_pytester.makeconftest(SWAPPED)
    record_baseline(quantreg_pytester)
    result = quantreg_pytester.runpytest("--precision=onnx-fp32,onnx-swapped", "-k", "accuracy")
    assert_verdicts(result, passed=1, failed=1)
    result.stdout.fnmatch_lines(["*flip rate*", "FAILED *test_accuracy?onnx-swapped?*"])
    assert "FAILED test_regression.py::test_accuracy[onnx-fp32]" not in result.stdout.str()


MISSING = textwrap.dedent(
    """
    def pytest_quantreg_precisions(registry):
        # as if the torchao extra were not installed
        registry.replace("torchao-int8-weight", requires=("torchao_not_installed_here",))
    """
)


def test_a_precision_of_a_missing_extra_skips_with_the_install_command_and_all_leaves_it_out(
    quantreg_pytester: pytest.Pytester,
) -> None:
    quantreg_pytester.makeconftest(MISSING)
    result = quantreg_pytester.runpytest("--precision=fp32,torchao-int8-weight", "-k", "accuracy", "--co", "-q")
    result.stdout.fnmatch_lines(["*test_accuracy?torchao-int8-weight?*"])
    skipped = quantreg_pytester.runpytest("--precision=torchao-int8-weight", "-rs")
    assert_verdicts(skipped, skipped=2)
    expected = "needs the 'torchao_not_installed_here' package, which is not installed (`pip install 'pytest-quantreg[torchao]'`)"
    assert expected in skipped.stdout.str()
    everything = quantreg_pytester.runpytest("--precision=all", "--co", "-q").stdout.str()
    assert "torchao-int8-weight" not in everything
    assert "test_accuracy[fp32]" in everything


def test_names_all_and_compile_variants() -> None:
    registry = builtin_registry()
    assert registry.canonical("fp16+compile", "cpu") == "fp16+compile"  # registered on first use
    assert registry["fp16+compile"].description.endswith("under torch.compile (compiled in the warmup)")
    with pytest.raises(Exception, match=r"NAME\+compile of fp32"):
        registry.canonical("onnx-fp32+compile", "cpu")  # an ONNX session is not a torch module
    missing = dataclasses.replace(registry["onnx-fp32"], requires=("no_such_module_xyz",))
    assert "pip install 'pytest-quantreg[onnx]'" in (missing.unavailable_reason("cpu") or "")
    assert "no CPU kernel" in (registry["torchao-int4-weight"].unavailable_reason("cpu") or "torchao not installed")


def test_the_warmup_of_a_compiled_model_covers_every_token_count() -> None:
    import torch

    lengths = [5, 5, 7, 3, 7, 9, 3]
    encodings = tuple({"input_ids": torch.ones(1, n, dtype=torch.long)} for n in lengths)
    inputs = Inputs(tuple(map(str, range(len(lengths)))), (0,) * len(lengths), encodings)
    assert warmup_indices(inputs, 2) == [0, 1]
    warm = warmup_indices(inputs, 2, every_shape=True)
    assert warm[:2] == [0, 1]
    assert {lengths[i] for i in warm} == set(lengths)
    assert len(warm) == 2 + 3  # one more pass for each of 7, 3 and 9 tokens


def test_a_compiled_precision_compiles_in_the_warmup_and_never_in_a_timed_round(quantreg_pytester: pytest.Pytester) -> None:
    from torch._dynamo.utils import counters

    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default":
        pytest.skip("torch 2.13's inductor emits vector code it cannot build under ATEN_CPU_CAPABILITY=default ('at::vec' undeclared)")

    graphs = counters["stats"]["unique_graphs"]
    # no warmup asked: the only warmup passes are the compiled model's one sample per token count
    args = ("--precision=fp32,fp32+compile", "--quantreg-warmup=0", "--benchmark-json=bench.json", "-k", "latency")
    result = quantreg_pytester.runpytest(*args)
    assert_verdicts(result, passed=2)
    assert counters["stats"]["unique_graphs"] > graphs  # it really ran compiled
    stats = by_precision(quantreg_pytester.path / "bench.json")["fp32+compile"]["stats"]
    assert stats["rounds"] == 60
    # compiling takes seconds; a forward pass of the tiny model milliseconds
    assert stats["max"] < 0.25, stats


@needs_extras
def test_on_the_example_torchao_and_onnx_runtime_report_statistics_weights_and_json(tmp_path: Path) -> None:
    names = "fp32,torchao-int8-dynamic,onnx-int8-dynamic"
    run = run_example(
        f"--precision={names}", f"--benchmark-json={tmp_path / 'bench.json'}", f"--quantreg-weights-report={tmp_path / 'weights.json'}"
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert f"{6 - busy_skips(run.stdout)} passed" in run.stdout  # a latency test the machine kept busy is not judged
    assert "Failed to load" not in run.stdout + run.stderr  # torchao's import noise is held back
    bench = by_precision(tmp_path / "bench.json")
    for name in ("torchao-int8-dynamic", "onnx-int8-dynamic"):
        info = bench[name]["extra_info"]
        assert info["n_samples"] == 387
        assert info["flip_rate"] < 0.06, name  # both keep far more of FP32's predictions than quantize_dynamic's 10.3%
        assert info.get("latency_pairs", 0) > 0 or info.get("latency_disturbed")
    assert bench["onnx-int8-dynamic"]["extra_info"]["size_mb"] < 30  # embeddings quantized too
    layers = weight_layers(tmp_path / "weights.json")
    assert len(layers["onnx-int8-dynamic"]) == len(layers["torchao-int8-dynamic"]) == len(layers["fp32"])


def test_bitsandbytes_log_records_of_every_forward_stay_out_of_a_failure_report(quantreg_pytester: pytest.Pytester) -> None:
    """LLM.int8 logs 'MatMul8bitLt: inputs will be cast ...' on every forward with FP32 activations: one
    failing latency test printed 14,504 such lines."""
    args = ("--precision=int8-bnb", "-k", "latency", "--quantreg-max-latency-ratio=0.001")
    result = until_judged(lambda: quantreg_pytester.runpytest(*args))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*int8-bnb is too slow against FP32*"])
    assert "MatMul8bitLt" not in result.stdout.str()


NARROW = {
    "bert-hidden-32": (
        {"hidden_size": 32},
        "6 Linear layer(s)",
        "bert.encoder.layer.0.attention.self.query, bert.encoder.layer.0.attention.self.key, *, bert.pooler.dense",
    ),
    "electra-embedding-32": ({"embedding_size": 32, "hidden_size": 64}, "1 Linear layer(s)", "electra.embeddings_project"),
}


@pytest.mark.parametrize("architecture", list(NARROW))
def test_bitsandbytes_4bit_keeps_layers_with_fewer_than_64_inputs_in_fp32_on_every_cpu(
    bitsandbytes_imported: None, pytester: pytest.Pytester, tmp_path: Path, architecture: str
) -> None:
    """bitsandbytes' 4-bit CPU kernels for AVX-512 BF16 crash on such layers (a hidden-32 model, ELECTRA's
    embedding projection); kept in FP32 everywhere, the build and the verdict are the same on every CPU."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification

    sizes, count, names = NARROW[architecture]
    _, tokenizer = tiny_model(["negative", "positive"])
    torch.manual_seed(0)
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    common = {"vocab_size": len(tokenizer), "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128}
    common |= {"max_position_embeddings": 64, "num_labels": 2, "initializer_range": 0.2, **labels, **sizes}
    config, model_class = (
        (BertConfig(**common), BertForSequenceClassification)
        if architecture.startswith("bert")
        else (ElectraConfig(**common), ElectraForSequenceClassification)
    )
    folder = save_tiny(model_class(config).eval(), tokenizer, tmp_path / architecture)
    data = labelled_csv(folder, tiny_texts(), tmp_path / "narrow.csv")
    lenient_project(pytester, folder, data)
    result = pytester.runpytest("--precision=int4-nf4", "-k", "accuracy")
    assert_verdicts(result, passed=1)
    result.stdout.fnmatch_lines(
        [
            "kept in FP32 *|*",
            f"quantreg: int4-nf4 kept {count} with fewer than 64 inputs in FP32, as its backend cannot quantize them "
            f"(on every CPU, so the verdict is the same on all): {names}",
        ]
    )
    assert "failed inside bitsandbytes" not in result.stdout.str()
