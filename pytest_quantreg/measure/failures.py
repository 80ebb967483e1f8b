"""Exceptions raised inside a library (torch, transformers or a backend's), turned into one message.

Quantized kernels differ by CPU and GPU, and some crash on hardware their authors did not test.
Such a crash is not a bug in the user's test: it fails that precision's tests with the library, its
version, the exception, the hardware and what to do; the other precisions keep running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from pytest_quantreg.backends.base import KnownFailure
from pytest_quantreg.measure.hardware import version


class LibraryFailure(Exception):
    """A library raised while a precision was built or run; ``str()`` is the whole message."""


def failing_library(tb: TracebackType | None, libraries: Sequence[str]) -> str | None:
    """Which of ``libraries`` raised (the innermost frame's), or None when the innermost frame is
    the user's or this plugin's code: a bug there keeps its traceback."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return None
    top = str(last.tb_frame.f_globals.get("__name__", "")).split(".")[0]
    return top if top in libraries else None


@contextlib.contextmanager
def library_failures(
    precision: str, stage: str, hardware: Callable[[], str], libraries: Sequence[str], known: Sequence[KnownFailure] = ()
) -> Iterator[None]:
    """Turn an exception raised inside one of ``libraries`` into a :class:`LibraryFailure` (chained to it),
    with the fix of the ``known`` failure it matches; anything else passes through unchanged. ``stage``
    is "building" or "running"."""
    try:
        yield
    except Exception as exc:
        library = failing_library(exc.__traceback__, libraries)
        if library is None:
            raise
        raise LibraryFailure(describe(precision, stage, library, exc, hardware(), known)) from exc


def describe(precision: str, stage: str, library: str, exc: BaseException, hardware: str, known: Sequence[KnownFailure] = ()) -> str:
    """The one message of a library failure."""
    found = version(library) or "(version unknown)"
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    hint = next((k.fix for k in known if k.library == library and k.text in str(exc)), None)
    todo = hint or f"leave {precision} out of --precision, or try another {library} release"
    return (
        f"{precision} failed inside {library} {found} while {stage} the model: {text}\n"
        f"  hardware: {hardware}\n"
        f"  what to do: {todo}; -v or --tb=long shows {library}'s traceback"
    )
