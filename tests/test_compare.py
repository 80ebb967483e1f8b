"""`quantreg compare`, the CI recipe (`quantreg compare-commits`) and --quantreg-report, run for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from outcomes import JUDGED_TRIES, assert_verdicts
from projects import record_baseline

REPO = Path(__file__).resolve().parents[1]
MINE = textwrap.dedent(
    """
    import os
    import torch

    def _mine(ctx):
        # "our quantization recipe": clean on one commit, broken (classifier flipped) on the other
        model = ctx.load()
        if os.environ.get("MINE_BROKEN") or {broken}:
            with torch.no_grad():
                model.classifier.weight.neg_()
                model.classifier.bias.neg_()
        return model

    def pytest_quantreg_precisions(registry):
        registry.register("mine", _mine, devices=["cpu"], max_drop=100.0)
    """
)


def compare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_quantreg", "compare", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def project(quantreg_pytester: pytest.Pytester) -> pytest.Pytester:
    """The tiny project with the "mine" precision and a recorded FP32 baseline."""
    quantreg_pytester.makeconftest(MINE.format(broken=False))
    record_baseline(quantreg_pytester)
    return quantreg_pytester


def run_suite(project: pytest.Pytester, output: str, broken: bool = False, *args: str) -> None:
    os.environ.pop("MINE_BROKEN", None)
    if broken:
        os.environ["MINE_BROKEN"] = "1"
    try:
        project.runpytest("--precision=fp32,int8,mine", f"--benchmark-json={output}", *args)
    finally:
        os.environ.pop("MINE_BROKEN", None)
    assert (project.path / output).is_file()


def test_clean_runs_pass_and_a_broken_precision_fails(project: pytest.Pytester) -> None:
    run_suite(project, "clean1.json")
    run_suite(project, "clean2.json")
    run_suite(project, "broken.json", broken=True)

    same = compare("clean1.json", "clean2.json", cwd=project.path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no regression" in same.stdout
    assert "int8-dynamic | cpu    | 95.00 → 95.00" in same.stdout

    broken = compare("clean1.json", "broken.json", cwd=project.path)
    assert broken.returncode == 1
    assert (
        "REGRESSION mine (cpu): accuracy 100.00% -> 0.00% (-100.00 pp > 0.5 pp; 60 of 60 predictions changed "
        "(60 right -> wrong, 0 wrong -> right; exact McNemar p 1.73e-18))"
    ) in broken.stdout
    assert "REGRESSION fp32" not in broken.stdout
    assert "REGRESSION int8" not in broken.stdout

    markdown = compare("clean1.json", "broken.json", "--markdown", "--fail-on", "flip-rate=2", cwd=project.path)
    assert markdown.returncode == 1
    assert markdown.stdout.startswith("## pytest-quantreg comparison\n\n**2 regression(s)**")
    assert "| precision | device | accuracy % |" in markdown.stdout
    assert "| mine | cpu | 100.00 → 0.00 | 100.00 → 0.00 | 0.00 → 100.00 | 0.00 → 100.00 |" in markdown.stdout
    assert "- :x: mine (cpu): accuracy 100.00% -> 0.00% (-100.00 pp > 0.5 pp; 60 of 60 predictions changed" in markdown.stdout
    assert "- :x: mine (cpu): flip rate 0.00% -> 100.00% (+100.00 pp > 2 pp)\n" in markdown.stdout

    as_json = json.loads(compare("clean1.json", "broken.json", "--json", cwd=project.path).stdout)
    assert [row["precision"] for row in as_json["rows"]] == ["fp32", "int8-dynamic", "mine"]
    assert as_json["rows"][2]["head"]["accuracy"] == 0.0
    assert len(as_json["regressions"]) == 1

    loose = compare("clean1.json", "broken.json", "--fail-on", "accuracy-drop=100", cwd=project.path)
    assert loose.returncode == 0  # thresholds are options: 100 points allowed, nothing fails


def test_predictions_are_paired_by_sample_not_compared_as_two_accuracies(project: pytest.Pytester) -> None:
    """Two of int8-dynamic's predictions swap in HEAD, one right -> wrong, one wrong -> right: the same
    accuracy, which two point estimates cannot tell from no change."""
    run_suite(project, "base.json")
    data = json.loads((project.path / "base.json").read_text())
    info = next(b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["precision"] == "int8-dynamic")
    outcomes = {i: tuple(map(int, v.split(","))) for i, v in info["sample_outcomes"].items()}
    wrong = next(i for i, (p, y) in outcomes.items() if p != y)
    right = next(i for i, (p, y) in outcomes.items() if p == y)
    info["sample_outcomes"][wrong] = f"{outcomes[wrong][1]},{outcomes[wrong][1]}"
    info["sample_outcomes"][right] = f"{1 - outcomes[right][1]},{outcomes[right][1]}"
    (project.path / "head.json").write_text(json.dumps(data))
    quiet = compare("base.json", "head.json", cwd=project.path)
    assert quiet.returncode == 0, quiet.stdout
    assert "note: int8-dynamic: 2 of 60 predictions changed (1 right -> wrong, 1 wrong -> right; exact McNemar p 1)" in quiet.stdout
    gated = compare("base.json", "head.json", "--fail-on", "changed=1", cwd=project.path)
    assert gated.returncode == 1, gated.stdout
    assert "REGRESSION int8-dynamic (cpu): 3.33% of the predictions changed (> 1%): 2 of 60 predictions changed" in gated.stdout


def test_builds_with_other_layers_kept_in_fp32_are_named_two_builds(project: pytest.Pytester) -> None:
    run_suite(project, "base.json")
    run_suite(project, "head.json", False, "--quantreg-keep-fp32=head,bert.encoder.layer.0.output.dense")
    result = compare("base.json", "head.json", cwd=project.path)
    assert (
        "note: int8-dynamic: two different builds: BASE kept head (1 layer) in FP32, HEAD kept "
        "head,bert.encoder.layer.0.output.dense (2 layers) (--quantreg-keep-fp32)"
    ) in result.stdout, result.stdout
    same = compare("base.json", "base.json", cwd=project.path)
    assert "two different builds" not in same.stdout


def judged_suite(project: pytest.Pytester, output: str) -> dict[str, Any]:
    """``run_suite`` until no latency in it was timed on a busy machine (the edits below need judged ratios);
    skip saying so when the machine stays busy."""
    for _ in range(JUDGED_TRIES):
        run_suite(project, output)
        data = json.loads((project.path / output).read_text())
        busy = [b["extra_info"].get("latency_disturbed_reason") for b in data["benchmarks"] if b["extra_info"].get("latency_disturbed")]
        if not busy:
            return data
    pytest.skip(f"the machine stayed busy in {JUDGED_TRIES} runs, so no latency could be judged: {busy[0]}")


def test_latency_and_size_thresholds_and_fractions(project: pytest.Pytester) -> None:
    data = judged_suite(project, "a.json")  # HEAD: the same run, edited
    for bench in data["benchmarks"]:
        if bench["extra_info"]["precision"] == "int8-dynamic":
            slower(bench["extra_info"], 1.5)  # HEAD's int8 got 50% slower relative to FP32
            bench["extra_info"]["size_mb"] *= 1.02
    (project.path / "b.json").write_text(json.dumps(data))
    result = compare("a.json", "b.json", "--fail-on", "latency=0.1", "--fail-on", "size=1%", cwd=project.path)
    assert result.returncode == 1
    assert "REGRESSION int8-dynamic (cpu): latency ratio to FP32" in result.stdout
    assert "(+50.0%, 95% CI [+50.0%, +50.0%] > 10.0%)" in result.stdout  # every paired sample 1.5x its BASE ratio
    assert "(+2.0% > 1.0%)" in result.stdout
    assert compare("a.json", "b.json", "--fail-on", "latency=60%", "--fail-on", "size=0.05", cwd=project.path).returncode == 0


def slower(info: dict, factor: float, samples: float | None = None) -> None:
    """A benchmark's paired latency ``factor`` times slower, each paired sample's by ``samples`` (default the same)."""
    info["latency_ratio"] *= factor
    info["latency_sample_ratios"] = {k: v * (samples or factor) for k, v in info["latency_sample_ratios"].items()}


def test_latency_is_judged_on_the_interval_over_the_rounds(project: pytest.Pytester) -> None:
    """Per-sample ratios decide, with their interval; rounds that disagree, or a busy machine, are not judged."""
    data = judged_suite(project, "a.json")

    def edited(name: str, change: Any) -> str:
        copy = json.loads(json.dumps(data))
        for bench in copy["benchmarks"]:
            if bench["extra_info"]["precision"] == "int8-dynamic":
                change(bench["extra_info"])
        (project.path / name).write_text(json.dumps(copy))
        return name

    info = next(b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["precision"] == "int8-dynamic")
    assert info["latency_pairs_wanted"] >= 6
    assert len(info["latency_sample_ratios"]) == info["latency_pairs"]
    # the ratio moved 50% but no paired sample did: the point estimate alone would fail, the interval does not
    moved = edited("moved.json", lambda i: slower(i, 1.5, samples=1.0))
    assert compare("a.json", moved, "--fail-on", "latency=10%", cwd=project.path).returncode == 0
    # HEAD's two rounds 15% slower on every sample: caught; BASE's rounds 30% apart: not judged, and said so
    slow = edited("slow.json", lambda i: slower(i, 1.15))
    caught = compare("a.json,a.json", f"{slow},{slow}", "--fail-on", "latency=10%", cwd=project.path)
    assert caught.returncode == 1, caught.stdout
    assert "(+1 more rounds)" in caught.stdout
    varied = edited("varied.json", lambda i: slower(i, 1.3))
    unsure = compare(f"a.json,{varied}", f"{slow},{slow}", "--fail-on", "latency=10%", cwd=project.path)
    assert unsure.returncode == 0, unsure.stdout
    assert "int8-dynamic: its latency ratio moved 30.0% between the rounds of BASE" in unsure.stdout
    busy = edited("busy.json", lambda i: i.update(latency_disturbed=True))
    skipped = compare("a.json", busy, "--fail-on", "latency=10%", cwd=project.path)
    assert "int8-dynamic: the machine was busy while HEAD timed it: latency is shown, not judged" in skipped.stdout


def test_other_hardware_class_is_noted_and_its_latency_not_judged(project: pytest.Pytester) -> None:
    run_suite(project, "a.json")
    data = json.loads((project.path / "a.json").read_text())
    before = data["benchmarks"][0]["extra_info"]["hardware_class"]
    assert before.startswith("cpu | ")
    assert " threads" in before
    for bench in data["benchmarks"]:
        bench["extra_info"]["hardware_class"] = "cpu | Other CPU | x86_64 | torch AVX2 | avx2 | 2 threads"
        if "latency_ratio" in bench["extra_info"]:
            bench["extra_info"]["latency_ratio"] *= 2  # int8's speed-up differs twofold between CPU generations
    (project.path / "b.json").write_text(json.dumps(data))
    result = compare("a.json", "b.json", "--fail-on", "latency=0.1", cwd=project.path)
    assert result.returncode == 0, result.stdout
    assert (
        f"note: different hardware classes (BASE {before}, HEAD cpu | Other CPU | x86_64 | torch AVX2 | avx2 | 2 threads)" in result.stdout
    )
    assert "latency is shown, not judged" in result.stdout
    same = compare("a.json", "a.json", "--fail-on", "latency=0.1", cwd=project.path)
    assert "different hardware classes" not in same.stdout


def test_saved_runs_by_id_and_pytest_benchmark_compare_still_reads_them(project: pytest.Pytester) -> None:
    for _ in range(2):
        project.runpytest("--precision=fp32,int8", "--benchmark-autosave", "--benchmark-storage=file://./.benchmarks")
    saved = sorted((project.path / ".benchmarks").rglob("*.json"))
    assert [p.name[:4] for p in saved] == ["0001", "0002"]
    by_id = compare("0001", "0002", cwd=project.path)
    assert by_id.returncode == 0, by_id.stderr
    theirs = subprocess.run(
        [Path(sys.executable).parent / "pytest-benchmark", "--storage", "file://./.benchmarks", "compare", "0001", "0002"],
        cwd=project.path,
        capture_output=True,
        text=True,
    )
    assert theirs.returncode == 0, theirs.stderr
    assert "test_latency[int8-dynamic]" in theirs.stdout
    assert "test_latency[fp32]" in theirs.stdout


def quantreg_run(model: str, precision: str = "fp32") -> dict[str, object]:
    info = {"precision": precision, "model": model, "dataset_sha256": "d" * 64, "device": "cpu", "accuracy": 0.9, "size_mb": 1.0}
    return {"name": f"test_accuracy[{precision}]", "stats": {"median": 0.01}, "extra_info": info}


@pytest.mark.parametrize(
    ("base", "head", "args", "message"),
    [
        (None, None, [], "'missing.json' is neither a file nor a run saved under .benchmarks"),
        ("{not json", None, [], "base.json is not readable JSON"),
        ({"runs": []}, None, [], "base.json is not a pytest-benchmark JSON file (no 'benchmarks' list)"),
        ({"benchmarks": [{"name": "test_sum", "stats": {}}]}, None, [], "base.json holds no quantreg benchmarks"),
        (
            {"benchmarks": [quantreg_run("model-a")]},
            {"benchmarks": [quantreg_run("model-b")]},
            [],
            "no common benchmarks: BASE has model-a on cpu (fp32), HEAD has model-b on cpu (fp32)",
        ),
        ({"benchmarks": [quantreg_run("m")]}, {"benchmarks": [quantreg_run("m")]}, ["--fail-on", "speed=1"], "--fail-on 'speed=1'"),
        ({"benchmarks": [quantreg_run("m")]}, {"benchmarks": [quantreg_run("m")]}, ["--fail-on", "size=-1%"], "not a non-negative number"),
    ],
)
def test_bad_input_exits_2_with_the_reason(tmp_path: Path, base: object, head: object, args: list[str], message: str) -> None:
    names = []
    for name, content in (("base.json", base), ("head.json", head or {"benchmarks": [quantreg_run("m")]})):
        if content is not None:
            (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        names.append(name if content is not None else "missing.json")
    result = compare(*names, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_of_other_precisions_and_machines_are_reported_not_compared(tmp_path: Path) -> None:
    base = {"machine_info": {"node": "ci-1"}, "benchmarks": [quantreg_run("m"), quantreg_run("m", "fp16")]}
    head = {"machine_info": {"node": "ci-2"}, "benchmarks": [quantreg_run("m"), quantreg_run("m", "int8-dynamic")]}
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "head.json").write_text(json.dumps(head))
    result = compare("base.json", "head.json", cwd=tmp_path)
    assert result.returncode == 0
    assert "note: different machines (BASE ci-1 / ?, HEAD ci-2 / ?): absolute latencies are shown, not judged" in result.stdout
    assert "note: fp16 (cpu, m) is only in BASE: not compared" in result.stdout
    assert "note: int8-dynamic (cpu, m) is only in HEAD: not compared" in result.stdout


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True)


def test_the_ci_recipe_on_two_commits(project: pytest.Pytester) -> None:
    """The workflow's step, quantreg compare-commits, on a clean and a broken commit."""
    git(project.path, "init", "-q")
    git(project.path, "add", "-A")
    git(project.path, "commit", "-qm", "clean")
    (project.path / "conftest.py").write_text(MINE.format(broken=True))
    git(project.path, "commit", "-qam", "new recipe")

    def recipe(*args: str, gates: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pytest_quantreg", "compare-commits", *args, "--", "--precision=fp32,mine", *gates]
        return subprocess.run([*command, "-p", "no:cacheprovider"], cwd=project.path, capture_output=True, text=True)

    broken = recipe("HEAD~1", "HEAD")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "REGRESSION mine (cpu): accuracy 100.00% -> 0.00%" in broken.stdout
    summary = (project.path / "quantreg-compare" / "compare.md").read_text()
    assert "**1 regression(s)**" in summary
    clean = recipe("--rounds", "2", "HEAD~1", "HEAD~1")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no regression" in clean.stdout
    assert "(+1 more rounds)" in clean.stdout
    order = [line.split(" (")[0] for line in clean.stderr.splitlines() if line.startswith("quantreg: pytest on ")]
    assert order == ["quantreg: pytest on base", "quantreg: pytest on head"] * 2  # alternated: drift between runs falls on both sides
    assert sorted(p.name for p in (project.path / "quantreg-compare").glob("*-?.json")) == [
        "base-1.json",
        "base-2.json",
        "head-1.json",
        "head-2.json",
    ]
    # head fails its own gate and is no worse than base: compare finds nothing, the job still fails
    gated = recipe("HEAD", "HEAD", gates=("--quantreg-max-drop=mine=1",))
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert "no regression" in gated.stdout
    assert "quantreg: FAILED: pytest on head (HEAD) exited with 1: its own gates failed, whatever the comparison says" in gated.stdout
    bad = recipe("--rounds", "0", "HEAD~1", "HEAD")
    assert bad.returncode == 2
    assert "quantreg: error: --rounds must be 1 or more, got 0" in bad.stderr
    assert recipe("HEAD~1", "no-such-commit").returncode == 2
    workflow = (REPO / ".github" / "workflows" / "quantreg-compare.yml").read_text()
    assert "quantreg compare-commits" in workflow
    assert "quantreg-compare/compare.md" in workflow


def test_report_writes_markdown_and_charts(project: pytest.Pytester) -> None:
    pytest.importorskip("matplotlib")
    assert_verdicts(project.runpytest("--precision=fp32,int8", "--quantreg-report=out"), passed=4)
    report = (project.path / "out" / "report.md").read_text()
    assert report.startswith("# Quantization Comparison Summary: tiny-model")
    assert "| int8-dynamic | " in report
    header = next(line for line in report.splitlines() if line.startswith("| precision |"))
    assert header.replace("\\|", "").count("|") == 12  # 11 columns: a "|" inside a name is escaped
    for chart in ("tradeoff.png", "drop.png", "size.png", "latency.png"):
        assert f"![{chart[:-4]}]({chart})" in report
        data = (project.path / "out" / chart).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 5000


def test_report_without_matplotlib_says_what_to_install(project: pytest.Pytester) -> None:
    blocker = project.mkdir("blocker") / "matplotlib"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is broken here')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--precision=fp32", "--quantreg-report=out", "-p", "no:cacheprovider"],
        cwd=project.path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--quantreg-report needs matplotlib, which fails to load (ImportError: matplotlib is broken here); " in result.stderr
    assert "install it with pip install 'pytest-quantreg[report]'" in result.stderr
    assert "Traceback" not in result.stderr
