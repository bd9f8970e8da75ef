"""Optional test requirements: a missing tool skips the test under a plain ``pytest``, and fails it
when ``CI`` is set, as ``make test`` (what CI runs) sets it: that target installs everything, so a
silent skip there would hide a gap."""

from __future__ import annotations

import os

import pytest


def unavailable(reason: str):
    """Skip (locally) or fail (in CI) the calling test because ``reason``."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: a skip here would hide a missing install step)")
    pytest.skip(reason)
