"""Hook specifications other plugins and conftest.py files implement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from pytest_quantreg.backends.registry import Registry


def pytest_quantreg_precisions(registry: Registry) -> None:
    """Register custom precisions, e.g. from a conftest.py next to your tests::

        def pytest_quantreg_precisions(registry):
            registry.register("int8-mine", build=my_build, devices=["cpu"],
                              max_drop=2.0, max_latency_ratio={"cpu": 1.5},
                              max_flip_rate=10.0, max_kl=0.1)

    ``build`` receives a :class:`~pytest_quantreg.BuildContext` (``ctx.load(**kwargs)`` loads the FP32
    folder on ``ctx.device``) and returns the model to test: a torch module, or a
    :class:`~pytest_quantreg.backends.base.Classifier` (called like one, ``model(**encoding).logits``,
    with a ``device``, ``size_mb()``, ``kept_in_fp32()`` and ``dequantized_weights()``); anything else
    fails its tests saying what it lacks. ``compilable=True`` also offers
    ``NAME+compile``. Gates left out are not applied by default (``max_drop`` defaults to 1.0 point).
    """


def pytest_quantreg_update_extra_info(config: pytest.Config, precision: str, extra_info: dict[str, Any]) -> None:
    """Change or add to the ``extra_info`` of a timed quantreg benchmark before pytest-benchmark stores it
    (in the way of pytest-benchmark's ``pytest_benchmark_update_json``), e.g.::

        def pytest_quantreg_update_extra_info(config, precision, extra_info):
            extra_info["runner_pool"] = os.environ.get("RUNNER_POOL", "?")

    ``precision`` is the measurement's label (``extra_info["precision"]``).
    """
