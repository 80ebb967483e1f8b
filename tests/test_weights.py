"""Per-layer weight error: each storage dequantized and checked against an independent computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_quantreg.backends.base import BuildContext
from pytest_quantreg.backends.registry import builtin_registry, dequantizers
from pytest_quantreg.measure.loading import known_noise_filtered
from pytest_quantreg.measure.weights import dequantized_weight, error_metrics, linear_weights, weight_report


def metrics_by_hand(reference: np.ndarray, approx: np.ndarray) -> tuple[float, float, float, float]:
    ref, app = reference.astype(np.float64).ravel(), approx.astype(np.float64).ravel()
    err = app - ref
    rel = float(np.linalg.norm(err) / np.linalg.norm(ref))
    snr = float(10 * np.log10(np.sum(ref**2) / np.sum(err**2))) if np.any(err) else math.inf
    cosine = float(ref @ app / (np.linalg.norm(ref) * np.linalg.norm(app)))
    return rel, snr, cosine, float(np.max(np.abs(err)))


def test_metrics_on_known_values() -> None:
    rel, snr, cosine, max_abs = error_metrics(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5]))
    assert rel == pytest.approx(0.1)  # |(0, 0.5)| / |(3, 4)|
    assert snr == pytest.approx(20.0)  # 10 log10(25 / 0.25)
    assert cosine == pytest.approx((9 + 18) / (5 * math.hypot(3, 4.5)))
    assert max_abs == pytest.approx(0.5)
    assert error_metrics(torch.ones(4), torch.ones(4))[1] == math.inf


def small_linear(seed: int = 0, rows: int = 16, cols: int = 64) -> torch.nn.Linear:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(cols, rows)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.5, 4.0, rows)[:, None])  # rows of different scale
        layer.weight[3, 7] = 2.5  # an outlier widens the per-tensor scale
    return layer


def test_torch_dynamic_int8_matches_per_tensor_symmetric_by_hand() -> None:
    layer = small_linear()
    with known_noise_filtered():
        quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear}, dtype=torch.qint8)[0]
    weight, storage = dequantized_weight(quantized, dequantizers())
    w = layer.weight.detach().numpy().astype(np.float64)
    scale = np.float32(np.abs(w).max() / 127.5)  # MinMaxObserver, qint8, per-tensor symmetric
    by_hand = np.clip(np.round(w / scale), -128, 127) * scale
    np.testing.assert_allclose(weight.numpy(), by_hand, rtol=0, atol=1e-6)
    assert storage == "torch qint8 per-tensor"
    np.testing.assert_allclose(error_metrics(layer.weight, weight), metrics_by_hand(w, by_hand), rtol=1e-4)


def test_float_casts_match_numpy() -> None:
    layer = small_linear()
    half = torch.nn.Linear(64, 16).half()
    half.weight.data = layer.weight.detach().half()
    weight, storage = dequantized_weight(half, dequantizers())
    w = layer.weight.detach().numpy()
    assert storage == "float16"
    np.testing.assert_array_equal(weight.numpy(), w.astype(np.float16).astype(np.float32))
    exact = torch.nn.Linear(2, 1)
    exact.weight.data = torch.tensor([[0.5, -0.25]])  # representable in fp16: no error at all
    assert error_metrics(exact.weight, exact.weight.half())[1] == math.inf
    third = error_metrics(torch.tensor([1 / 3], dtype=torch.float64), torch.tensor([1 / 3]).half())
    assert third[3] == pytest.approx(abs(float(np.float16(1 / 3)) - 1 / 3), rel=1e-6)


@known_noise_filtered()
def test_bitsandbytes_int8_matches_row_wise_absmax_by_hand(tiny_model_dir: Path) -> None:
    """LLM.int8 stores each row as round(w / absmax(row) * 127) of the fp16-cast weight."""
    pytest.importorskip("bitsandbytes")
    build = BuildContext(tiny_model_dir, "cpu")
    fp32 = dict(builtin_registry()["fp32"].build(build).named_modules())
    layers, values, apart = 0, 0, 0
    for name, module in builtin_registry()["int8-bnb"].build(build).named_modules():
        found = dequantized_weight(module, dequantizers())
        if found is None or found[1] != "bitsandbytes int8 row-wise":
            continue
        w16 = fp32[name].weight.detach().half().double().numpy()
        absmax = np.abs(w16).max(axis=1, keepdims=True)
        codes = np.round(w16 / absmax * 127)
        dequantized = found[0].double().numpy()
        stored = np.round(dequantized / absmax * 127)
        assert np.max(np.abs(stored - codes)) <= 1  # near-ties in float32 arithmetic may land one code apart
        np.testing.assert_allclose(dequantized, stored * absmax / 127, rtol=0, atol=1e-6)
        layers, values, apart = layers + 1, values + codes.size, apart + int(np.sum(stored != codes))
    assert layers == 2 * 6 + 2
    assert apart / values < 0.005


def nf4_layer() -> tuple[torch.nn.Module, torch.Tensor]:
    """A Linear4bit whose 128-wide rows are blocks of absmax x NF4 code values, and those rows.

    Rows of at least one block (64): bitsandbytes' kernels for AVX-512 BF16 CPUs assume blocks within rows.
    """
    bnb = pytest.importorskip("bitsandbytes")
    codes = bnb.functional.get_4bit_type("nf4", device="cpu").float()
    blocks = codes.repeat(4 * 32).reshape(32, 64) * torch.linspace(0.5, 2.0, 32)[:, None]  # each 64-value block: 4 x the 16 codes
    rows = blocks.reshape(16, 128).repeat(2, 1)  # 32 rows, as the CPU-packed layout needs
    weight, state = bnb.functional.quantize_4bit(rows, blocksize=64, quant_type="nf4")
    layer = bnb.nn.Linear4bit(128, 32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_state=state, bnb_quantized=True)
    return layer, rows


def test_nf4_is_exact_on_its_own_code_values() -> None:
    """A weight whose blocks are absmax x NF4 code values dequantizes without error."""
    layer, rows = nf4_layer()
    dequantized, storage = dequantized_weight(layer, dequantizers())
    torch.testing.assert_close(dequantized, rows, rtol=0, atol=1e-6)
    assert storage == "bitsandbytes nf4 block 64"


def test_cpu_packed_nf4_layout_is_read() -> None:
    """On AVX-512 BF16 CPUs bitsandbytes repacks 4-bit weights at the first forward pass (nibbles
    interleaved over 32-row groups, bfloat16 scales); the report reads that layout too. The repacking
    is bitsandbytes' own function, called here so that every CPU checks it."""
    functional = pytest.importorskip("bitsandbytes.functional")
    pack = getattr(functional, "_convert_weight_packed_for_cpu", None)
    if pack is None:
        pytest.skip("this bitsandbytes has no CPU-packed 4-bit layout")
    layer, rows = nf4_layer()
    scales = layer.weight.quant_state.absmax.clone()
    layer.weight.data, layer.weight.quant_state = pack(layer.weight.data, layer.weight.quant_state)
    assert layer.weight.quant_state.packing_format_for_cpu
    dequantized, storage = dequantized_weight(layer, dequantizers())
    assert storage == "bitsandbytes nf4 block 64 (CPU-packed, bf16 scales)"
    expected = rows / scales.repeat_interleave(64).reshape(32, 128) * scales.bfloat16().float().repeat_interleave(64).reshape(32, 128)
    torch.testing.assert_close(dequantized, expected, rtol=0, atol=1e-6)  # the code values, times the scales rounded to bfloat16


@known_noise_filtered()
def test_bitsandbytes_int8_is_read_after_a_forward_pass(tiny_model_dir: Path) -> None:
    """bitsandbytes moves LLM.int8's row scales from the weight to the layer's state at the first forward pass."""
    pytest.importorskip("bitsandbytes")
    context = BuildContext(tiny_model_dir, "cpu")
    model = builtin_registry()["int8-bnb"].build(context)
    before = {name: weight for name, weight, _ in _layers(model)}
    with torch.inference_mode():
        model(input_ids=torch.tensor([[2, 10, 11, 3]]))
    after = {name: (weight, storage) for name, weight, storage in _layers(model)}
    assert after.keys() == before.keys()
    assert len(after) == 14
    for name, (weight, storage) in after.items():
        torch.testing.assert_close(weight, before[name], rtol=0, atol=0)
        assert storage == "bitsandbytes int8 row-wise"


def _layers(model: torch.nn.Module) -> list[tuple[str, torch.Tensor, str]]:
    found = [(name, dequantized_weight(module, dequantizers())) for name, module in model.named_modules()]
    return [(name, item[0], item[1]) for name, item in found if item is not None]


@known_noise_filtered()
def test_error_grows_fp16_then_int8_then_int4_on_a_model(tiny_model_dir: Path) -> None:
    registry = builtin_registry()
    build = BuildContext(tiny_model_dir, "cpu")
    reference = linear_weights(registry["fp32"].build(build))
    snr = {}
    for name in ("fp16", "int8-dynamic", "int4-nf4"):
        report = weight_report(name, reference, registry[name].build(build), dequantizers=dequantizers())
        assert len(report.layers) == len(reference) == 2 * 6 + 2  # 6 Linear per block, pooler, classifier
        assert all(layer.cosine > 0.9 for layer in report.layers)
        snr[name] = min(layer.snr_db for layer in report.layers)
        kinds = {summary.kind: summary for summary in report.by_kind()}
        assert kinds["bert.encoder.layer.*.attention.self.query"].layers == 2
        assert report.worst(1)[0].snr_db == snr[name]
    assert snr["fp16"] > snr["int8-dynamic"] > snr["int4-nf4"]
    fp32 = weight_report("fp32", reference, registry["fp32"].build(build), dequantizers=dequantizers())
    assert all(layer.snr_db == math.inf for layer in fp32.layers)
    assert fp32.to_json()["layers"][0]["snr_db"] is None  # JSON has no infinity
