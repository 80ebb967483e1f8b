"""Fixtures for the plugin's own tests: a tiny random-init BERT classifier and a data set for it.

The data set is labelled with the tiny model's own FP32 predictions (its bias balanced so both
labels occur), so FP32 scores 100% and any real damage to the weights shows as lost accuracy.
Weights are initialised with std 0.2 (not BERT's 0.02) so that the hidden states differ between
texts; fp16 then keeps every prediction, while int8 dynamic flips 3 of the 60 predictions of this
untrained model (bf16 2, bitsandbytes int8 2, NF4 7, FP4 15, the output head kept in FP32), so the
tiny project allows int8 a larger drop than the trained example does. Hidden size 64 is the
smallest every built-in precision runs at on every CPU (bitsandbytes' 4-bit kernels for AVX-512
BF16 CPUs need 64 inputs per layer). At this size latency is mostly per-call overhead, so the
tiny project does not gate it unless a test says so on the command line.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pkgutil
import textwrap
from pathlib import Path

import pytest
from projects import EXAMPLE_TESTS, labelled_csv, save_tiny, tiny_logits, tiny_model, tiny_texts


@pytest.fixture(scope="session", autouse=True)
def shared_example_cache() -> None:
    """pytester points HOME at each test's folder: keep its sessions on this user's example cache
    (``QUANTREG_CACHE_DIR`` as set, or the one HOME gave) instead of building the example again in each."""
    from pytest_quantreg.measure.example import CACHE_ENV, cache_dir

    os.environ[CACHE_ENV] = str(cache_dir())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 BERT sequence classifier with a word-level tokenizer, saved offline."""
    model, tokenizer = tiny_model(["negative", "positive"])
    logits = tiny_logits(model, tokenizer, tiny_texts())
    margins = (logits[:, 1] - logits[:, 0]).sort().values
    middle = len(margins) // 2
    model.classifier.bias.data[1] -= (margins[middle - 1] + margins[middle]) / 2  # half the texts on each side, no ties
    return save_tiny(model, tokenizer, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_dataset(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of texts labelled (by name) with the tiny model's FP32 predictions."""
    return labelled_csv(tiny_model_dir, tiny_texts(), tmp_path_factory.mktemp("tiny-data") / "tiny.csv")


@pytest.fixture(scope="session")
def bitsandbytes_imported() -> None:
    """Import the quantization libraries once for the whole session, before any pytester snapshot of sys.modules.

    bitsandbytes and torchao register torch operators on import, and onnx and onnxruntime register
    their protobuf and pybind11 types (a second registration aborts the process): none can be
    imported twice in a process. In-process pytester runs drop the modules they imported, so they
    must be imported out here. NNCF registers its OpenVINO metatypes and algorithm backends in
    registries of its own when their modules first load, lazily: all of them are loaded here.
    """
    from pytest_quantreg.backends import registry  # noqa: F401  (adds the backends' noise)
    from pytest_quantreg.measure.loading import held_back_loggers, quiet_loggers

    for module in ("bitsandbytes", "torchao", "onnx", "onnxruntime", "onnxruntime.quantization", "openvino", "nncf"):
        if importlib.util.find_spec(module.partition(".")[0]) is not None:
            with quiet_loggers(*held_back_loggers()):
                importlib.import_module(module)
    if importlib.util.find_spec("nncf") is not None:
        import nncf.openvino
        import nncf.quantization

        for package in (nncf.openvino, nncf.quantization):
            for found in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
                if ".torch" not in found.name and ".onnx" not in found.name and ".tensorflow" not in found.name:
                    with contextlib.suppress(ImportError):
                        importlib.import_module(found.name)


@pytest.fixture
def quantreg_pytester(bitsandbytes_imported: None, pytester: pytest.Pytester, tiny_model_dir: Path, tiny_dataset: Path) -> pytest.Pytester:
    """A pytester project whose ini points the plugin at the tiny model and data on the CPU."""
    pytester.makeini(
        textwrap.dedent(
            f"""
            [pytest]
            addopts = -rfEs
            quantreg_model = {tiny_model_dir}
            quantreg_dataset = {tiny_dataset}
            quantreg_device = cpu
            quantreg_warmup = 1
            quantreg_max_length = 64
            quantreg_max_drop = int8-dynamic=25
            quantreg_max_latency_ratio = 1000
            """
        )
    )
    pytester.makepyfile(test_regression=EXAMPLE_TESTS)
    return pytester
