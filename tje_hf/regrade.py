"""Re-grading a finished run with the current grader, without generating anything again.

``regrade(run_dir)`` loads the run's task (``config.json``'s task section), grades every step's
``answer_text`` of every record again, and appends one line per problem to ``regrades.jsonl``
(``tje_hf.records`` owns the format; ``records.jsonl`` is never rewritten). ``read_records``
applies the newest regrade, keeping the grade the run wrote under ``original_grade``, so every
report uses the newest grade.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import TaskConfig, from_dict
from .errors import ConfigError, RunDirError
from .records import (
    GRADE_KEYS,
    RECORDS,
    append_regrades,
    load_config,
    read_records,
    source_revision,
)


@dataclass
class RegradeSummary:
    """What a regrade changed: per step, problems, accuracy before and after."""

    run_dir: Path
    n_problems: int
    n_changed: int  # step grades whose answer, correct or reason changed
    counts: list[int]
    before: list[float]
    after: list[float]
    grader: str

    def table(self) -> str:
        lines = ["| step | problems | accuracy before | accuracy after |", "|---|---|---|---|"]
        for i, n in enumerate(self.counts):
            lines.append(f"| {i + 1} | {n} | {self.before[i]:.3f} | {self.after[i]:.3f} |")
        return "\n".join(lines)


def grader_version() -> str:
    """The grading code's version: the package version and, in a checkout, its commit."""
    import importlib.metadata as md

    try:
        version = md.version("tje-hf")
    except md.PackageNotFoundError:
        version = "unknown"
    source = source_revision()
    if source is not None:
        version += f"+{source['commit'][:12]}{'-dirty' if source['dirty'] else ''}"
    return version


def _task(run_dir: Path):
    from .tasks import load_task

    cfg = load_config(run_dir)
    try:
        task_cfg = from_dict(TaskConfig, cfg["config"]["task"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise RunDirError(f"{run_dir / 'config.json'}: no usable task section ({exc})") from None
    return load_task(task_cfg)


def _accuracy(records: list[dict], n_steps: int) -> tuple[list[int], list[float]]:
    counts, acc = [], []
    for k in range(n_steps):
        steps = [r["steps"][k] for r in records if len(r["steps"]) > k]
        counts.append(len(steps))
        acc.append(sum(bool(s["correct"]) for s in steps) / max(len(steps), 1))
    return counts, acc


def regrade(run_dir: str | Path, task=None) -> RegradeSummary:
    """Grade every record of ``run_dir`` again with the current grader of its task (or ``task``)
    and append the grades to ``regrades.jsonl``; RunDirError when a record's problem is not in
    the task any more (nothing is written then)."""
    run_dir = Path(run_dir)
    if not (run_dir / RECORDS).is_file():
        raise RunDirError(f"{run_dir}: no {RECORDS}; nothing to regrade")
    task = task or _task(run_dir)
    problems = {str(p.id): p for p in task.problems}
    records = read_records(run_dir)
    missing = [str(r["problem_id"]) for r in records if str(r["problem_id"]) not in problems]
    if missing:
        raise RunDirError(f"{run_dir}: {len(missing)} recorded problems are not in task {task.name!r} any more "
                          f"(first: {missing[0]!r}); nothing regraded")
    grader, now = grader_version(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines, after, changed = [], [], 0
    for rec in records:
        problem = problems[str(rec["problem_id"])]
        steps = []
        for step in rec["steps"]:
            grade = task.grade(problem, step.get("answer_text") or "")
            new = {"step": step["step"], "answer": grade.answer, "correct": grade.correct,
                   "grade_reason": grade.reason}
            changed += any(step.get(k) != new[k] for k in GRADE_KEYS)
            steps.append(new)
        lines.append({"problem_id": rec["problem_id"], "config_hash": rec.get("config_hash"), "grader": grader,
                      "regraded_at": now, "steps": steps})
        after.append({"steps": steps})
    append_regrades(run_dir, lines)
    n_steps = max((len(r["steps"]) for r in records), default=0)
    counts, before = _accuracy(records, n_steps)
    return RegradeSummary(run_dir, len(records), changed, counts, before, _accuracy(after, n_steps)[1], grader)
