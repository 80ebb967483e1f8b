"""Modules kept in FP32: ``--quantreg-keep-fp32`` resolved against a model's Linear layers.

Precisions that quantize Linear layers leave these alone, each through its backend's own
mechanism (its ``Backend.keep_setting`` shows it). By default that is the output head: quantizing a
classifier's few-row head saves nothing, and it is where collapses and kernel crashes happen (a
4-bit CPU path that needs a multiple of 32 output rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pytest_quantreg.errors import QuantregError

if TYPE_CHECKING:
    import torch

    from pytest_quantreg.backends.base import Classifier

HEAD = "head"
NONE = "none"
DEFAULT = HEAD
OPTION = "--quantreg-keep-fp32"


def parse(value: str | Sequence[str], where: str = OPTION) -> tuple[str, ...]:
    """``head``, ``none`` or comma-separated module names -> the tokens to resolve (``()`` for none)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(part, str) for part in parts):
        raise QuantregError(f"{where}: {value!r} is not a list of module names; use e.g. {OPTION}=head,bert.pooler")
    tokens = tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))
    if not tokens:
        raise QuantregError(f"{where}: no module named; use {OPTION}={HEAD} (the default), {OPTION}={NONE}, or module names")
    if NONE in tokens:
        if len(tokens) > 1:
            raise QuantregError(f"{where}: '{NONE}' cannot be combined with module names ({', '.join(tokens)})")
        return ()
    return tokens


def parse_setting(value: str, where: str = OPTION) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """``head`` or ``head; int4-nf4=head,electra.embeddings_project`` -> the tokens of every precision, and
    those of the precisions named (entries separated by ``;``, a precision's own after ``NAME=``)."""
    default: tuple[str, ...] = (DEFAULT,)
    own: dict[str, tuple[str, ...]] = {}
    entries = [entry.strip() for entry in value.split(";") if entry.strip()] or [value]
    for entry in entries:
        name, named, tokens = entry.partition("=")
        if named:
            own[name.strip().lower()] = parse(tokens, f"{where} {name.strip()}")
        else:
            default = parse(entry, where)
    return default, own


def describe(tokens: Sequence[str]) -> str:
    """The setting as it is written: ``head``, ``none``, ``head,bert.pooler``."""
    return ",".join(tokens) or NONE


def linear_layers(model: torch.nn.Module) -> list[tuple[str, int]]:
    """``(name, outputs)`` of every Linear-like layer (``nn.Linear``, transformers' ``Conv1D``), in model order."""
    import torch

    layers = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear):
            layers.append((name, module.out_features))
        elif type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
            layers.append((name, int(weight.shape[1])))
    return layers


def meta_model(model_dir: Path, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model's module structure without its weights (on the meta device): cheap to build."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from pytest_quantreg.measure.loading import quiet_transformers

    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model: torch.nn.Module = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    return model


def resolve(tokens: Iterable[str], layers: Sequence[tuple[str, int]], num_labels: int) -> tuple[str, ...]:
    """The Linear layers the tokens name, in model order: ``head`` is the last layer with ``num_labels``
    outputs; a name keeps that layer or every Linear layer under that module."""
    names = [name for name, _ in layers]
    kept: set[str] = set()
    for token in tokens:
        if token == HEAD:
            heads = [name for name, outputs in layers if outputs == num_labels]
            if not heads:
                raise QuantregError(
                    f"{OPTION}={HEAD}: the model has no Linear layer with {num_labels} outputs (its output head); "
                    f"name the modules to keep instead, e.g. {OPTION}={names[-1] if names else 'classifier'}"
                )
            kept.add(heads[-1])
            continue
        matched = [name for name in names if name == token or name.startswith(token + ".")]
        if not matched:
            examples = ", ".join(dict.fromkeys([*names[:2], *names[-2:]]))
            raise QuantregError(
                f"{OPTION}: the model has no Linear layer or module named {token!r}; its Linear layers are named like {examples}"
            )
        kept.update(matched)
    return tuple(name for name in names if name in kept)


def narrow_layers(model: torch.nn.Module, min_inputs: int) -> tuple[str, ...]:
    """The ``nn.Linear`` layers of ``model`` with fewer than ``min_inputs`` inputs (works on the meta device)."""
    import torch

    return tuple(name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module.in_features < min_inputs)


def kept_in_fp32(model: object, names: Iterable[str]) -> tuple[str, ...]:
    """Which of ``names`` are plain FP32 ``nn.Linear`` layers in the built ``model``: what was really kept."""
    import torch

    if not isinstance(model, torch.nn.Module):  # a Classifier says which itself
        return tuple(cast("Classifier", model).kept_in_fp32(tuple(names)))
    modules = dict(model.named_modules())
    return tuple(name for name in names if type(modules.get(name)) is torch.nn.Linear and _plain_fp32(modules[name].weight))


def _plain_fp32(weight: torch.Tensor) -> bool:
    """An FP32 weight stored as such: not a quantized tensor subclass (some report FP32 as their dtype)."""
    import torch

    return weight.dtype == torch.float32 and type(weight.data) is torch.Tensor


def short(names: Sequence[str]) -> str:
    """A table cell for the kept layers: the names when few, else their count."""
    if not names:
        return "-"
    return ", ".join(names) if len(names) <= 2 else f"{len(names)} layers"
