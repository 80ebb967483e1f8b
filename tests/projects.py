"""The plugin's test projects: a tiny random-init BERT classifier and data labelled by it, the example's
regression tests as a project file, and the steps several tests share (record a baseline, run the example).

The data set is labelled with the tiny model's own FP32 predictions, so FP32 scores 100% and any real
damage to the weights shows as lost accuracy (the fixtures in conftest.py build them once per session).
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from outcomes import assert_verdicts

WORDS = [f"w{i}" for i in range(200)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_model(labels: list[str]) -> tuple[Any, Any]:
    """The tiny random-init classifier for ``labels`` (seed 0) and its word-level tokenizer."""
    import tempfile

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = Path(tempfile.mkdtemp()) / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)  # transformers 5 names it vocab, not vocab_file
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=len(labels),
        initializer_range=0.2,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    return BertForSequenceClassification(config).eval(), tokenizer


def tiny_logits(model: Any, tokenizer: Any, texts: list[str]) -> Any:
    import torch

    with torch.inference_mode():
        return torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])


def save_tiny(model: Any, tokenizer: Any, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def labelled_csv(model_dir: Path, texts: list[str], path: Path) -> Path:
    """A CSV of ``texts`` labelled (by name) with the model's own FP32 predictions: FP32 scores 100%."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    predicted = tiny_logits(model, AutoTokenizer.from_pretrained(model_dir), texts).argmax(-1).tolist()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([text, model.config.id2label[label]] for text, label in zip(texts, predicted, strict=True))
    return path


def tiny_texts(n: int = 60) -> list[str]:
    rng = random.Random(1)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


EXAMPLE_TESTS = (Path(__file__).parent / "test_quantization.py").read_text(encoding="utf-8")


def record_baseline(pytester: pytest.Pytester) -> None:
    """Record the project's FP32 baseline (``--precision=fp32 --quantreg-update-baselines``).

    Recorded once per session for the same ini file and conftest, then copied into each project that
    asks: the same model, data and settings give the same baseline, and recording it is a run of its own."""
    key = tuple((pytester.path / name).read_text() if (pytester.path / name).exists() else "" for name in ("tox.ini", "conftest.py"))
    if key not in _RECORDED:
        record_baseline_with(pytester)
        (path,) = (pytester.path / "baselines").glob("*.json")
        _RECORDED[key] = (path.name, path.read_bytes())
        return
    name, content = _RECORDED[key]
    (pytester.path / "baselines").mkdir(exist_ok=True)
    (pytester.path / "baselines" / name).write_bytes(content)


_RECORDED: dict[tuple[str, ...], tuple[str, bytes]] = {}


def record_baseline_with(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Record the project's FP32 baseline with ``args`` in a run of its own. Its accuracy test must pass; its
    latency test passes, or skips because the machine was busy while FP32 was timed (the plugin never judges
    a disturbed timing, and CI runners are shared)."""
    result = pytester.runpytest("--precision=fp32", "--quantreg-update-baselines", "-rs", *args)
    assert_verdicts(result, passed=2)
    return result


def lenient_project(pytester: pytest.Pytester, model: Path, data: Path) -> None:
    """A pytester project on ``model`` and ``data`` whose gates only a broken build fails (a random-init
    model's quantized builds drift far), with its FP32 baseline recorded."""
    pytester.makeini(
        f"[pytest]\naddopts = -rfEs\nquantreg_model = {model}\nquantreg_dataset = {data}\nquantreg_device = cpu\nquantreg_warmup = 1\n"
        "quantreg_max_length = 64\nquantreg_max_latency_ratio = 1000\nquantreg_max_drop = 100\nquantreg_max_flip_rate = 100\n"
        "quantreg_max_kl = 100\n"
    )
    pytester.makepyfile(test_regression=EXAMPLE_TESTS)
    record_baseline(pytester)


REPO = Path(__file__).resolve().parents[1]


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    """The example's regression suite (tests/test_quantization.py) in a child process, from the repository root."""
    command = [sys.executable, "-m", "pytest", "tests/test_quantization.py", "-p", "no:cacheprovider", "-rs", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
