"""ONNX Runtime: the FP32 model exported with ``torch.onnx.export`` and run as it is, or quantized with
ONNX Runtime's dynamic int8 (QInt8 weights, per channel), on the CPU execution provider (CUDA's where
onnxruntime-gpu provides it).

A built precision is an :class:`OnnxClassifier`, not a torch module: it maps a tokenized sample to
logits and knows its size (the ``.onnx`` file, MB of 2^20 bytes). Exports are cached per model
weights, input order, opset and library versions, and quantized files per their settings too, in
the same cache folder as the example and under the same rules: written to a temporary file under a
file lock, renamed into place. Layers kept in FP32 (``--quantreg-keep-fp32``) are excluded from
quantization by their MatMul / Gemm node names (``nodes_to_exclude``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_quantreg.backends import cache
from pytest_quantreg.backends.base import Backend, BuildContext, Builder, Classifier, Logits, Precision
from pytest_quantreg.backends.onnx_weights import StoredWeight, dequantized, onnx_nodes, stored_weights, weight_initializers
from pytest_quantreg.measure.loading import MB, quiet_loggers

if TYPE_CHECKING:
    import torch

EXTRA = "onnx"
REQUIRES = ("onnxruntime", "onnx")
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime")  # their versions key the cached files
BACKEND = Backend(
    "onnxruntime",
    lambda layers: f"quantize_dynamic or quantize_static(..., nodes_to_exclude={sorted(node for n in layers for node in onnx_nodes(n))!r})",
    libraries=("onnxruntime", "onnx"),
)
OPSET = 17
EXPORTER = "torch.onnx.export (TorchScript)"


@dataclass
class OnnxClassifier(Classifier):
    """An ONNX Runtime session that classifies tokenized samples: called like a transformers model."""

    path: Path
    session: Any
    inputs: tuple[str, ...]  # the session's input names, fed from the encoding's tensors of the same names
    device: torch.device
    weights: dict[str, StoredWeight] = field(default_factory=dict)  # Linear layer -> its weight in the file

    def __call__(self, **encoding: torch.Tensor) -> Logits:
        import torch

        feeds = {name: encoding[name].cpu().numpy() for name in self.inputs}
        (logits,) = self.session.run(["logits"], feeds)
        return Logits(torch.from_numpy(logits).to(self.device))

    def size_mb(self) -> float:
        """The ``.onnx`` file's size in MB of 2^20 bytes."""
        return self.path.stat().st_size / MB

    def kept_in_fp32(self, names: Sequence[str]) -> tuple[str, ...]:
        """Which of ``names`` the file holds in FP32 (read from the file, not from what was asked)."""
        return tuple(name for name in names if name in self.weights and not self.weights[name].quantized)

    def dequantized_weights(self) -> Iterator[tuple[str, torch.Tensor, str]]:
        """Every Linear layer's weight as float32 ``[out, in]`` (the weight report's rows)."""
        return dequantized(self.path, self.weights)


def input_order(model: torch.nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    """The encoding's tensors in the order of the model's ``forward`` signature: the order the exported
    graph's inputs take, which its input names must follow (a wrong order exports silently and
    gives wrong answers)."""
    parameters = list(inspect.signature(model.forward).parameters)
    return tuple(sorted(names, key=lambda name: parameters.index(name) if name in parameters else len(parameters)))


def export(ctx: BuildContext, order: Sequence[str] | None = None) -> tuple[Path, dict[str, StoredWeight]]:
    """The FP32 export of ``ctx``'s model (cached), and where each Linear layer's weight is in it.

    ``order`` names the graph's inputs; by default the model's own order (:func:`input_order`)."""
    from pytest_quantreg.measure.keep import meta_model
    from pytest_quantreg.measure.loading import load_tokenizer

    tokenizer = load_tokenizer(ctx.model_dir, ctx.trust_remote_code)
    encoding = dict(tokenizer("pytest-quantreg exports this", return_tensors="pt"))
    structure = meta_model(ctx.model_dir, ctx.trust_remote_code)  # names and signature: the weights load only to export
    names = tuple(order) if order is not None else input_order(structure, list(encoding))
    key = cache.key({"weights": cache.weights_digest(ctx.model_dir), "inputs": names, "opset": OPSET, "exporter": EXPORTER}, LIBRARIES)
    path = _cached(key, "fp32", lambda out: _export(ctx.load().to("cpu"), encoding, names, out))
    return path, weight_initializers(path, structure)


def _export(model: torch.nn.Module, encoding: dict[str, torch.Tensor], names: Sequence[str], out: Path) -> None:
    import torch

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings: the export is checked by the gates
        torch.onnx.export(
            model,
            ({name: encoding[name] for name in names},),
            str(out),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def quantize(fp32: Path, ctx: BuildContext) -> Path:
    """ONNX Runtime's dynamic int8 of the export ``fp32`` (cached): QInt8 weights per channel, reduced
    range without VNNI, the kept layers' nodes excluded."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pytest_quantreg.measure.hardware import int8_reduce_range

    excluded = sorted(node for layer in ctx.keep_fp32 for node in onnx_nodes(layer))
    reduce_range = int8_reduce_range(ctx.device)
    settings = {"fp32": fp32.name, "excluded": excluded, "reduce_range": reduce_range, "per_channel": True, "weights": "QInt8"}

    def write(out: Path) -> None:
        with quiet_loggers("", "onnxruntime"):  # "Please consider to run pre-processing before quantization" (root logger)
            quantize_dynamic(
                str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range, nodes_to_exclude=excluded
            )

    return _cached(cache.key(settings, LIBRARIES), "int8", write)


def quantize_static(fp32: Path, ctx: BuildContext) -> Path:
    """ONNX Runtime's static int8 of the export ``fp32`` (cached): QDQ format, QInt8 weights per channel
    and QUInt8 activations per tensor whose ranges come from the calibration texts (MinMax, averaged over
    the texts), the kept layers' nodes excluded, reduced range without VNNI."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as quantize

    from pytest_quantreg.measure.hardware import int8_reduce_range

    excluded = sorted(node for layer in ctx.keep_fp32 for node in onnx_nodes(layer))
    reduce_range = int8_reduce_range(ctx.device)
    settings = {
        **{"fp32": fp32.name, "excluded": excluded, "reduce_range": reduce_range, "per_channel": True, "format": "QDQ"},
        **{"ops": STATIC_OPS, "calibration": ctx.calibration_hash, "max_length": ctx.max_length, "method": "MinMax, moving average"},
    }

    def write(out: Path) -> None:
        with quiet_loggers("", "onnxruntime"):
            quantize(
                str(fp32),
                str(out),
                _Reader(ctx.calibration_encodings(), _graph_inputs(fp32)),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(STATIC_OPS),
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibMovingAverage": True},  # per-text ranges averaged: 38 of the example's 387 flip, 46 with the extremes
            )

    return _cached(cache.key(settings, LIBRARIES), "int8-static", write)


STATIC_OPS = ("MatMul", "Gemm")  # the Linear layers (and attention's matmuls): the ops int8 speeds up


class _Reader:
    """ONNX Runtime's CalibrationDataReader over tokenized calibration texts."""

    def __init__(self, encodings: list[dict[str, Any]], names: Sequence[str]) -> None:
        self._items = iter([{name: encoding[name] for name in names} for encoding in encodings])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._items, None)


def _graph_inputs(path: Path) -> tuple[str, ...]:
    import onnx

    return tuple(item.name for item in onnx.load(str(path), load_external_data=False).graph.input)


def session(path: Path, device: str) -> Any:
    """An inference session of ``path`` on ``device``, with as many threads as torch uses (comparable timings)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Spinning stays at ONNX Runtime's default, as deployed: without it the example's onnx-fp32 ran
    # 1.35x slower alone (its workers sleep between the parallel sections of one forward). The pool
    # spins about 25 ms after a call; timing.settle() waits that out before another model is timed.
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


QUANTIZERS = {"fp32": None, "int8": quantize, "int8-static": quantize_static}  # how each ONNX precision makes its file


def classifier(ctx: BuildContext, kind: str = "fp32", order: Sequence[str] | None = None) -> OnnxClassifier:
    """The export of ``ctx``'s model, quantized as ``kind`` says (a key of :data:`QUANTIZERS`), in a session on ``ctx.device``."""
    import torch

    fp32, weights = export(ctx, order)
    quantizer = QUANTIZERS[kind]
    path = quantizer(fp32, ctx) if quantizer is not None else fp32
    run = session(path, ctx.device)
    names = tuple(item.name for item in run.get_inputs())
    return OnnxClassifier(path, run, names, torch.device(ctx.device), stored_weights(path, weights) if quantizer else weights)


def _builder(kind: str) -> Builder:
    def build(ctx: BuildContext) -> OnnxClassifier:
        return classifier(ctx, kind)

    return build


def _cached(key: str, kind: str, write: Any) -> Path:
    return cache.cached("onnx", f"{kind}-{key}.onnx", write)


def _cuda_provider(device_type: str) -> str | None:
    if device_type != "cuda":
        return None
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "the installed onnxruntime has no CUDA execution provider; install onnxruntime-gpu to run ONNX precisions on CUDA"
    return None


def precisions() -> list[Precision]:
    """onnx-fp32 (the export itself, gated like FP32: it catches a broken export), onnx-int8-dynamic and onnx-int8-static."""
    common: dict[str, Any] = {"requires": REQUIRES, "extra": EXTRA, "backend": BACKEND.name, "unsupported": _cuda_provider}
    return [
        Precision(
            "onnx-fp32",
            _builder("fp32"),
            description=f"the FP32 model exported with {EXPORTER} (opset {OPSET}), run by ONNX Runtime",
            max_drop=0.5,
            max_latency_ratio={"cpu": 2.0, "cuda": 2.0},
            max_flip_rate=1.0,
            max_kl=0.001,
            **common,
        ),
        Precision(
            "onnx-int8-dynamic",
            _builder("int8"),
            description="ONNX Runtime quantize_dynamic: QInt8 weights per channel, int8 activations quantized per pass",
            max_drop=4.0,
            max_latency_ratio={"cpu": 0.9, "cuda": 2.0},
            max_flip_rate=6.0,
            max_kl=0.05,
            **common,
        ),
        Precision(
            "onnx-int8-static",
            _builder("int8-static"),
            description="ONNX Runtime quantize_static: QDQ, QInt8 weights per channel, QUInt8 activations calibrated on other texts",
            max_drop=6.0,
            max_latency_ratio={"cpu": 0.9, "cuda": 2.0},
            max_flip_rate=15.0,
            max_kl=0.15,
            calibrated=True,
            **common,
        ),
    ]
