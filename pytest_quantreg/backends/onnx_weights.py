"""Where a model's Linear layers are in an ONNX file exported by ``torch.onnx.export`` (TorchScript
exporter), and what their weights are once ONNX Runtime quantized it: the node names that exclude a
layer from quantization, and the initializers the weight report reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StoredWeight:
    """Where a Linear layer's weight is in an ONNX file: its initializer (``_quantized``, ``_scale`` and
    ``_zero_point`` beside it when quantized), and whether it is stored ``[in, out]`` as MatMul takes it."""

    initializer: str
    in_out: bool
    quantized: bool


def onnx_nodes(layer: str) -> tuple[str, str, str]:
    """The nodes ``torch.onnx.export`` (TorchScript exporter) names for Linear layer ``layer``: MatMul, or
    Gemm for 2-D inputs (pooler, head), which ONNX Runtime's dynamic quantization first rewrites as a
    MatMul named ``.../Gemm_MatMul``: ``bert.encoder.layer.0.output.dense`` ->
    ``/bert/encoder/layer.0/output/dense/MatMul``. ONNX Runtime ignores excluded names it does not find."""
    parts: list[str] = []
    for part in layer.split("."):
        if part.isdigit() and parts:
            parts[-1] += f".{part}"
        else:
            parts.append(part)
    scope = "/" + "/".join(parts)
    return f"{scope}/MatMul", f"{scope}/Gemm", f"{scope}/Gemm_MatMul"


def weight_initializers(path: Path, model: torch.nn.Module) -> dict[str, StoredWeight]:
    """Linear layer -> its weight in the FP32 export: the MatMul's (``[in, out]``) or Gemm's input B."""
    import onnx

    from pytest_quantreg.measure.keep import linear_layers

    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = {node.name: node for node in graph.node}
    found = {}
    for layer, _ in linear_layers(model):
        for name in onnx_nodes(layer):
            node = nodes.get(name)
            if node is not None and len(node.input) > 1:
                trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
                found[layer] = StoredWeight(node.input[1], node.op_type == "MatMul" or not trans_b, quantized=False)
    return found


def stored_weights(path: Path, fp32: dict[str, StoredWeight]) -> dict[str, StoredWeight]:
    """Where each layer's weight went in a file quantized from the export: ``W_quantized``, or
    ``W_Transposed_quantized`` for a Gemm that ONNX Runtime rewrote as a MatMul; ``W`` (or ``W_Transposed``)
    when it was left in FP32."""
    import onnx

    names = {item.name for item in onnx.load(str(path), load_external_data=False).graph.initializer}
    found = {}
    for layer, where in fp32.items():
        if f"{where.initializer}_quantized" in names:
            found[layer] = StoredWeight(where.initializer, where.in_out, quantized=True)
        elif f"{where.initializer}_Transposed_quantized" in names:
            found[layer] = StoredWeight(f"{where.initializer}_Transposed", in_out=True, quantized=True)
        elif f"{where.initializer}_Transposed" in names:  # a Gemm rewritten as a MatMul and left in FP32
            found[layer] = StoredWeight(f"{where.initializer}_Transposed", in_out=True, quantized=False)
        elif where.initializer in names:
            found[layer] = where
    return found


def dequantized(path: Path, weights: dict[str, StoredWeight]) -> Iterator[tuple[str, torch.Tensor, str]]:
    """Every Linear layer's weight in the file ``path`` as float32 ``[out, in]``: int8 initializers
    dequantized with their per-channel scales and zero points, FP32 ones as they are."""
    import onnx
    import torch
    from onnx import numpy_helper

    stored = {item.name: item for item in onnx.load(str(path)).graph.initializer}
    for layer, where in weights.items():
        name = where.initializer
        if where.quantized:
            codes = numpy_helper.to_array(stored[f"{name}_quantized"]).astype("float64")
            scale = numpy_helper.to_array(stored[f"{name}_scale"]).astype("float64")
            zero = numpy_helper.to_array(stored[f"{name}_zero_point"]).astype("float64")
            if scale.size > 1 and not where.in_out:  # one scale per output channel: rows of an [out, in] weight
                scale, zero = scale[:, None], zero[:, None]
            weight = (codes - zero) * scale
            storage = f"onnxruntime int8 {'per-channel' if scale.size > 1 else 'per-tensor'}"
        else:
            weight, storage = numpy_helper.to_array(stored[name]).astype("float64"), "onnx float32"
        tensor = torch.from_numpy(weight).float()
        yield layer, (tensor.T if where.in_out else tensor).contiguous(), storage
