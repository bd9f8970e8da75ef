"""The task data model (:class:`Problem`, :class:`Task`) and the shared Hub-loading helper.

A task is a list of problems plus a grader. Each task module (``arith``, ``aime``, ``gpqa``,
``local``) builds its problems from a :class:`~tje_hf.config.TaskConfig`; prompts are complete
user turns (format instruction included), so a runner only wraps them in a chat message. What
does not live here: answer extraction (``tje_hf.tasks.grading``) and anything about models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


# A local copy of a Hub task's data may be one of these files (read with the builder named) instead
# of a directory laid out like the Hub repo.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def local_copy_hint(hub_id: str, *, gated: bool = False) -> str:
    """What to do when a Hub task cannot be fetched: where to point ``task.path`` (and, for a gated
    dataset, the token it needs)."""
    hint = (f"set task.path=<local copy>: a JSONL, CSV or parquet file, or a directory laid out like the "
            f"Hub repo {hub_id}")
    if gated:
        hint += f"; {hub_id} is gated: to download it, accept its terms on the Hub and set HF_TOKEN"
    return hint


def is_local_path(path: str) -> bool:
    """``path`` names something on disk rather than a Hub id: it exists, starts like a path
    (``/``, ``.``, ``~``) or ends in a data file's suffix."""
    return (Path(path).expanduser().exists() or path.startswith(("/", ".", "~"))
            or Path(path).suffix.lower() in FILE_BUILDERS)


def load_rows(task: str, path: str, config: str | None, split: str, *, hub_id: str | None = None,
              gated: bool = False) -> list[dict[str, Any]]:
    """Rows of a dataset through ``datasets.load_dataset``.

    ``path`` is a Hub id, a local directory laid out like the Hub repo (a ``README.md`` whose YAML
    ``configs:`` header names the data files, or the ``data/<split>-*`` convention), or one JSONL,
    CSV or parquet file (read whole; ``config`` and ``split`` do not apply). Hub caching,
    ``HF_TOKEN`` for gated sets and ``HF_DATASETS_OFFLINE`` all apply. Every failure is re-raised
    as a one-line :class:`TaskError` naming the task, the dataset, config and split; one on the Hub
    (offline, no network, gated) says how to use a local copy instead (``hub_id``: the task's Hub
    repo, ``gated``: it needs ``HF_TOKEN``).
    """
    if is_local_path(path):
        return _local_rows(task, path, config, split)
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    where = f"task {task!r}: dataset {path!r} (config {config!r}, split {split!r})"
    hint = local_copy_hint(hub_id or path, gated=gated)
    try:
        dataset = load_dataset(path, config, split=split)
    except DatasetNotFoundError as exc:
        raise TaskError(f"{where} not found or not accessible ({_reason(exc)}); a gated dataset needs its "
                        f"terms accepted on the Hub and a token in HF_TOKEN; or {hint}") from exc
    except Exception as exc:  # offline, no network, a bad config or split: one line, not a traceback
        raise TaskError(f"{where} cannot be loaded{_unreachable(exc)}: {_reason(exc)}; {hint}") from exc
    return [dict(row) for row in dataset]


def _local_rows(task: str, path: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a local copy: a directory laid out like the Hub repo, or one data file."""
    from datasets import load_dataset

    local = Path(path).expanduser()
    if not local.exists():
        raise TaskError(f"task {task!r}: task.path = {path!r}: no such file or directory (a JSONL, CSV or "
                        "parquet file, or a directory laid out like the Hub repo)")
    builder = FILE_BUILDERS.get(local.suffix.lower()) if local.is_file() else None
    if local.is_file() and builder is None:
        raise TaskError(f"task {task!r}: task.path = {path!r}: unsupported file type {local.suffix!r} "
                        f"(supported: {', '.join(FILE_BUILDERS)}, or a directory laid out like the Hub repo)")
    try:
        if builder is not None:
            dataset = load_dataset(builder, data_files=str(local), split="train")
        else:
            dataset = load_dataset(str(local), config, split=split)
    except Exception as exc:  # a missing config or split, an unreadable file: one line
        what = f"file {path!r}" if builder else f"directory {path!r} (config {config!r}, split {split!r})"
        raise TaskError(f"task {task!r}: {what} cannot be loaded: {_reason(exc)}") from exc
    return [dict(row) for row in dataset]


def _unreachable(exc: BaseException) -> str:
    """Why the Hub could not be asked, when that is the failure (datasets raises ConnectionError)."""
    if not isinstance(exc, ConnectionError):
        return ""
    import datasets.config

    if datasets.config.HF_HUB_OFFLINE:
        return " (offline mode is on and it is not in the cache)"
    return " (the Hub cannot be reached)"


def _reason(exc: BaseException) -> str:
    """An exception as one line: its message with whitespace collapsed, its type when it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


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
