"""Errors raised for user mistakes: each names the problem and the fix."""

from __future__ import annotations


class QuantregError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
