"""A pytest plugin for memory benchmarks: keeps every model the quantreg fixtures build alive until
the session ends, i.e. the run as it would be without the plugin's release of finished models.

    PYTHONPATH=benchmarks pytest -p keep_models ...
"""

from __future__ import annotations

from typing import Any

import pytest

KEPT: list[Any] = []


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    result = yield
    if fixturedef.argname in ("quantreg_model", "quantreg_fp32_model"):
        KEPT.append(result)
    return result
