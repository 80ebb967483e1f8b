"""Deprecated: this module's types moved to :mod:`pytest_quantreg.backends.base` and
:mod:`pytest_quantreg.backends.registry`; import them from :mod:`pytest_quantreg`. Kept for one release."""

import warnings

from pytest_quantreg.backends.base import BuildContext, Builder, Precision
from pytest_quantreg.backends.registry import ALIASES_BY_DEVICE, DEFAULT_PRECISIONS, Registry

__all__ = ["ALIASES_BY_DEVICE", "DEFAULT_PRECISIONS", "BuildContext", "Builder", "Precision", "Registry"]

warnings.warn(
    "pytest_quantreg.precisions is deprecated and goes in the next release: "
    "import BuildContext, Precision and Registry from pytest_quantreg",
    DeprecationWarning,
    stacklevel=2,
)
