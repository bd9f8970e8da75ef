"""Tasks: problems, prompts and graders. ``load_task(cfg)`` is the one entry point.

=================  ===========================================================================
name               source
=================  ===========================================================================
``arith``          built in, generated from ``TaskConfig.seed`` (``size`` problems of
                   ``digits``-digit operands); offline, for demos and tests
``aime24``         ``HuggingFaceH4/aime_2024``, split train (30 problems)
``aime25``         ``opencompass/AIME2025``, configs AIME2025-I + AIME2025-II, split test (30)
``gpqa_diamond``   ``Idavidrein/gpqa``, config gpqa_diamond, split train (198; gated, HF_TOKEN)
``local``          ``TaskConfig.path``: a JSONL, CSV or parquet file with a column map
=================  ===========================================================================

Hub tasks load through ``datasets.load_dataset``, so the Hub cache, ``HF_TOKEN`` and
``HF_DATASETS_OFFLINE`` behave as usual; ``TaskConfig.path`` replaces the Hub id (a mirror, a
local directory laid out like the Hub repo, or one JSONL, CSV or parquet file), ``subset`` the
config and ``split`` the split. A Hub dataset that cannot be fetched (offline, no network, gated
without ``HF_TOKEN``) is a one-line :class:`TaskError` that says so.
``TaskConfig.limit`` keeps the first N problems.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..config import TaskConfig
from .aime import load_aime24, load_aime25
from .arith import load_arith
from .base import Problem, Task, TaskError
from .gpqa import load_gpqa_diamond
from .local import load_local

LOADERS: dict[str, Callable[[TaskConfig], Task]] = {
    "arith": load_arith,
    "aime24": load_aime24,
    "aime25": load_aime25,
    "gpqa_diamond": load_gpqa_diamond,
    "local": load_local,
}
TASK_NAMES = tuple(LOADERS)


def load_task(cfg: TaskConfig) -> Task:
    """The task ``cfg.name`` names, with at most ``cfg.limit`` problems (the first ones).

    Example::

        >>> from tje_hf.config import TaskConfig
        >>> task = load_task(TaskConfig(name="arith", size=4, seed=1))
        >>> len(task.problems), task.problems[0].answer_type
        (4, 'integer')

    Raises :class:`TaskError` for an unknown name (listing the known ones), a bad ``limit``, or
    a dataset, file or column that cannot be found.
    """
    loader = LOADERS.get(cfg.name)
    if loader is None:
        raise TaskError(f"task.name = {cfg.name!r}: unknown task (known: {', '.join(TASK_NAMES)})")
    if cfg.limit is not None and cfg.limit < 1:
        raise TaskError(f"task.limit = {cfg.limit!r}: must be >= 1 (or null for all problems)")
    task = loader(cfg)
    if cfg.limit is not None:
        task = dataclasses.replace(task, problems=task.problems[: cfg.limit])
    ids = [p.id for p in task.problems]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise TaskError(f"task {cfg.name!r}: problem id {duplicate!r} occurs more than once")
    return task


__all__ = ["LOADERS", "TASK_NAMES", "Problem", "Task", "TaskError", "load_task"]
