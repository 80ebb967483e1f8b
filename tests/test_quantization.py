"""Regression tests of the embedded example: the file to copy for your own model.

Each test runs once per precision selected with ``--precision``. The latency test comes first:
its timed pass (pytest-benchmark, one round per sample) also yields the predictions that the
accuracy test then reuses, so each precision is measured once.
"""


def test_latency(quantreg):
    """Median per-sample latency over FP32's, measured in this run."""
    quantreg.check_latency()


def test_accuracy(quantreg):
    """Accuracy drop against the stored FP32 baseline, in percentage points."""
    quantreg.check_accuracy()
