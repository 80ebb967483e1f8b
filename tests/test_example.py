"""The example model: real builds in fresh processes (smoke recipe), cache, interruptions, concurrency.

The full recipe is built once per cache (the regression suite needs it anyway); the determinism,
interruption and concurrency checks use the same code with ``train_limit`` so they take seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pytest_quantreg.fileio import file_sha256
from pytest_quantreg.measure.example import CACHE_ENV, MANIFEST, example_model, read_manifest

BUILD = (
    "import dataclasses; from pytest_quantreg.measure.example import default_recipe, example_model; "
    "recipe = dataclasses.replace(default_recipe(), epochs=1, train_limit={limit}); "
    "print(example_model(recipe=recipe, progress={progress}))"
)


def run_build(cache: Path, limit: int = 32, progress: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, CACHE_ENV: str(cache)}
    code = BUILD.format(limit=limit, progress=progress)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> Path:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return Path(out.strip().splitlines()[-1])


def test_full_example_reaches_the_seed_accuracy() -> None:
    folder = example_model(progress=False)
    manifest = read_manifest(folder)
    assert float(manifest["heldout_accuracy"]) >= 0.75  # the seed's FP32 accuracy was 75.00%
    assert manifest["heldout_samples"] == 387
    assert manifest["weights_sha256"] == file_sha256(folder / "model.safetensors")
    assert (folder / "tokenizer.json").is_file()
    assert {"torch", "transformers", "python"} <= set(manifest["versions"])


def test_builds_in_fresh_processes_are_identical(tmp_path: Path) -> None:
    first = finish(run_build(tmp_path / "a"))
    second = finish(run_build(tmp_path / "b"))
    assert first.name == second.name  # same recipe, same cache key
    assert file_sha256(first / "model.safetensors") == file_sha256(second / "model.safetensors")


def test_cache_is_reused(tmp_path: Path) -> None:
    folder = finish(run_build(tmp_path))
    stamp = (folder / MANIFEST).stat().st_mtime_ns
    again = finish(run_build(tmp_path, progress=True))
    assert again == folder
    assert (folder / MANIFEST).stat().st_mtime_ns == stamp


def test_cli_reuses_the_cache_and_prints_the_folder_last() -> None:
    folder = example_model(progress=False)
    command = [sys.executable, "-m", "pytest_quantreg", "build-example", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == str(folder)
    assert lines[0].startswith("held-out accuracy: ")
    assert f"weights sha256: {read_manifest(folder)['weights_sha256']}" in lines


def test_cli_usage_errors() -> None:
    bad = subprocess.run([sys.executable, "-m", "pytest_quantreg", "build-examples"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "invalid choice: 'build-examples'" in bad.stderr


def test_corrupt_cached_model_is_rebuilt_not_used(tmp_path: Path) -> None:
    folder = finish(run_build(tmp_path))
    good = file_sha256(folder / "model.safetensors")
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert finish(run_build(tmp_path)) == folder
    assert file_sha256(folder / "model.safetensors") == good


def test_interrupted_build_leaves_nothing_that_is_used(tmp_path: Path) -> None:
    process = run_build(tmp_path, limit=400)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # inside the build now
    process.send_signal(signal.SIGKILL)
    process.communicate()  # reaps it and closes its pipes
    assert not list(tmp_path.glob("example-*/"))  # nothing in place
    stale = tmp_path / ".tmp-example-000000000000-1"
    stale.mkdir()
    (stale / MANIFEST).write_text(json.dumps({"weights_sha256": "x"}))
    folder = finish(run_build(tmp_path))
    assert read_manifest(folder)["train_samples"] == 32


def test_concurrent_builds_build_once(tmp_path: Path) -> None:
    first, second = run_build(tmp_path, progress=True), run_build(tmp_path, progress=True)
    results = [first.communicate(timeout=300), second.communicate(timeout=300)]
    assert first.returncode == second.returncode == 0, results
    folders = {Path(out.strip().splitlines()[-1]) for out, _ in results}
    assert len(folders) == 1
    builds = sum("building example model" in err for _, err in results)
    assert builds == 1, "the second process should wait for the first and reuse its model"
    assert not list(tmp_path.glob(".tmp-example-*"))


def test_cache_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, CACHE_ENV: str(blocker / "cache")}
    result = subprocess.run([sys.executable, "-m", "pytest_quantreg", "build-example"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert f"cannot create the cache folder {blocker / 'cache'}" in result.stderr
    assert "set QUANTREG_CACHE_DIR to a writable folder" in result.stderr
    assert "Traceback" not in result.stderr
