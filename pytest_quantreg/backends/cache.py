"""Built models that take a while to make (ONNX exports and quantized files, OpenVINO IRs), cached
in the example's cache folder: keyed by the model's weights, the build's settings and the library
versions, written once under a file lock into a temporary path and renamed into place, so that
parallel workers and interrupted runs never see a half-written model."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.measure.hardware import version


def key(settings: dict[str, Any], libraries: Iterable[str]) -> str:
    """A short hash of ``settings`` and the installed versions of ``libraries``."""
    versions = {name: version(name) or "not installed" for name in libraries}
    return hashlib.sha256(json.dumps({**settings, "versions": versions}, sort_keys=True).encode()).hexdigest()[:16]


def weights_digest(model_dir: Path) -> str:
    """The digest of the folder's weights, read once per process for the same files (the fallback search rebuilds often)."""
    files = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(model_dir.glob("*.safetensors")))
    return _digest(files)


@functools.lru_cache(maxsize=8)
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    from pytest_quantreg.fileio import file_sha256

    return hashlib.sha256("".join(file_sha256(Path(name)) for name, _, _ in files).encode()).hexdigest()


def cached(folder_name: str, name: str, write: Callable[[Path], None]) -> Path:
    """``<cache>/<folder_name>/<name>`` (a file or a folder): reused, or written once by ``write(temporary
    path)`` under a file lock and renamed into place."""
    from filelock import FileLock

    from pytest_quantreg.measure.example import CACHE_ENV, cache_dir

    folder = cache_dir() / folder_name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QuantregError(f"cannot create the cache folder {folder}: {exc.strerror}; set {CACHE_ENV} to a writable folder") from None
    target = folder / name
    if target.exists():
        return target
    with FileLock(str(folder / f"{name}.lock")):
        if target.exists():
            return target  # another process wrote it while we waited
        tmp = folder / f".tmp-{os.getpid()}-{name}"
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return target
