"""GPQA Diamond: 198 graduate-level multiple-choice questions in biology, physics and chemistry.

dataset ``Idavidrein/gpqa`` (gated: accept the terms on the Hub and set ``HF_TOKEN``), config
``gpqa_diamond``, split ``train``, stored as ``gpqa_diamond.csv``. Fields used: ``Question``,
``Correct Answer``, ``Incorrect Answer 1`` .. ``Incorrect Answer 3`` and ``Record ID`` (the
problem id; a hash of the question when the column is absent). ``TaskConfig.path`` may name a
local copy instead: ``gpqa_diamond.csv`` itself, or a directory laid out like the Hub repo.
Example (abridged)::

    {"Record ID": "rec...", "Question": "Two quantum states with energies E1 and E2 ...",
     "Correct Answer": "10^-4 eV", "Incorrect Answer 1": "10^-11 eV",
     "Incorrect Answer 2": "10^-8 eV", "Incorrect Answer 3": "10^-9 eV", ...}

The four options are put in an order that depends only on ``(TaskConfig.seed, problem id)``
(:func:`option_order`): reproducible, independent of any global RNG and of which other problems
are loaded, and different for another seed. The prompt lists them as ``A) .. D)`` (OpenAI
simple-evals format, "Answer: $LETTER"); the gold answer is the letter of the correct option.
Graded by :func:`tje_hf.tasks.grading.grade_choice`.
"""

from __future__ import annotations

import hashlib

from ..config import TaskConfig
from ..seeds import derive_seed
from .base import Problem, Task, choice_prompt, load_rows, require_columns
from .grading import LETTERS, Grade, grade_choice

GPQA_HUB_ID = "Idavidrein/gpqa"
GPQA_CONFIG = "gpqa_diamond"
ANSWER_COLUMNS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def grade(problem: Problem, text: str) -> Grade:
    # The option texts let an answer that names an option by its text count ("Answer: 10^-4 eV").
    return grade_choice(text, problem.gold, len(problem.choices or ()) or 4, problem.choices)


def option_order(seed: int, problem_id: str, n: int = 4) -> list[int]:
    """A permutation of ``range(n)`` determined by ``(seed, problem_id)`` alone.

    Each option index gets the key ``derive_seed(seed, problem_id, index)`` (a SHA-256 hash) and
    the options are sorted by key, index breaking ties: unlike ``random.shuffle`` this depends on
    no RNG state and no Python version. Position ``j`` of the prompt shows option
    ``option_order(...)[j]`` (0 is the correct answer).
    """
    return sorted(range(n), key=lambda i: (derive_seed(seed, "gpqa-options", problem_id, i), i))


def gpqa_problems(rows: list[dict], seed: int, source: str) -> list[Problem]:
    """Problems from GPQA rows, options permuted by :func:`option_order`."""
    require_columns(rows, ("Question", *ANSWER_COLUMNS), source)
    problems = []
    for row in rows:
        question = str(row["Question"]).strip()
        pid = str(row.get("Record ID") or "") or "gpqa-" + hashlib.sha256(question.encode()).hexdigest()[:12]
        options = [str(row[col]).strip() for col in ANSWER_COLUMNS]
        order = option_order(seed, pid)
        choices = tuple(options[i] for i in order)
        meta = {"option_order": order}
        for key in ("Subdomain", "High-level domain"):
            if row.get(key) is not None:
                meta[key] = row[key]
        problems.append(Problem(id=pid, question=choice_prompt(question, choices), gold=LETTERS[order.index(0)],
                                answer_type="choice", choices=choices, metadata=meta))
    return problems


def load_gpqa_diamond(cfg: TaskConfig) -> Task:
    path = cfg.path or GPQA_HUB_ID
    config = cfg.subset or GPQA_CONFIG
    split = cfg.split or "train"
    rows = load_rows(cfg.name, path, config, split, hub_id=GPQA_HUB_ID, gated=True)
    return Task(name=cfg.name, problems=gpqa_problems(rows, cfg.seed, f"{path} config {config}"), grader=grade,
                source=f"{path}:{config}:{split}")
