"""AIME 2024 and AIME 2025: competition maths with an integer answer in 0-999.

aime24
    dataset ``HuggingFaceH4/aime_2024``, split ``train``, 30 rows (AIME 2024 I and II), stored
    as ``data/train-00000-of-00001.parquet``. Fields ``id`` (int), ``problem``, ``solution``,
    ``answer`` (string), ``url``, ``year``. Example::

        {"id": 60, "problem": "Every morning Aya goes for a $9$-kilometer-long walk ...",
         "answer": "204", "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1",
         "year": "2024", "solution": "..."}

    Problem ids come from the url, ``"2024-I-1"``, and fall back to ``"aime24-<id>"``.

aime25
    dataset ``opencompass/AIME2025``, configs ``AIME2025-I`` and ``AIME2025-II``, split ``test``,
    15 rows each, stored as ``aime2025-I.jsonl`` / ``aime2025-II.jsonl``. Fields ``question``,
    ``answer``. Example::

        {"question": "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b$.",
         "answer": "70"}

    Both configs are concatenated (I then II); ids are ``"2025-I-1"`` ... ``"2025-II-15"``.
    ``TaskConfig.subset`` picks one config.

``TaskConfig.path`` may also be a local copy: a directory laid out like the Hub repo, or one
JSONL, CSV or parquet file (aime25: one file holds one config, named by ``TaskConfig.subset``).

The prompt is the problem followed by "Please reason step by step, and put your final answer
within \\boxed{}."; answers are graded by :func:`tje_hf.tasks.grading.grade_aime`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import TaskConfig
from .base import Problem, Task, TaskError, boxed_prompt, load_rows, require_columns
from .grading import Grade, grade_aime, integer_of

AIME24_HUB_ID = "HuggingFaceH4/aime_2024"
AIME25_HUB_ID = "opencompass/AIME2025"
AIME25_CONFIGS = ("AIME2025-I", "AIME2025-II")
_URL_ID = re.compile(r"(\d{4})_AIME_(I{1,2})_Problems/Problem_(\d+)")


def grade(problem: Problem, text: str) -> Grade:
    return grade_aime(text, problem.gold)


def _gold(value: object, where: str) -> str:
    parsed = integer_of(str(value))
    if parsed is None or not 0 <= parsed <= 999:
        raise TaskError(f"{where}: answer = {value!r}: expected an integer in 0-999")
    return str(parsed)


def aime24_problems(rows: list[dict], source: str) -> list[Problem]:
    """Problems from ``HuggingFaceH4/aime_2024`` rows (fields id, problem, answer, url, year)."""
    require_columns(rows, ("problem", "answer"), source)
    problems = []
    for i, row in enumerate(rows):
        match = _URL_ID.search(str(row.get("url") or ""))
        pid = f"{match.group(1)}-{match.group(2)}-{match.group(3)}" if match else f"aime24-{row.get('id', i)}"
        meta = {key: row[key] for key in ("id", "url", "year") if row.get(key) is not None}
        problems.append(Problem(id=pid, question=boxed_prompt(row["problem"]),
                                gold=_gold(row["answer"], f"{source} row {i}"),
                                answer_type="integer", metadata=meta))
    return problems


def aime25_problems(rows: list[dict], config: str, source: str) -> list[Problem]:
    """Problems from one ``opencompass/AIME2025`` config (fields question, answer)."""
    require_columns(rows, ("question", "answer"), f"{source} config {config}")
    part = config.rsplit("-", 1)[-1]  # "I" or "II"
    return [Problem(id=f"2025-{part}-{i + 1}", question=boxed_prompt(row["question"]),
                    gold=_gold(row["answer"], f"{source} config {config} row {i}"),
                    answer_type="integer", metadata={"config": config, "index": i + 1})
            for i, row in enumerate(rows)]


def load_aime24(cfg: TaskConfig) -> Task:
    path = cfg.path or AIME24_HUB_ID
    split = cfg.split or "train"
    rows = load_rows(cfg.name, path, cfg.subset, split, hub_id=AIME24_HUB_ID)
    return Task(name=cfg.name, problems=aime24_problems(rows, path), grader=grade,
                source=f"{path}:{split}")


def load_aime25(cfg: TaskConfig) -> Task:
    path = cfg.path or AIME25_HUB_ID
    split = cfg.split or "test"
    configs = (cfg.subset,) if cfg.subset else AIME25_CONFIGS
    if not cfg.subset and Path(path).expanduser().is_file():
        raise TaskError(f"task {cfg.name!r}: task.path = {path!r} is one file, but {AIME25_HUB_ID} has "
                        f"two configs ({', '.join(AIME25_CONFIGS)}): point task.path at a directory laid out "
                        "like the Hub repo (aime2025-I.jsonl, aime2025-II.jsonl and its README.md), or set "
                        "task.subset to the config the file holds")
    problems = []
    for config in configs:
        rows = load_rows(cfg.name, path, config, split, hub_id=AIME25_HUB_ID)
        problems.extend(aime25_problems(rows, config, path))
    return Task(name=cfg.name, problems=problems, grader=grade, source=f"{path}:{'+'.join(configs)}:{split}")
