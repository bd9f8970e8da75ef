"""The task data model (:class:`Problem`, :class:`Task`) and the shared Hub-loading helper.

A task is a list of problems plus a grader. Each task module (``arith``, ``aime``, ``gpqa``,
``local``) builds its problems from a :class:`~tje_hf.config.TaskConfig`; prompts are complete
user turns (format instruction included), so a runner only wraps them in a chat message. What
does not live here: answer extraction (``tje_hf.tasks.grading``) and anything about models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import TaskError
from .grading import LETTERS, Grade

AnswerType = Literal["integer", "choice", "text"]
ANSWER_TYPES = ("integer", "choice", "text")



@dataclass(frozen=True)
class Problem:
    """One problem, ready to prompt.

    ``question`` is the whole user turn, format instruction included ("... put your final answer
    within \\boxed{}." or "Answer: $LETTER"). ``gold`` is the reference answer as text: an integer
    ("42", "-7"), an option letter ("C") or free text. ``choices`` are the option texts in the
    order the prompt lists them (choice tasks only). ``metadata`` holds source fields worth
    keeping in a record (url, year, original option order, ...).
    """

    id: str
    question: str
    gold: str
    answer_type: AnswerType = "integer"
    choices: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise TaskError(f"Problem.id = {self.id!r}: must be a non-empty string")
        if self.answer_type not in ANSWER_TYPES:
            raise TaskError(f"Problem {self.id}: answer_type = {self.answer_type!r}: must be one of {ANSWER_TYPES}")
        if self.choices is not None and not isinstance(self.choices, tuple):
            raise TaskError(f"Problem {self.id}: choices must be a tuple, got {type(self.choices).__name__}")
        if self.answer_type == "choice":
            n = len(self.choices) if self.choices else 4
            if self.gold not in LETTERS[:n]:
                raise TaskError(f"Problem {self.id}: gold = {self.gold!r}: a choice answer must be one of "
                                f"{list(LETTERS[:n])}")


@dataclass(frozen=True)
class Task:
    """A named list of problems and the grader for their answers.

    ``source`` says where the problems came from (Hub id, config and split, or a file path), for
    the run records. ``grader(problem, text)`` is a function from :mod:`tje_hf.tasks.grading`.
    """

    name: str
    problems: list[Problem]
    grader: Callable[[Problem, str], Grade]
    source: str = ""

    def grade(self, problem: Problem, text: str) -> Grade:
        """Grade generated ``text`` (the answer segment, or the raw text) for ``problem``."""
        return self.grader(problem, text)

    def __len__(self) -> int:
        return len(self.problems)


def load_rows(task: str, path: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a dataset through ``datasets.load_dataset(path, config, split=split)``.

    ``path`` is a Hub id or a local directory laid out like the Hub repo (a ``README.md`` whose
    YAML ``configs:`` header names the data files), so Hub caching, ``HF_TOKEN`` for gated sets
    and ``HF_DATASETS_OFFLINE`` all apply. Errors are re-raised as :class:`TaskError` naming the
    task, the dataset, config and split.
    """
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    where = f"task {task!r}: dataset {path!r} (config {config!r}, split {split!r})"
    try:
        dataset = load_dataset(path, config, split=split)
    except DatasetNotFoundError as exc:
        raise TaskError(f"{where} not found or not accessible; a gated dataset needs its terms accepted "
                        f"on the Hub and a token in HF_TOKEN ({exc})") from exc
    except (ValueError, FileNotFoundError, ConnectionError) as exc:
        raise TaskError(f"{where} cannot be loaded: {exc}") from exc
    return [dict(row) for row in dataset]


def require_columns(rows: Sequence[dict[str, Any]], needed: Sequence[str], where: str) -> None:
    """Raise :class:`TaskError` naming the first of ``needed`` missing from the rows' columns."""
    available = list(rows[0]) if rows else []
    for name in needed:
        if name not in available:
            raise TaskError(f"{where}: no column {name!r} (available columns: {', '.join(available) or 'none'})")


def choice_prompt(question: str, choices: Sequence[str]) -> str:
    """A multiple-choice user turn: the question, the lettered options and the answer format.

    OpenAI simple-evals' ``QUERY_TEMPLATE_MULTICHOICE`` (the format gpt-oss was evaluated with):
    an explicit last-line format makes the letter extractable without guessing.
    """
    letters = LETTERS[: len(choices)]
    options = "\n".join(f"{letter}) {text}" for letter, text in zip(letters, choices, strict=True))
    return ("Answer the following multiple choice question. The last line of your response should be of "
            f"the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of {letters}. "
            f"Think step by step before answering.\n\n{question.strip()}\n\n{options}")


# Qwen's and DeepSeek's recommended math instruction: Math-Verify and our extractor read the box.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def boxed_prompt(question: str) -> str:
    """A math user turn: the question followed by :data:`BOXED_INSTRUCTION`."""
    return f"{question.strip()}\n\n{BOXED_INSTRUCTION}"
