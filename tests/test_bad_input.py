"""Every user mistake, tried in a real pytest session: one clear line naming the problem and the fix,
the exit code pytest users expect (usage errors 4, failing gates 1), no traceback, nothing lost.

The tables below are the list of cases; each row is run.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from outcomes import assert_verdicts
from projects import record_baseline, record_baseline_with


def _usage_error(result: pytest.RunResult, message: str) -> None:
    """Exit 4, the message on stderr (``*`` matches anything), no traceback anywhere."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"*{message.replace('[', '[[]')}*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


# -- option values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--precision=int9"],
            "unknown precision 'int9'; valid names: fp32, fp16, bf16, int8-dynamic, int8-bnb, int4-nf4, int4-fp4, torchao-int8-dynamic, "
            "torchao-int8-dynamic+compile, torchao-int8-weight, torchao-int4-weight, onnx-fp32, onnx-int8-dynamic, onnx-int8-static, "
            "openvino-fp32, openvino-int8-weight, openvino-int8-static, int8, int4, all "
            "(and NAME+compile of fp32, fp16, bf16, torchao-*)",
        ),
        (["--precision=,"], "no precision selected"),
        (["--device=gpu"], "--device: 'gpu' is not a device; use cpu, cuda, cuda:N"),
        (["--device=cuda:x"], "--device: 'cuda:x' is not a device; use cpu, cuda, cuda:N (N = GPU index) or auto"),
        (["--quantreg-samples=0"], "sample count must be at least 1"),
        (["--quantreg-samples=-3"], "above 0"),
        (["--quantreg-samples=1.5"], "sample fraction must be above 0 and at most 1"),
        (["--quantreg-samples=lots"], "cannot read sample size 'lots'"),
        (["--quantreg-samples=61"], "asked for 61 samples but the evaluation split has only 60"),
        (["--quantreg-seed=-1"], "--quantreg-seed: -1 is below the minimum 0"),
        (["--quantreg-seed=abc"], "--quantreg-seed: 'abc' is not a whole number; use e.g. --quantreg-seed=1"),
        (["--quantreg-max-length=4"], "--quantreg-max-length: 4 is below the minimum 8"),
        (["--quantreg-warmup=x"], "--quantreg-warmup: 'x' is not a whole number"),
        (["--quantreg-batch-size=0"], "--quantreg-batch-size: 0 is below the minimum 1"),
        (["--quantreg-latency-pairs=3"], "--quantreg-latency-pairs: 3 is below the minimum 6"),
        (["--quantreg-latency-pairs=all"], "--quantreg-latency-pairs: 'all' is not a whole number; use e.g. --quantreg-latency-pairs=6"),
        (["--quantreg-max-drop=-1"], "--quantreg-max-drop: '-1' is not a non-negative number"),
        (["--quantreg-max-drop=nan"], "--quantreg-max-drop: 'nan' is not a non-negative number"),
        (["--quantreg-max-drop=lots"], "--quantreg-max-drop: 'lots' is not a non-negative number"),
        (["--quantreg-max-latency-ratio=int8=fast"], "--quantreg-max-latency-ratio: 'fast' is not a non-negative number"),
        (["--quantreg-max-drop=int9=1"], "unknown precision 'int9'; valid names: fp32"),
        (["--quantreg-alpha=0"], "--quantreg-alpha: '0' is out of range; use a number above 0 to 0.5"),
        (["--quantreg-alpha=int8=0.9"], "--quantreg-alpha: '0.9' is out of range; use a number above 0 to 0.5"),
        (["--quantreg-min-relative-accuracy=101"], "--quantreg-min-relative-accuracy: '101' is out of range; use a number from 0 to 100"),
        (["--quantreg-max-flip-rate=inf"], "--quantreg-max-flip-rate: 'inf' is not a non-negative number"),
        (["--quantreg-max-kl=fp16=-0.1"], "--quantreg-max-kl: '-0.1' is not a non-negative number"),
    ],
)
def test_bad_option_is_a_usage_error(quantreg_pytester: pytest.Pytester, args: list[str], message: str) -> None:
    _usage_error(quantreg_pytester.runpytest(*args), message)


# -- model folders ---------------------------------------------------------------------------------


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))

    return edit


def _remove(*names: str) -> Callable[[Path], None]:
    def remove(folder: Path) -> None:
        for name in names:
            (folder / name).unlink(missing_ok=True)

    return remove


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        (None, ["--quantreg-model=nowhere"], "model folder {path}/nowhere does not exist; pass a local folder written by save_pretrained"),
        (_remove("config.json"), [], "model folder {model} has no config.json; save the model there with save_pretrained"),
        (_remove("model.safetensors"), [], "model folder {model} has no .safetensors weights; save it with"),
        (
            lambda folder: (folder / "model.safetensors").rename(folder / "tf_model.h5"),
            [],
            "model folder {model} holds TensorFlow weights only, which transformers 5 cannot load; convert them once where "
            "TensorFlow and transformers 4 are installed: `AutoModelForSequenceClassification.from_pretrained(path, from_tf=True)*",
        ),
        (_remove("vocab.txt", "tokenizer.json"), [], "model folder {model} has no tokenizer files; save the tokenizer there"),
        (
            lambda folder: (folder / "config.json").write_text("{not json"),
            [],
            "cannot read {model}/config.json: Expecting property name",
        ),
        (
            _edit_config(architectures=["BertModel"]),
            [],
            "model in {model} is a BertModel, not a sequence classifier; pass a folder saved from an AutoModelForSequenceClassification",
        ),
        (
            _edit_config(auto_map={"AutoModelForSequenceClassification": "modeling.Mine"}),
            [],
            "model folder {model} ships Python code of its own (auto_map: AutoModelForSequenceClassification), "
            "which pytest-quantreg never runs unless asked; read that code, then pass --quantreg-trust-remote-code",
        ),
        (
            _edit_config(id2label={"0": "negative", "1": "neutral", "2": "positive"}),
            ["--quantreg-dataset="],  # the embedded tweets: two labels
            "has 3 labels ['negative', 'neutral', 'positive'] but data set tweets has 2 ['negative', 'positive']; "
            "use a model trained for these labels",
        ),
        (
            None,
            ["--quantreg-max-length=65"],
            "--quantreg-max-length=65 is more tokens than the model in * has positions for (max_position_embeddings 64); "
            "use --quantreg-max-length=64 or less",
        ),
    ],
)
def test_bad_model_folder_is_a_usage_error(
    quantreg_pytester: pytest.Pytester, tiny_model_dir: Path, change: Callable[[Path], None] | None, args: list[str], message: str
) -> None:
    model = quantreg_pytester.path / "model"
    shutil.copytree(tiny_model_dir, model)
    if change is not None:
        change(model)
        args = [*args, "--quantreg-model=model"]
    result = quantreg_pytester.runpytest(*args)
    _usage_error(result, message.format(path=quantreg_pytester.path, model=model))


# -- data set files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("none.csv", None, "data set file {path}/none.csv does not exist"),
        ("empty.csv", "", "empty.csv is empty; it needs a header row and data rows"),
        ("header.csv", "text,label\n", "header.csv has no data rows"),
        ("d.csv", "text,label\nhi,neutral\n", "d.csv, row 2: label 'neutral' is unknown to the model"),
        ("d.csv", "body,label\nhi,1\n", "d.csv, row 2: no column 'text' (found: body, label)"),
        ("latin1.csv", "text,label\ncaf\xe9,1\n".encode("latin-1"), "latin1.csv is not UTF-8 (line 2, byte 14); re-save it as UTF-8"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{oops\n', "bad.jsonl, line 2: not valid JSON"),
        ("d.txt", "text,label\nhi,1\n", "is neither .csv nor .jsonl"),
    ],
)
def test_bad_data_set_file_is_a_usage_error(
    quantreg_pytester: pytest.Pytester, name: str, content: str | bytes | None, message: str
) -> None:
    path = quantreg_pytester.path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    _usage_error(quantreg_pytester.runpytest(f"--quantreg-dataset={name}"), message.format(path=quantreg_pytester.path))


# -- folders to write into -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quantreg-update-baselines", "--quantreg-baseline-dir=blocked/baselines"], "--quantreg-baseline-dir: cannot write into"),
        (["--quantreg-weights-report=blocked/w.json"], "--quantreg-weights-report: cannot write into"),
        (["--quantreg-report=blocked/report"], "--quantreg-report: cannot write into"),
    ],
)
def test_folder_that_cannot_be_written_is_a_usage_error_before_any_test(
    quantreg_pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    (quantreg_pytester.path / "blocked").write_text("a file where a folder should be\n")
    result = quantreg_pytester.runpytest("--precision=fp32", *args)
    _usage_error(result, message)
    assert "blocked" in result.stderr.str()
    assert "choose another folder" in result.stderr.str()
    assert "collected" not in result.stdout.str()  # refused before any model was built


# -- stored baselines ------------------------------------------------------------------------------


def _json_edit(change: Callable[[dict], None]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        document = json.loads(text)
        change(document)
        return json.dumps(document)

    return edit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda text: "not json at all",
            "is not readable JSON (Expecting value: line 1 column 1 (char 0)); fix or delete it, or re-record",
        ),
        (lambda text: text[: len(text) // 2], "is not readable JSON"),
        (lambda text: "[1, 2]", "is not a JSON object; fix or delete it"),
        (_json_edit(lambda d: d.update(schema_version=99)), "has schema version 99, this pytest-quantreg reads 1"),
        (_json_edit(lambda d: d.pop("predictions")), "is incomplete or malformed (KeyError: 'predictions')"),
        (_json_edit(lambda d: d["fp32"].update(accuracy="high")), "is incomplete or malformed (TypeError: expected a number, got 'high')"),
        (
            _json_edit(lambda d: d["provenance"].update(dataset_sha256="f" * 64)),
            "was recorded for another data set: dataset_sha256 is ffffffffffff there",
        ),
        (
            _json_edit(lambda d: d["provenance"].update(weights_sha256="0" * 64)),
            "was recorded for another model (different weights): weights_sha256 is 000000000000 there",
        ),
        (
            _json_edit(lambda d: d["provenance"].update(labels=["bad", "good"])),
            "was recorded for other labels: labels is ['bad', 'good'] there, ['negative', 'positive'] in this run",
        ),
    ],
)
def test_unusable_baseline_fails_the_gate_and_is_kept(
    quantreg_pytester: pytest.Pytester, damage: Callable[[str], str], message: str
) -> None:
    record_baseline(quantreg_pytester)
    (path,) = (quantreg_pytester.path / "baselines").glob("*.json")
    path.write_text(damage(path.read_text()))
    damaged = path.read_bytes()
    result = quantreg_pytester.runpytest("--precision=fp32,int8")
    assert_verdicts(result, passed=2, failed=2)  # latency gates need no baseline; both accuracy gates refuse it
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert message in result.stdout.str()
    assert "Traceback" not in result.stdout.str()
    assert path.read_bytes() == damaged  # never overwritten unless asked


def test_baseline_names_cannot_leave_the_baseline_folder(quantreg_pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    sneaky = quantreg_pytester.path / ".." / ".."
    model = quantreg_pytester.path / "m" / ".."
    shutil.copytree(tiny_model_dir, quantreg_pytester.path / "m")
    record_baseline_with(quantreg_pytester, f"--quantreg-model={model}/m")
    (path,) = (quantreg_pytester.path / "baselines").glob("*.json")
    assert path.parent == quantreg_pytester.path / "baselines"
    assert not list(sneaky.resolve().glob("*.json"))


# -- a model folder's own code ---------------------------------------------------------------------


def test_model_code_runs_only_with_the_explicit_option(
    quantreg_pytester: pytest.Pytester, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = quantreg_pytester.path / "custom"
    shutil.copytree(tiny_model_dir, model)
    ran = quantreg_pytester.path / "custom-code-ran"
    (model / "configuration_custom.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from transformers import BertConfig

            Path({str(ran)!r}).write_text("yes")

            class CustomBertConfig(BertConfig):
                model_type = "custom-bert"
            """
        )
    )
    (model / "modeling_custom.py").write_text(
        textwrap.dedent(
            """
            from transformers import BertForSequenceClassification
            from .configuration_custom import CustomBertConfig

            class CustomBertForSequenceClassification(BertForSequenceClassification):
                config_class = CustomBertConfig
            """
        )
    )
    _edit_config(
        model_type="custom-bert",
        architectures=["CustomBertForSequenceClassification"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomBertConfig",
            "AutoModelForSequenceClassification": "modeling_custom.CustomBertForSequenceClassification",
        },
    )(model)
    monkeypatch.setenv("HF_MODULES_CACHE", str(quantreg_pytester.path / "hf-modules"))

    refused = quantreg_pytester.runpytest_subprocess("--precision=fp32", "--quantreg-model=custom")
    _usage_error(refused, "ships Python code of its own")
    assert not ran.exists()

    trusted = quantreg_pytester.runpytest_subprocess(
        "--precision=fp32", "--quantreg-model=custom", "--quantreg-update-baselines", "--quantreg-trust-remote-code"
    )
    assert_verdicts(trusted, passed=2)
    assert ran.read_text() == "yes"


def test_latency_without_a_usable_baseline_says_to_record_the_baseline(quantreg_pytester: pytest.Pytester) -> None:
    """A missing baseline cannot take a latency record: the end of the run says what to record first."""
    result = quantreg_pytester.runpytest("--precision=fp32,int8", "-k", "latency")
    assert_verdicts(result, passed=2)
    result.stdout.fnmatch_lines(
        [
            "quantreg: no usable FP32 baseline at * (the accuracy tests say why): only fixed limits judged the latency of "
            "int8-dynamic; record the baseline with --quantreg-update-baselines"
        ]
    )
    assert "--quantreg-record-latency" not in result.stdout.str()
    assert not (quantreg_pytester.path / "baselines").exists()


# -- a broken FP32 reference -----------------------------------------------------------------------


def _broken_tokenizer(folder: Path) -> None:
    """What transformers 5 makes of BertTokenizerFast(vocab_file=...): a vocabulary of the special tokens alone."""
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")


def _labels_swapped(folder: Path) -> None:
    """The head's labels in the other order than the data's."""
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "positive", "1": "negative"}
    config["label2id"] = {"positive": 0, "negative": 1}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "problems"),
    [
        (
            _broken_tokenizer,
            [
                "*- the tokenizer knows 5 tokens and the model's embedding matrix has 205 rows: it is not the tokenizer the model "
                "was trained with*",
                "*- *% of the sample's tokens are the unknown token: the tokenizer does not match the model*",
            ],
        ),
        (
            _labels_swapped,
            ["*- FP32 is right on 0.0% of the sample, no better than always answering its most common label * (50.0%)*"],
        ),
    ],
)
def test_a_broken_reference_is_not_recorded_without_the_explicit_option(
    quantreg_pytester: pytest.Pytester, tiny_model_dir: Path, damage: Callable[[Path], None], problems: list[str]
) -> None:
    model = quantreg_pytester.path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model)
    args = ("--precision=fp32", f"--quantreg-model={model}", "-k", "accuracy")
    refused = quantreg_pytester.runpytest(*args, "--quantreg-update-baselines")
    assert_verdicts(refused, failed=1)
    refused.stdout.fnmatch_lines(
        [
            "*the FP32 reference fails its sanity checks, so no verdict against it would mean anything (the baseline was not recorded):",
            *problems,
            "*fix the model, its tokenizer or the data; to record and judge against it anyway, pass --quantreg-accept-reference",
        ]
    )
    assert not list((quantreg_pytester.path / "baselines").glob("*.json"))
    assert "During handling of the above exception" not in refused.stdout.str()  # the message once, not chained

    assert_verdicts(quantreg_pytester.runpytest(*args, "--quantreg-update-baselines", "--quantreg-accept-reference"), passed=1)
    (path,) = (quantreg_pytester.path / "baselines").glob("*.json")
    recorded = path.read_bytes()
    judged = quantreg_pytester.runpytest(*args)  # every run checks the stored reference again
    assert_verdicts(judged, failed=1)
    judged.stdout.fnmatch_lines([f"*sanity checks*(nothing was judged; {path} is left as it is):", *problems])
    assert path.read_bytes() == recorded


def test_a_corrupt_baseline_is_reported_before_any_model_is_built(quantreg_pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    """The header says so, read from the file alone (the baseline's name needs no model: the example
    takes minutes to train), and the accuracy test fails on it before anything is measured."""
    record_baseline(quantreg_pytester)
    (path,) = (quantreg_pytester.path / "baselines").glob("*.json")
    path.write_text("{broken", encoding="utf-8")
    result = quantreg_pytester.runpytest("--precision=fp32", "-k", "accuracy")
    assert_verdicts(result, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"quantreg baseline: baseline {path} is not readable JSON (*); fix or delete it, or re-record it with "
            "--quantreg-update-baselines; the accuracy tests will fail on it",
            f"*baseline {path} is not readable JSON*",
        ]
    )
    assert "QUANTIZATION COMPARISON SUMMARY" not in result.stdout.str()  # nothing was measured
    assert path.read_text(encoding="utf-8") == "{broken"
