"""Optional test requirements: a missing tool skips the test on a developer's machine, and fails
it in CI (``CI`` set), where `make test` installs everything and a silent skip would hide a gap."""

from __future__ import annotations

import os

import pytest


def unavailable(reason: str):
    """Skip (locally) or fail (in CI) the calling test because ``reason``."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: a skip here would hide a missing install step)")
    pytest.skip(reason)
