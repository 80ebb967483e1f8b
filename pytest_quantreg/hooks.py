"""Hook specifications other plugins and conftest.py files implement."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_quantreg.precisions import Registry


def pytest_quantreg_precisions(registry: Registry) -> None:
    """Register custom precisions, e.g. from a conftest.py next to your tests::

        def pytest_quantreg_precisions(registry):
            registry.register("int8-mine", build=my_build, devices=["cpu"],
                              max_drop=2.0, max_latency_ratio={"cpu": 1.5},
                              max_flip_rate=10.0, max_kl=0.1)

    ``build`` receives a :class:`~pytest_quantreg.precisions.BuildContext` (``ctx.load(**kwargs)``
    loads the FP32 folder on ``ctx.device``) and returns the model to test: a torch module, or any
    object called like one (``model(**encoding).logits``) with a ``device`` and a ``size_mb()``, such
    as :class:`pytest_quantreg.backends.ort.OnnxClassifier`. ``compilable=True`` also offers
    ``NAME+compile``. Gates left out are not applied by default (``max_drop`` defaults to 1.0 point).
    """
