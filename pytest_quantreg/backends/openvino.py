"""OpenVINO: the FP32 model converted with ``openvino.convert_model`` (dynamic batch and sequence) and run
as it is, with its weights compressed to int8 by NNCF's ``compress_weights``, or statically quantized
by NNCF's ``quantize`` (``ModelType.TRANSFORMER``) on the run's calibration texts; on the CPU.

Every model is compiled with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AVX-512 BF16 or AMX
OpenVINO's default hint is bf16, which would make ``openvino-fp32`` another precision on some runners.
Threads: as many as torch uses, one stream, the latency hint. Layers kept in FP32 are left out
through NNCF's ``ignored_scope``. The IRs are cached like the ONNX files (per weights, settings,
calibration texts and versions; see :mod:`pytest_quantreg.backends.cache`); the size is the saved
IR's (``.xml`` and ``.bin``). OpenVINO's CPU kernels follow ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``), its
counterpart of ``ATEN_CPU_CAPABILITY``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_quantreg.backends import cache
from pytest_quantreg.backends.base import Backend, BuildContext, Builder, Classifier, Logits, Precision
from pytest_quantreg.measure.loading import MB

if TYPE_CHECKING:
    import torch

EXTRA = "openvino"
REQUIRES = ("openvino", "nncf")
LIBRARIES = ("torch", "transformers", "openvino", "nncf")  # their versions key the cached IRs
IR = "model.xml"


def scope(layer: str) -> str:
    """The NNCF ``ignored_scope`` pattern of Linear layer ``layer``: the ops ``convert_model`` names
    ``__module.<layer>/aten::linear/...`` (its MatMul, and the bias Add it may be fused with)."""
    return rf"__module\.{re.escape(layer)}/aten::linear/.*"


BACKEND = Backend(
    "nncf",
    lambda layers: f"ignored_scope=nncf.IgnoredScope(patterns={[scope(layer) for layer in sorted(layers)]!r})",
    libraries=("openvino", "nncf"),
    kernel_env=("OV_CPU_MAX_ISA",),  # where the build honours it; 2026.4's release wheels read only oneDNN's cap
)


@dataclass
class OpenVinoClassifier(Classifier):
    """A compiled OpenVINO model that classifies tokenized samples: called like a transformers model."""

    path: Path  # the IR's .xml
    compiled: Any
    inputs: tuple[str, ...]
    device: torch.device
    matmuls: dict[str, Any] = field(default_factory=dict)  # Linear layer -> its MatMul in the IR's model
    restored_bytes: int = 0  # what the layers restored by with_fp32 add to the IR's size

    def __post_init__(self) -> None:
        self._request = self.compiled.create_infer_request()

    def __call__(self, **encoding: torch.Tensor) -> Logits:
        import numpy as np
        import torch

        self._request.infer({name: encoding[name].cpu().numpy() for name in self.inputs})
        return Logits(torch.from_numpy(np.array(self._request.get_output_tensor(0).data)).to(self.device))

    def size_mb(self) -> float:
        """The saved IR's size (``.xml`` and ``.bin``) in MB of 2^20 bytes, with the layers restored to FP32."""
        return (sum(part.stat().st_size for part in (self.path, self.path.with_suffix(".bin"))) + self.restored_bytes) / MB

    def with_fp32(self, layers: Iterable[str], fp32_weights: Mapping[str, torch.Tensor]) -> OpenVinoClassifier:
        """This model with ``layers`` back in FP32, as NNCF's accuracy control restores them: each MatMul takes
        FP32's weight (divided by the SmoothQuant scales on its input) and its input skips the FakeQuantize.
        Nothing is quantized or calibrated again (the fallback search's cheap trials)."""
        import openvino as ov

        model = ov.Core().read_model(str(self.path))
        matmuls = _matmuls(model, list(self.matmuls))
        added = 0
        for layer in layers:
            matmul = matmuls[layer]
            weight = fp32_weights[layer].double().cpu().numpy()  # [out, in]
            smoothing = _smoothing(matmul, weight.shape[1])
            if smoothing is not None:
                weight = weight / smoothing
            if not matmul.get_attributes().get("transpose_b", False):
                weight = weight.T
            source = matmul.input_value(0).get_node()
            if source.get_type_name() == "FakeQuantize":
                matmul.input(0).replace_source_output(source.input_value(0))
            if _storage(matmul):
                added += 3 * weight.size  # four bytes a weight instead of one
            matmul.input(1).replace_source_output(ov.opset13.constant(weight.astype("float32")).output(0))
        compiled = compile_model(model)
        return OpenVinoClassifier(self.path, compiled, self.inputs, self.device, matmuls, self.restored_bytes + added)

    def kept_in_fp32(self, names: Sequence[str]) -> tuple[str, ...]:
        """Which of ``names`` the IR holds in FP32: their MatMul takes a plain f32 constant (read from the IR)."""
        return tuple(name for name in names if name in self.matmuls and _storage(self.matmuls[name]) == "")

    def dequantized_weights(self) -> Iterator[tuple[str, torch.Tensor, str]]:
        """Every Linear layer's weight as float32 ``[out, in]``, as the IR computes it: the int8 constants
        through their Convert / Subtract / Multiply (or FakeQuantize) ops, times the smoothing scales
        NNCF's SmoothQuant put on the layer's input; FP32 constants as they are."""
        import torch

        for layer, matmul in self.matmuls.items():
            weight = _evaluate(matmul.input_value(1))
            if not matmul.get_attributes().get("transpose_b", False):
                weight = weight.T
            smoothing = _smoothing(matmul, weight.shape[-1])
            if smoothing is not None:
                weight = weight * smoothing
            storage = _storage(matmul)
            yield layer, torch.from_numpy(weight.astype("float32")).contiguous(), f"openvino {storage or 'float32'}"


def _evaluate(output: Any) -> Any:
    """The value of a subgraph of constants (a dequantized weight), computed by OpenVINO itself."""
    import openvino as ov

    model = ov.Model([ov.opset13.result(output)], [])
    return next(iter(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({}).values()))


def _smoothing(matmul: Any, width: int) -> Any:
    """The constant SmoothQuant multiplies a layer's input by (``width`` values), or None."""
    node = matmul.input_value(0).get_node()
    if node.get_type_name() == "FakeQuantize":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Multiply":
        return None
    for value in node.input_values():
        source = value.get_node()
        if source.get_type_name() == "Constant" and source.get_output_element_type(0).is_real():
            data = source.get_data().reshape(-1)
            if data.size == width:
                return data.astype("float64")
    return None


def _storage(matmul: Any) -> str:
    """How a MatMul's weight is stored: "" for a plain FP32 constant, else what NNCF made of it."""
    node = matmul.input_value(1).get_node()
    while node.get_type_name() != "Constant":
        if node.get_type_name() == "FakeQuantize":
            return "int8 fake-quantized"
        node = node.input_value(0).get_node()
    kind = node.get_output_element_type(0).get_type_name()
    return {"u8": "int8 asymmetric per-channel", "i8": "int8 symmetric per-channel"}.get(kind, "" if kind == "f32" else kind)


def _matmuls(model: Any, layers: Sequence[str]) -> dict[str, Any]:
    """Linear layer -> its MatMul, found by the name ``convert_model`` gives it (see :func:`scope`)."""
    found: dict[str, Any] = {}
    patterns = {layer: re.compile(scope(layer)) for layer in layers}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul":
            for layer, pattern in patterns.items():
                if layer not in found and pattern.fullmatch(op.get_friendly_name()):
                    found[layer] = op
    return found


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's INFO tables (it attaches its own stdout handler) and progress bars, and the tracer's
    warnings while converting: none says anything about the model under test."""
    import nncf

    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Discard()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def convert(ctx: BuildContext) -> Path:
    """The FP32 IR of ``ctx``'s model (cached)."""
    from pytest_quantreg.measure.loading import load_tokenizer

    tokenizer = load_tokenizer(ctx.model_dir, ctx.trust_remote_code)
    encoding = dict(tokenizer("pytest-quantreg converts this", return_tensors="pt"))

    def write(out: Path) -> None:
        import openvino as ov
        import torch

        with _quiet(), torch.inference_mode(False), torch.no_grad():
            model = ov.convert_model(ctx.load().to("cpu"), example_input=encoding)
        out.mkdir()
        ov.save_model(model, str(out / IR), compress_to_fp16=False)

    settings = {"weights": cache.weights_digest(ctx.model_dir), "inputs": sorted(encoding), "kind": "fp32"}
    return cache.cached("openvino", f"fp32-{cache.key(settings, LIBRARIES)}", write) / IR


def compressed(fp32: Path, ctx: BuildContext, kind: str) -> Path:
    """``fp32`` with NNCF's int8 (cached): ``int8-weight`` (``compress_weights``, INT8_ASYM) or
    ``int8-static`` (``quantize`` on the calibration texts, ``ModelType.TRANSFORMER``); kept layers ignored."""
    patterns = [scope(layer) for layer in sorted(ctx.keep_fp32)]
    settings: dict[str, Any] = {"fp32": fp32.parent.name, "kind": kind, "ignored": patterns}
    if kind == "int8-static":
        settings.update(calibration=ctx.calibration_hash, max_length=ctx.max_length)

    def write(out: Path) -> None:
        import nncf
        import openvino as ov

        model = ov.Core().read_model(str(fp32))
        ignored = nncf.IgnoredScope(patterns=patterns, validate=False)
        with _quiet():
            if kind == "int8-weight":
                model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
            else:
                data = ctx.calibration_encodings()
                names = [item.get_any_name() for item in model.inputs]
                dataset = nncf.Dataset([{name: encoding[name] for name in names} for encoding in data])
                model = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data), ignored_scope=ignored)
        out.mkdir()
        ov.save_model(model, str(out / IR), compress_to_fp16=False)

    return cache.cached("openvino", f"{kind}-{cache.key(settings, LIBRARIES)}", write) / IR


def compile_model(model: Any) -> Any:
    """``model`` compiled for the CPU: f32 inference precision, torch's thread count, one stream, latency hint."""
    import openvino as ov
    import torch

    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    return ov.Core().compile_model(model, "CPU", config)


def classifier(ctx: BuildContext, kind: str = "fp32") -> OpenVinoClassifier:
    """``ctx``'s model in OpenVINO: ``fp32``, ``int8-weight`` or ``int8-static``."""
    import openvino as ov
    import torch

    from pytest_quantreg.measure.keep import linear_layers, meta_model

    fp32 = convert(ctx)
    path = fp32 if kind == "fp32" else compressed(fp32, ctx, kind)
    model = ov.Core().read_model(str(path))
    layers = [name for name, _ in linear_layers(meta_model(ctx.model_dir, ctx.trust_remote_code))]
    matmuls = _matmuls(model, layers)
    compiled = compile_model(model)
    names = tuple(item.get_any_name() for item in compiled.inputs)
    return OpenVinoClassifier(path, compiled, names, torch.device("cpu"), matmuls)


def _builder(kind: str) -> Builder:
    def build(ctx: BuildContext) -> OpenVinoClassifier:
        return classifier(ctx, kind)

    return build


def precisions() -> list[Precision]:
    """openvino-fp32 (the converted model, gated like FP32: it catches a broken conversion), openvino-int8-weight
    and openvino-int8-static; CPU only."""
    common: dict[str, Any] = {"requires": REQUIRES, "extra": EXTRA, "backend": BACKEND.name, "devices": frozenset({"cpu"})}
    # OpenVINO's ratio to torch's FP32 moves between whole-suite processes on one hardware class more than
    # 10% (openvino-int8-static 0.309 when recorded, 0.351 [0.344, 0.361] in a later CI run): 25% is allowed
    common["max_latency_increase"] = 25.0
    return [
        Precision(
            "openvino-fp32",
            _builder("fp32"),
            description="the FP32 model converted with openvino.convert_model, run by OpenVINO with inference precision f32",
            max_drop=0.5,
            max_latency_ratio={"cpu": 2.0},
            max_flip_rate=1.0,
            max_kl=0.001,
            **common,
        ),
        Precision(
            "openvino-int8-weight",
            _builder("int8-weight"),
            description="NNCF compress_weights: int8 asymmetric weights per channel, f32 activations, run by OpenVINO",
            max_drop=2.0,
            max_latency_ratio={"cpu": 1.5},
            max_flip_rate=2.0,
            max_kl=0.01,
            **common,
        ),
        Precision(
            "openvino-int8-static",
            _builder("int8-static"),
            description="NNCF quantize (TRANSFORMER): int8 weights and activations calibrated on other texts, run by OpenVINO",
            max_drop=3.0,
            max_latency_ratio={"cpu": 1.5},  # a ceiling: 0.31 with AVX-512 VNNI, 1.00 with oneDNN capped at AVX2 (no VNNI)
            max_flip_rate=4.0,
            max_kl=0.02,
            calibrated=True,
            **common,
        ),
    ]
