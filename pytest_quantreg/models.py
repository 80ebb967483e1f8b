"""Loading local Hugging Face sequence classifiers quietly, offline, and measuring them."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from pytest_quantreg.errors import QuantregError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MB = 2**20


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for the duration."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"transformers\.")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# Warnings the libraries give on every build or call that say nothing about the user's model.
KNOWN_NOISE: tuple[tuple[str, type[Warning]], ...] = (
    (r".*quantize_dynamic.*deprecated", DeprecationWarning),  # torch: quantize_dynamic -> torchao
    (r".*torch\.ao\.quantization.*deprecated", DeprecationWarning),
    (r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),  # torch's quantized modules
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel", UserWarning),
    (r"MatMul8bitLt: inputs will be cast", UserWarning),  # bitsandbytes, on every int8 call
)


@contextlib.contextmanager
def known_noise_filtered() -> Iterator[None]:
    """Filter only the named third-party warnings (see ``KNOWN_NOISE``) for the duration."""
    with warnings.catch_warnings():
        for message, category in KNOWN_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def check_model_dir(path: Path) -> None:
    """Fail with the fix when ``path`` is not a loadable classifier folder."""
    if not path.is_dir():
        raise QuantregError(f"model folder {path} does not exist; pass a local folder written by save_pretrained")
    if not (path / "config.json").is_file():
        raise QuantregError(f"model folder {path} has no config.json; save the model there with save_pretrained")
    if not any(path.glob("*.safetensors")):
        raise QuantregError(
            f"model folder {path} has no .safetensors weights; save it with "
            "`model.save_pretrained(path, safe_serialization=True)` (pickled .bin weights are not loaded)"
        )
    if not any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")):
        raise QuantregError(f"model folder {path} has no tokenizer files; save the tokenizer there with `tokenizer.save_pretrained(path)`")


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path``, loaded without any network access."""
    from transformers import AutoTokenizer

    check_model_dir(path)
    with quiet_transformers():
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise QuantregError(f"cannot load the tokenizer in {path}: {exc}") from None


def load_classifier(path: Path, new_head: bool = False, **kwargs: Any) -> PreTrainedModel:
    """A sequence classifier from ``path``, in eval mode, loaded offline from safetensors.

    ``new_head`` allows a bare encoder and gives it a freshly initialised classification head.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    check_model_dir(path)
    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise QuantregError(f"cannot read the model config in {path}: {exc}") from None
        archs = config.architectures or []
        if archs and not new_head and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise QuantregError(
                f"model in {path} is a {', '.join(archs)}, not a sequence classifier; "
                "pass a folder saved from an AutoModelForSequenceClassification"
            )
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True, use_safetensors=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise QuantregError(f"cannot load the model in {path}: {exc}") from None
    model.eval()
    return model


def state_dict_size_mb(model: torch.nn.Module) -> float:
    """Size of the serialized state_dict (torch.save) in MB of 2**20 bytes: the seed's definition."""
    import torch

    buffer = _CountingWriter()
    torch.save(model.state_dict(), cast("IO[bytes]", buffer))
    return buffer.size / MB


class _CountingWriter(io.RawIOBase):
    """A file-like sink that only counts bytes, so sizing a model allocates nothing."""

    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n


logging.getLogger("transformers").addHandler(logging.NullHandler())
