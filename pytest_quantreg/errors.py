"""Errors raised for user mistakes: each names the problem and the fix."""

from __future__ import annotations


class QuantregError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class NoCalibrationTexts(QuantregError):
    """The data set leaves no texts to calibrate the static precisions on: their tests are skipped with
    the ways out (it is a property of the data, not a regression)."""
