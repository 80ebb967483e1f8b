"""Writes that never leave a half-written file: temporary file in the same folder, then rename."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; the old file stays intact if anything fails.

    The temporary file's name carries this process's id, so that an interruption anywhere, even
    between its creation and the return of ``mkstemp`` (a Ctrl-C a loaded machine delivered there),
    leaves none of this process's temporary files behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _mode_of(path))  # mkstemp's 0600 would make a report or baseline private
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        for leftover in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
            leftover.unlink(missing_ok=True)
        raise


def _mode_of(path: Path) -> int:
    """The mode a rewrite of ``path`` keeps: the file's own, or what ``open()`` would give a new file."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as stable, diff-friendly JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def check_writable(folder: Path, option: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there, before any work is done;
    ``QuantregError`` naming ``option`` otherwise."""
    from pytest_quantreg.errors import QuantregError

    if folder.exists() and not folder.is_dir():
        raise QuantregError(f"{option}: cannot write into {folder}, a file, not a folder; choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".quantreg-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise QuantregError(f"{option}: cannot write into {folder} ({exc.strerror}); make it writable or choose another folder") from None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
