"""Exceptions raised inside torch, transformers, bitsandbytes or accelerate, turned into one message.

Quantized kernels differ by CPU and GPU, and some crash on hardware their authors did not test.
Such a crash is not a bug in the user's test: it fails that precision's tests with the library, its
version, the exception, the hardware and what to do; the other precisions keep running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType

from pytest_quantreg.measure.hardware import version

LIBRARIES = ("bitsandbytes", "accelerate", "transformers", "torch")

# (library, text in the exception) -> the known workaround
KNOWN = (
    (
        "bitsandbytes",
        "N must be divisible by block_n",
        "bitsandbytes' 4-bit path for CPUs with AVX-512 BF16 needs layers with a multiple of 32 output rows; "
        "keep the smaller ones in FP32 with --quantreg-keep-fp32 (the default, head, keeps the output head)",
    ),
    (
        "bitsandbytes",
        "is invalid for input of size",
        "bitsandbytes' 4-bit path for CPUs with AVX-512 BF16 needs layers with at least 64 (the block size) inputs; "
        "keep the smaller ones in FP32 with --quantreg-keep-fp32",
    ),
)


class LibraryFailure(Exception):
    """A library raised while a precision was built or run; ``str()`` is the whole message."""


def failing_library(tb: TracebackType | None) -> str | None:
    """The library whose code raised (the innermost frame's), or None when the innermost frame is
    the user's or this plugin's code: a bug there keeps its traceback."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return None
    top = str(last.tb_frame.f_globals.get("__name__", "")).split(".")[0]
    return top if top in LIBRARIES else None


@contextlib.contextmanager
def library_failures(precision: str, stage: str, hardware: Callable[[], str]) -> Iterator[None]:
    """Turn an exception raised inside a library into a :class:`LibraryFailure` (chained to it);
    anything else passes through unchanged. ``stage`` is "building" or "running"."""
    try:
        yield
    except Exception as exc:
        library = failing_library(exc.__traceback__)
        if library is None:
            raise
        raise LibraryFailure(describe(precision, stage, library, exc, hardware())) from exc


def describe(precision: str, stage: str, library: str, exc: BaseException, hardware: str) -> str:
    """The one message of a library failure."""
    found = version(library) or "(version unknown)"
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    hint = next((fix for lib, needle, fix in KNOWN if lib == library and needle in str(exc)), None)
    todo = hint or f"leave {precision} out of --precision, or try another {library} release"
    return (
        f"{precision} failed inside {library} {found} while {stage} the model: {text}\n"
        f"  hardware: {hardware}\n"
        f"  what to do: {todo}; -v or --tb=long shows {library}'s traceback"
    )
