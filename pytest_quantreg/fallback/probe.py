"""Forward passes of a quantized model with chosen Linear layers restored to FP32, within a budget.

The quantized model is built once: restoring a layer swaps its module for FP32's (a wrapper that
casts the input to FP32 and the output back), and swaps it back afterwards. A model that is not a
torch module but restores layers itself (a :class:`~pytest_quantreg.backends.base.RestoresLayers`)
makes a copy with them in FP32. Any other model whose layers cannot be swapped (one that is not a torch
module, or has not FP32's module names) is rebuilt by its precision with those layers kept in FP32
instead, one build per set. Passes run per sample at batch size 1,
as the measured passes do, and each one counts against the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pytest_quantreg.measure.inputs import Inputs
from pytest_quantreg.measure.loading import device_of, is_compiled, model_size_mb

Layers = frozenset[str]


class BudgetExhausted(Exception):
    """The search spent its forward passes or its seconds."""


@dataclass
class Budget:
    """At most ``passes`` forward passes (one sample each) and ``seconds`` of wall time."""

    passes: int
    seconds: float
    used: int = 0
    start: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def charge(self, passes: int) -> None:
        """Account for ``passes`` more forward passes, or raise :class:`BudgetExhausted` when they do not fit."""
        if self.used + passes > self.passes:
            raise BudgetExhausted(f"its budget of {self.passes} forward passes (--quantreg-fallback-max-passes) ran out")
        if self.elapsed > self.seconds:
            raise BudgetExhausted(f"its budget of {self.seconds:g} s (--quantreg-fallback-max-seconds) ran out")
        self.used += passes


class Restored(torch.nn.Module):
    """FP32's Linear layer standing in for a quantized one: FP32 inside, the model's dtype outside."""

    def __init__(self, fp32: torch.nn.Module) -> None:
        super().__init__()
        self.fp32 = fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.fp32.parameters()).dtype
        output: torch.Tensor = self.fp32(x.to(dtype))
        return output.to(x.dtype)


def swappable(model: object, fp32: torch.nn.Module, layers: Sequence[str]) -> bool:
    """Whether every one of ``layers`` is a module of both ``model`` and ``fp32``."""
    if not isinstance(model, torch.nn.Module) or is_compiled(model):
        return False  # a Classifier has no modules; a compiled model would recompile on every swap
    mine, theirs = dict(model.named_modules()), dict(fp32.named_modules())
    return all(name in mine and name in theirs for name in layers)


def swapping(model: torch.nn.Module, fp32: torch.nn.Module) -> Callable[[Layers], AbstractContextManager[torch.nn.Module]]:
    """``model`` with the given layers swapped for ``fp32``'s, restored on exit."""

    @contextmanager
    def restored(layers: Layers) -> Iterator[torch.nn.Module]:
        originals: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
        try:
            for name in sorted(layers):
                parent_name, _, leaf = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                originals.append((parent, leaf, getattr(parent, leaf)))
                setattr(parent, leaf, Restored(fp32.get_submodule(name)))
            yield model
        finally:
            for parent, leaf, module in reversed(originals):
                setattr(parent, leaf, module)

    return restored


def rebuilding(build: Callable[[Layers], Any]) -> Callable[[Layers], AbstractContextManager[Any]]:
    """The precision built anew with the given layers kept in FP32 (the last build is reused): a torch
    module or a Classifier."""
    last: dict[Layers, Any] = {}

    @contextmanager
    def restored(layers: Layers) -> Iterator[Any]:
        if layers not in last:
            last.clear()
            last[layers] = build(layers)
        yield last[layers]

    return restored


class Probe:
    """Logits of the quantized model with some layers restored, per sample, cached and budgeted."""

    def __init__(self, restored: Callable[[Layers], AbstractContextManager[torch.nn.Module]], inputs: Inputs, budget: Budget) -> None:
        self._restored = restored
        self._inputs = inputs
        self.budget = budget
        self._rows: dict[tuple[Layers, int], np.ndarray] = {}

    def seed(self, layers: Layers, indices: Sequence[int], logits: Sequence[Sequence[float]]) -> None:
        """Take logits already measured (a pass the run made) instead of running them again."""
        for index in indices:
            self._rows[(layers, index)] = np.asarray(logits[index], dtype=np.float64)

    def logits(self, layers: Layers, indices: Sequence[int], charge: bool = True) -> np.ndarray:
        """Rows of logits for ``indices`` with ``layers`` restored to FP32 (``charge``: against the budget)."""
        missing = [i for i in indices if (layers, i) not in self._rows]
        if missing:
            if charge:
                self.budget.charge(len(missing))
            with self._restored(layers) as model, torch.inference_mode():
                device = device_of(model)
                for index in missing:
                    encoding = {k: t.to(device) for k, t in self._inputs.encodings[index].items()}
                    self._rows[(layers, index)] = model(**encoding).logits.float()[0].cpu().numpy().astype(np.float64)
        return np.stack([self._rows[(layers, i)] for i in indices])

    def size_mb(self, layers: Layers) -> float:
        """The model's state-dict size in MB with ``layers`` restored to FP32."""
        with self._restored(layers) as model:
            return model_size_mb(model)
