"""pytest-xdist: each worker sends its ledger to the controller, which reports the whole run.

Workers run the tests; the controller prints the summary table and writes the report files, so
``pytest -n 2`` shows the same table as a serial run and no two processes write the same file.
"""

from __future__ import annotations

import pytest

KEY = "quantreg"


def is_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker."""
    return hasattr(config, "workerinput")
