"""Nothing is lost when a write is interrupted: real processes killed mid-write, Ctrl-C, full disks.

Baselines (and every other file the plugin writes) go through ``atomic_write_text``: a temporary
file in the same folder, then a rename. These tests stop real writer processes while a temporary
file exists, i.e. in the middle of a write, and check what a later run would read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.judge import baselines

WRITER = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    from pytest_quantreg.fileio import atomic_write_json

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises here even where the parent ignores it (a background job)
    path = Path(sys.argv[1])
    # two versions of a large baseline-like document, written in turn for ever
    docs = [{"version": v, "predictions": {str(i): {"label": i % 2, "probs": [0.25, 0.75]} for i in range(60000)}} for v in "AB"]
    print("ready", flush=True)
    turn = 0
    while True:
        atomic_write_json(path, docs[turn % 2])
        turn += 1
    """
)


def _interrupt_mid_write(folder: Path, sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Start a writer, wait until a temporary file exists (a write is under way), send ``sig``."""
    path = folder / "baseline.json"
    path.write_text(json.dumps({"version": "old", "predictions": {}}))
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while not list(folder.glob(".baseline.json.*.tmp")):
        assert time.monotonic() < deadline, "the writer never started a write"
    child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def _readable_version(path: Path) -> str:
    document = json.loads(path.read_text(encoding="utf-8"))  # a torn file would not parse
    assert len(document["predictions"]) in (0, 60000)
    return str(document["version"])


@pytest.mark.parametrize("attempt", range(3))
def test_sigkill_mid_write_leaves_a_complete_file(tmp_path: Path, attempt: int) -> None:
    done = _interrupt_mid_write(tmp_path, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    assert _readable_version(tmp_path / "baseline.json") in ("old", "A", "B")
    # the killed write's temporary file is hidden and never read as a baseline
    assert [p.name for p in tmp_path.glob("*.json")] == ["baseline.json"]


@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_mid_write_leaves_no_partial_file(tmp_path: Path, attempt: int) -> None:
    done = _interrupt_mid_write(tmp_path, signal.SIGINT)
    assert "KeyboardInterrupt" in done.stderr
    assert _readable_version(tmp_path / "baseline.json") in ("old", "A", "B")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.json"]  # the temporary file was removed


def _old_and_new(folder: Path) -> tuple[Path, bytes, dict]:
    path = folder / "model__data__n2-seed0-len8__cpu.json"
    path.write_text('{"schema_version": 1, "old": true}\n')
    new = {"schema_version": 1, "predictions": {str(i): {"label": 1, "probs": [0.5, 0.5]} for i in range(20000)}}
    return path, path.read_bytes(), new


def test_file_size_limit_mid_write_fails_cleanly(tmp_path: Path) -> None:
    """A write that the OS refuses half-way (RLIMIT_FSIZE, like a full disk) in a real process."""
    path, old, _ = _old_and_new(tmp_path)
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from pytest_quantreg.judge import baselines
        from pytest_quantreg.errors import QuantregError

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        new = {"schema_version": 1, "predictions": {str(i): {"label": 1, "probs": [0.5, 0.5]} for i in range(20000)}}
        try:
            baselines.write(Path(sys.argv[1]), new)
        except QuantregError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert f"cannot write baseline {path}: File too large; it is left as it was." in done.stdout
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real full disk (needs the right to mount, as root in CI has)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); test_file_size_limit_mid_write_fails_cleanly covers the failed write")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_fails_cleanly_and_keeps_the_old_baseline(tiny_disk: Path) -> None:
    path, old, new = _old_and_new(tiny_disk)
    with pytest.raises(QuantregError, match=r"No space left on device; it is left as it was\. Free space in or make .* writable"):
        baselines.write(path, new)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tiny_disk.iterdir()) == [path.name]


def test_a_written_file_gets_the_mode_open_would_give_it_and_a_rewrite_keeps_its_own(tmp_path: Path) -> None:
    from pytest_quantreg.fileio import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "new")
        assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        (tmp_path / "report.md").chmod(0o640)
        atomic_write_text(tmp_path / "report.md", "again")
        assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
