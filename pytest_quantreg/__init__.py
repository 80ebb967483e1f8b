"""pytest-quantreg: gate quantized transformer classifiers against stored FP32 baselines."""

from pytest_quantreg.errors import QuantregError
from pytest_quantreg.precisions import BuildContext, Registry

__version__ = "0.1.0"
__all__ = ["BuildContext", "QuantregError", "Registry", "__version__"]
