"""The backend contract: a runtime of the user's own, one module and one line, through the whole plugin.

The toy runtime below is not a torch module: it stores each Linear weight as int8 codes with a scale per
output row and runs torch on its own dequantized copy, so the plugin can only reach it through the
:class:`~pytest_quantreg.backends.base.Classifier` contract. Its "kernel" for one layer has a bug
(``TOY_BUG``: that layer's weight is negated), which the suite, the weight report and the fallback
search must each find without any module of the plugin knowing the toy.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from outcomes import assert_verdicts
from projects import record_baseline

BUGGY = "bert.encoder.layer.1.output.dense"

TOY_BACKEND = textwrap.dedent(
    '''
    """A toy int8 runtime: row-wise int8 codes and scales, run on a dequantized copy."""

    import copy
    import os

    import torch

    from pytest_quantreg.backends.base import Classifier, Logits


    class ToyInt8(Classifier):
        def __init__(self, model, stored, kept):
            self.model, self.stored, self.kept, self.device = model, stored, frozenset(kept), torch.device("cpu")

        def __call__(self, **encoding):
            with torch.no_grad():
                return Logits(self.model(**encoding).logits)

        def size_mb(self):
            codes = sum(c.numel() + 4 * s.numel() for c, s in self.stored.values())
            rest = sum(p.numel() * 4 for n, p in self.model.named_parameters() if n.rsplit(".", 1)[0] not in self.stored)
            return (codes + rest) / 2**20

        def kept_in_fp32(self, names):
            return tuple(name for name in names if name in self.kept)

        def dequantized_weights(self):
            modules = dict(self.model.named_modules())
            for name, module in modules.items():
                if isinstance(module, torch.nn.Linear):
                    stored = self.stored.get(name)
                    yield name, module.weight.detach().float(), "toy int8 per-row" if stored else "toy fp32"

        def with_fp32(self, layers, fp32_weights):
            model = copy.deepcopy(self.model)
            modules = dict(model.named_modules())
            with torch.no_grad():
                for name in layers:
                    modules[name].weight.copy_(fp32_weights[name])
            return ToyInt8(model, {n: s for n, s in self.stored.items() if n not in layers}, self.kept | set(layers))


    def build(ctx):
        model = ctx.load()
        stored = {}
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and not ctx.keeps(name):
                    scale = module.weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
                    codes = torch.round(module.weight / scale).to(torch.int8)
                    stored[name] = (codes, scale)
                    weight = codes.float() * scale
                    module.weight.copy_(-weight if name == os.environ.get("TOY_BUG") else weight)
        return ToyInt8(model, stored, ctx.keep_fp32)
    '''
)

CONFTEST = textwrap.dedent(
    """
    import toy_backend

    def pytest_quantreg_precisions(registry):
        registry.register("toy-int8", toy_backend.build, devices=["cpu"], max_drop=5.0, max_flip_rate=10.0)
        registry.register("toy-broken", lambda ctx: {"logits": None}, devices=["cpu"])
    """
)


@pytest.fixture
def toy_project(quantreg_pytester: pytest.Pytester) -> pytest.Pytester:
    quantreg_pytester.makepyfile(toy_backend=TOY_BACKEND)
    quantreg_pytester.makeconftest(CONFTEST)
    quantreg_pytester.syspathinsert()
    record_baseline(quantreg_pytester)
    return quantreg_pytester


def test_a_toy_backend_runs_through_the_suite_and_the_weight_report(toy_project: pytest.Pytester) -> None:
    result = toy_project.runpytest("--precision=fp32,toy-int8", "--quantreg-weights-report=weights.json", "--benchmark-json=bench.json")
    assert_verdicts(result, passed=4)
    bench = {
        entry["params"]["quantreg_precision"]: entry["extra_info"]
        for entry in json.loads((toy_project.path / "bench.json").read_text())["benchmarks"]
    }
    toy = bench["toy-int8"]
    assert toy["kept_fp32"] == ["classifier"]  # asked of the toy through its kept_in_fp32
    assert toy["size_mb"] < 0.5 * bench["fp32"]["size_mb"]  # its own size_mb: int8 codes
    weights = json.loads((toy_project.path / "weights.json").read_text())
    layers = {row["name"]: row for entry in weights["precisions"] if entry["precision"] == "toy-int8" for row in entry["layers"]}
    assert layers[BUGGY]["storage"] == "toy int8 per-row"
    assert 30 < layers[BUGGY]["snr_db"] < 60  # 8 bits per row: about 40 dB


def test_the_fallback_search_finds_the_toys_broken_layer_by_restoring_it(
    toy_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOY_BUG", BUGGY)
    result = toy_project.runpytest(
        "--precision=fp32,toy-int8", "--quantreg-fallback=report", "--quantreg-fallback-report=fallback.json",
        "--quantreg-weights-report=weights.json", "-k", "accuracy",
    )  # fmt: skip
    assert_verdicts(result, passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*fallback search: fails its gates; keeping 1 unit in FP32 passes*--quantreg-keep-fp32=head,{BUGGY}*"])
    found = {entry["precision"]: entry for entry in json.loads((toy_project.path / "fallback.json").read_text())["precisions"]}["toy-int8"]
    assert found["units"] == [BUGGY]
    assert found["strategy"] == "restore"  # the toy's own with_fp32, not a rebuild
    weights = json.loads((toy_project.path / "weights.json").read_text())
    layers = {row["name"]: row for entry in weights["precisions"] if entry["precision"] == "toy-int8" for row in entry["layers"]}
    assert layers[BUGGY]["snr_db"] < 0  # the negated weight, read from the toy


def test_a_build_that_breaks_the_contract_says_what_it_lacks(toy_project: pytest.Pytester) -> None:
    result = toy_project.runpytest("--precision=toy-broken", "-k", "accuracy")
    assert_verdicts(result, failed=1)
    result.stdout.fnmatch_lines(
        ["*toy-broken's build returned a dict, which is neither a torch module nor a pytest_quantreg.backends.base.Classifier "
         "(it lacks device, __call__, size_mb, kept_in_fp32, dequantized_weights)*"]
    )  # fmt: skip
