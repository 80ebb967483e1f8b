"""Loading local Hugging Face sequence classifiers quietly, offline, and measuring them."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from pytest_quantreg.backends.base import Noise
from pytest_quantreg.errors import QuantregError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MB = 2**20
COMPILED = "quantreg_compiled"  # set on a torch module whose forward runs under torch.compile


def is_compiled(model: Any) -> bool:
    """Whether ``model`` runs under ``torch.compile``: it compiles anew for each input shape it has not seen."""
    return bool(getattr(model, COMPILED, False))


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Hold back the named loggers' messages below ERROR for the duration."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# What the libraries say that says nothing about the user's model: torch's pytree registry while a model
# loads, and what each backend declares (its Backend.noise, added by the registry with add_noise).
_NOISE = [Noise(loggers=("torch.utils._pytree",))]


def add_noise(noise: Noise) -> None:
    """Filter ``noise`` too from now on: the built-in backends' is added when the registry is imported."""
    if noise not in _NOISE:
        _NOISE.append(noise)


def held_back_loggers() -> tuple[str, ...]:
    """The loggers held back below ERROR while libraries import and transformers loads a model."""
    return tuple(name for noise in _NOISE for name in noise.loggers)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (and what the quantization libraries it
    imports say) for the duration."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), quiet_loggers(*held_back_loggers()):
            warnings.filterwarnings("ignore", module=r"transformers\.")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def known_noise_filtered() -> Iterator[None]:
    """Filter only the known third-party warnings and log records (see :func:`add_noise`) for the duration."""
    dropped = [(logging.getLogger(name), _Drop(pattern)) for noise in _NOISE for name, pattern in noise.log_records]
    for logger, drop in dropped:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for noise in _NOISE:
                for message, category in noise.warnings:
                    warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, drop in dropped:
            logger.removeFilter(drop)


class _Drop(logging.Filter):
    """Drops the records whose message matches ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


TRUST_FLAG = "--quantreg-trust-remote-code"


FRAMEWORK_WEIGHTS = (("tf_model*.h5", "TensorFlow"), ("flax_model*.msgpack", "Flax"))


def check_model_dir(path: Path, *, trust_remote_code: bool = False, classifier: bool = True) -> dict[str, Any]:
    """Fail with the fix when ``path`` is not a loadable (``classifier``: sequence classifier) folder
    or would run code of its own without ``trust_remote_code``; return its config.json."""
    if not path.is_dir():
        raise QuantregError(f"model folder {path} does not exist; pass a local folder written by save_pretrained")
    if not (path / "config.json").is_file():
        raise QuantregError(f"model folder {path} has no config.json; save the model there with save_pretrained")
    if not any(path.glob("*.safetensors")):
        framework = next((name for pattern, name in FRAMEWORK_WEIGHTS if any(path.glob(pattern))), None)
        if framework is not None:
            flag = "from_tf" if framework == "TensorFlow" else "from_flax"
            raise QuantregError(
                f"model folder {path} holds {framework} weights only, which transformers 5 cannot load; convert them once "
                f"where {framework} and transformers 4 are installed: `AutoModelForSequenceClassification.from_pretrained(path, "
                f"{flag}=True).save_pretrained(path, safe_serialization=True)`, then run again"
            )
        raise QuantregError(
            f"model folder {path} has no .safetensors weights; save it with "
            "`model.save_pretrained(path, safe_serialization=True)` (pickled .bin weights are not loaded)"
        )
    if not any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")):
        raise QuantregError(f"model folder {path} has no tokenizer files; save the tokenizer there with `tokenizer.save_pretrained(path)`")
    config = read_config(path)
    if config.get("auto_map") and not trust_remote_code:
        raise QuantregError(
            f"model folder {path} ships Python code of its own (auto_map: {', '.join(sorted(config['auto_map']))}), "
            f"which pytest-quantreg never runs unless asked; read that code, then pass {TRUST_FLAG} "
            "(or set quantreg_trust_remote_code = true in the ini file)"
        )
    archs = config.get("architectures") or []
    if classifier and archs and not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise QuantregError(
            f"model in {path} is a {', '.join(map(str, archs))}, not a sequence classifier; "
            "pass a folder saved from an AutoModelForSequenceClassification"
        )
    return config


def read_config(path: Path) -> dict[str, Any]:
    """The model folder's config.json as a dict, or a ``QuantregError`` naming the problem."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QuantregError(f"cannot read {config_file}: {exc}; pass a folder written by save_pretrained") from None
    if not isinstance(config, dict):
        raise QuantregError(f"{config_file} is not a JSON object; pass a folder written by save_pretrained")
    return config


def label_names(path: Path) -> tuple[str, ...]:
    """A model folder's label names by id, from its config.json (``LABEL_i`` when it names none)."""
    config = read_config(path)
    id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}
    return tuple(str(id2label[str(i)]) for i in range(len(id2label)))


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path``, loaded without any network access."""
    from transformers import AutoTokenizer

    check_model_dir(path, trust_remote_code=trust_remote_code, classifier=False)
    with quiet_transformers():
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise QuantregError(f"cannot load the tokenizer in {path}: {exc}") from None


def load_classifier(path: Path, new_head: bool = False, trust_remote_code: bool = False, **kwargs: Any) -> PreTrainedModel:
    """A sequence classifier from ``path``, in eval mode, loaded offline from safetensors.

    ``new_head`` allows a bare encoder and gives it a freshly initialised classification head.
    The folder's own code (``auto_map``) runs only with ``trust_remote_code``.
    """
    from transformers import AutoModelForSequenceClassification

    check_model_dir(path, trust_remote_code=trust_remote_code, classifier=not new_head)
    with quiet_transformers():
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
            )
        except (OSError, ValueError) as exc:
            raise QuantregError(f"cannot load the model in {path}: {exc}") from None
    model.eval()
    return model


def device_of(model: Any) -> torch.device:
    """Where ``model`` runs: a torch module's first parameter's device, else a Classifier's own ``device``."""
    import torch

    if isinstance(model, torch.nn.Module):
        parameter = next(model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")
    return torch.device(model.device)


def model_size_mb(model: Any) -> float:
    """A model's size in MB of 2**20 bytes: a torch module's serialized state_dict, else a Classifier's
    own ``size_mb()`` (the size of the file it runs)."""
    import torch

    if isinstance(model, torch.nn.Module):
        return state_dict_size_mb(model)
    return float(model.size_mb())


def state_dict_size_mb(model: torch.nn.Module) -> float:
    """Size of the serialized state_dict (torch.save) in MB of 2**20 bytes: the seed's definition
    (quantized tensor subclasses serialize as their int8 data and scales)."""
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
