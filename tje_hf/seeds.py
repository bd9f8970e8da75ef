"""Seeds derived from names: a problem's sampling, a task's shuffles and its generated problems
depend on (run seed, problem id, step), never on batch composition or order. Torch-free."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 32-bit seed from any parts, e.g. ``derive_seed(run_seed, problem_id, step)``."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")
