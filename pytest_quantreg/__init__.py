"""pytest-quantreg: gate quantized transformer classifiers against stored FP32 baselines."""

from pytest_quantreg.backends.base import BuildContext, Precision
from pytest_quantreg.backends.registry import Registry
from pytest_quantreg.errors import QuantregError

__version__ = "0.1.0"
__all__ = ["BuildContext", "Precision", "QuantregError", "Registry", "__version__"]
