"""Local task files: your own problems in a JSONL, CSV or parquet file.

source ``TaskConfig.path`` (``.jsonl``/``.json``, ``.csv`` or ``.parquet``), read with
``datasets.load_dataset("json"|"csv"|"parquet", data_files=path, split=TaskConfig.split or "train")``.
``TaskConfig.columns`` maps the fields ``id``, ``question``, ``answer`` and optionally ``choices``
to column names; an unmapped field uses the column of its own name. ``id`` may be absent (the row
number is used); ``choices`` is a list column, or a JSON list in a string (CSV). The answer type
comes from ``TaskConfig.answer_type``. Example JSONL line with ``columns: {question: problem}``::

    {"id": "q7", "problem": "How many primes are below 20?", "answer": "8"}

Prompts: integer and text answers get "Please reason step by step, and put your final answer
within \\boxed{}."; choice answers with a ``choices`` column get the lettered options and the
"Answer: $LETTER" format, and the gold answer may be the letter or the text of the right option;
without a ``choices`` column the question must list its options and the answer be a letter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import TaskConfig
from .base import FILE_BUILDERS, Problem, Task, TaskError, boxed_prompt, choice_prompt, require_columns
from .grading import LETTERS, Grade, grade_choice, grade_integer, grade_text, integer_of

FIELDS = ("id", "question", "answer", "choices")
CHOICE_INSTRUCTION = ("Answer with the letter of the correct option. The last line of your response should be of "
                      "the following format: 'Answer: $LETTER' (without quotes).")


def grade(problem: Problem, text: str) -> Grade:
    if problem.answer_type == "integer":
        return grade_integer(text, problem.gold)
    if problem.answer_type == "choice":
        return grade_choice(text, problem.gold, len(problem.choices or ()) or 4, problem.choices)
    return grade_text(text, problem.gold)


def column_map(columns: dict[str, str]) -> dict[str, str]:
    """``TaskConfig.columns`` completed with same-name defaults; unknown fields are errors."""
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise TaskError(f"task.columns: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    return {name: columns.get(name, name) for name in FIELDS}


def _text(value: Any) -> str:
    """A cell as text: missing (None, NaN) is ""; a float column (integers with a gap) gives
    "42", not "42.0"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _choices(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TaskError(f"{where}: choices = {value!r}: expected a list or a JSON list string") from None
    if not isinstance(value, Sequence) or isinstance(value, str) or not 2 <= len(value) <= len(LETTERS):
        raise TaskError(f"{where}: choices = {value!r}: expected a list of 2 to {len(LETTERS)} options")
    return tuple(str(v).strip() for v in value)


def _choice_gold(answer: str, choices: tuple[str, ...] | None, where: str) -> str:
    letters = LETTERS[: len(choices) if choices else 4]
    if answer.upper() in letters and len(answer) == 1:
        return answer.upper()
    if choices and answer in choices:
        return letters[choices.index(answer)]
    raise TaskError(f"{where}: answer = {answer!r}: expected a letter in {letters}"
                    + (" or the text of one of the choices" if choices else ""))


def local_problems(rows: list[dict[str, Any]], columns: dict[str, str], answer_type: str,
                   source: str) -> list[Problem]:
    """Problems from file rows; ``columns`` maps our field names to the file's column names."""
    cols = column_map(columns)
    needed = [cols["question"], cols["answer"]]
    needed += [cols[name] for name in ("id", "choices") if name in columns]  # asked for explicitly
    require_columns(rows, needed, source)
    has_id = bool(rows) and cols["id"] in rows[0]
    has_choices = bool(rows) and cols["choices"] in rows[0]
    problems = []
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        pid = _text(row[cols["id"]]) if has_id else str(i)
        question, answer = _text(row[cols["question"]]), _text(row[cols["answer"]])
        if not question or not answer:
            raise TaskError(f"{where}: empty {'question' if not question else 'answer'} "
                            f"(column {cols['question' if not question else 'answer']!r})")
        choices = _choices(row[cols["choices"]], where) if has_choices else None
        if answer_type == "integer":
            value = integer_of(answer)
            if value is None:
                raise TaskError(f"{where}: answer = {answer!r}: answer_type 'integer' needs an integer")
            gold, prompt = str(value), boxed_prompt(question)
        elif answer_type == "choice":
            gold = _choice_gold(answer, choices, where)
            prompt = choice_prompt(question, choices) if choices else f"{question.strip()}\n\n{CHOICE_INSTRUCTION}"
        elif answer_type == "text":
            gold, prompt = answer, boxed_prompt(question)
        else:
            raise TaskError(f"task.answer_type = {answer_type!r}: must be 'integer', 'choice' or 'text'")
        problems.append(Problem(id=pid, question=prompt, gold=gold, answer_type=answer_type, choices=choices,
                                metadata={"row": i}))
    return problems


def _bad_json_line(path: Path) -> str | None:
    """``"FILE line N: why"`` for the first line of a JSON-lines file that is not valid UTF-8, not
    valid JSON, or holds a lone surrogate escape (``"\\ud800"``: valid JSON, but not a character,
    which Arrow refuses); None when every line is fine (the file is one JSON document, say)."""
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            text = raw.decode("utf-8")
            if text.strip():
                json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
        except UnicodeDecodeError as exc:
            return f"{path} line {number}: not valid UTF-8 ({exc.reason} at byte {exc.start + 1})"
        except UnicodeEncodeError as exc:
            return (f"{path} line {number}: a lone surrogate ({exc.object[exc.start:exc.end]!r}) in a string; it is "
                    "not a character: remove it or pair it")
        except json.JSONDecodeError as exc:
            return f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
    return None


def _root_cause(exc: BaseException) -> str:
    """The message of the innermost exception ``exc`` was raised from (the parser's own words)."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


def load_local(cfg: TaskConfig) -> Task:
    if not cfg.path:
        raise TaskError("task 'local' needs task.path: a .jsonl, .csv or .parquet file")
    path = Path(cfg.path).expanduser()
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise TaskError(f"task.path = {cfg.path!r}: unsupported file type {path.suffix!r} "
                        f"(supported: {', '.join(FILE_BUILDERS)})")
    if not path.is_file():
        raise TaskError(f"task.path = {cfg.path!r}: no such file")
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    split = cfg.split or "train"
    try:
        rows = [dict(row) for row in load_dataset(builder, data_files=str(path), split=split)]
    except (ValueError, DatasetGenerationError) as exc:
        # datasets says "An error occurred while generating the dataset": name the line and the cause
        where = (_bad_json_line(path) if builder == "json" else None) or (
            f"cannot read it as {builder} (split {split!r}): {_root_cause(exc)}")
        raise TaskError(f"task.path = {cfg.path!r}: {where}") from exc
    except StopIteration:  # datasets' JSON reader on an empty file
        rows = []
    if not rows:
        raise TaskError(f"task.path = {cfg.path!r}: the file has no rows")
    return Task(name=cfg.name, problems=local_problems(rows, cfg.columns, cfg.answer_type, str(path)),
                grader=grade, source=str(path))
