"""Task loaders on local copies laid out like the Hub repos, local files, and the built-in task.

The Hub fixtures under ``tests/data/hub`` mirror the real repos' layouts (``README.md`` with a
``configs:`` header, or the ``data/train-*.parquet`` convention) so the real loaders run through
``datasets.load_dataset`` with ``TaskConfig.path`` pointing at them; nothing touches the network.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tje_hf.config import TaskConfig
from tje_hf.tasks import TASK_NAMES, Problem, TaskError, load_task
from tje_hf.tasks.gpqa import option_order
from tje_hf.tasks.grading import LETTERS

DATA = Path(__file__).parent / "data"
GPQA_DIR = DATA / "hub" / "gpqa"
AIME25_DIR = DATA / "hub" / "AIME2025"


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Keep the Arrow caches ``load_dataset`` writes out of the user's ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_datasets")


@pytest.fixture(scope="module")
def aime24_dir(tmp_path_factory) -> Path:
    """``HuggingFaceH4/aime_2024`` layout: one parquet shard under data/, split from its name."""
    root = tmp_path_factory.mktemp("aime_2024")
    (root / "data").mkdir()
    rows = [
        {"id": 60, "problem": "Every morning Aya goes for a $9$-kilometer-long walk ...", "solution": "...",
         "answer": "204", "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1",
         "year": "2024"},
        {"id": 61, "problem": "Fixture: compute $3 \\cdot 4$.", "solution": "...", "answer": "012",
         "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_II_Problems/Problem_15", "year": "2024"},
        {"id": 62, "problem": "Fixture without a url.", "solution": "...", "answer": "7", "url": None, "year": "2024"},
    ]
    pd.DataFrame(rows).to_parquet(root / "data" / "train-00000-of-00001.parquet", index=False)
    (root / "README.md").write_text("# Fixture laid out like HuggingFaceH4/aime_2024\n")
    return root


def gpqa_rows() -> list[dict]:
    return pd.read_csv(GPQA_DIR / "gpqa_diamond.csv").to_dict("records")


# --------------------------------------------------------------------------------------------
# Dispatch


def test_unknown_task_lists_known_names():
    with pytest.raises(TaskError, match="unknown task") as info:
        load_task(TaskConfig(name="aime26"))
    for name in TASK_NAMES:
        assert name in str(info.value)
    assert set(TASK_NAMES) == {"arith", "aime24", "aime25", "gpqa_diamond", "local"}


@pytest.mark.parametrize("limit", [0, -3])
def test_bad_limit_is_an_error(limit):
    with pytest.raises(TaskError, match="task.limit"):
        load_task(TaskConfig(name="arith", limit=limit))


# --------------------------------------------------------------------------------------------
# Built-in arithmetic


def test_arith_is_deterministic_and_sized():
    a = load_task(TaskConfig(name="arith", size=25, seed=3))
    b = load_task(TaskConfig(name="arith", size=25, seed=3))
    assert len(a.problems) == 25
    assert [(p.id, p.question, p.gold) for p in a.problems] == [(p.id, p.question, p.gold) for p in b.problems]
    assert len({p.id for p in a.problems}) == 25
    other = load_task(TaskConfig(name="arith", size=25, seed=4))
    assert [p.question for p in other.problems] != [p.question for p in a.problems]


def test_arith_does_not_depend_on_global_rng():
    random.seed(1)
    a = load_task(TaskConfig(name="arith", size=10))
    random.seed(2)
    b = load_task(TaskConfig(name="arith", size=10))
    assert [p.question for p in a.problems] == [p.question for p in b.problems]


@pytest.mark.parametrize("digits, low, high", [(1, 1, 9), (2, 10, 99), (3, 100, 999)])
def test_arith_operands_have_the_right_digits(digits, low, high):
    task = load_task(TaskConfig(name="arith", size=200, digits=digits))
    for p in task.problems:
        a, b = p.metadata["a"], p.metadata["b"]
        assert low <= a <= high and low <= b <= high
        assert p.gold == str(a + b)
        assert p.question == f"What is {a} + {b}? Answer with just the number."
        assert p.answer_type == "integer"
    # Every operand value shows up: the draw covers the range, not a corner of it.
    if digits == 1:
        assert {p.metadata["a"] for p in task.problems} == set(range(1, 10))


def test_arith_limit_takes_the_first_problems():
    full = load_task(TaskConfig(name="arith", size=20))
    head = load_task(TaskConfig(name="arith", size=20, limit=5))
    assert head.problems == full.problems[:5]


def test_arith_grades_through_the_task():
    task = load_task(TaskConfig(name="arith", size=3))
    p = task.problems[0]
    assert task.grade(p, f"{p.metadata['a']} + {p.metadata['b']} = {p.gold}").correct is True
    assert task.grade(p, "I don't know.").reason == "unparseable"


@pytest.mark.parametrize("field, value", [("size", 0), ("digits", 0), ("digits", 10)])
def test_arith_bad_options_name_the_field(field, value):
    with pytest.raises(TaskError, match=f"task.{field}"):
        load_task(TaskConfig(name="arith", **{field: value}))


# --------------------------------------------------------------------------------------------
# AIME


def test_aime24_loads_the_hub_layout(aime24_dir):
    task = load_task(TaskConfig(name="aime24", path=str(aime24_dir)))
    assert [p.id for p in task.problems] == ["2024-I-1", "2024-II-15", "aime24-62"]
    assert [p.gold for p in task.problems] == ["204", "12", "7"]
    first = task.problems[0]
    assert first.question.startswith("Every morning Aya")
    assert first.question.endswith("put your final answer within \\boxed{}.")
    assert first.metadata["url"].endswith("Problem_1") and first.answer_type == "integer"
    assert task.grade(first, "<think>maybe 17</think>So \\boxed{204}.").correct is True


def test_aime25_concatenates_both_configs():
    task = load_task(TaskConfig(name="aime25", path=str(AIME25_DIR)))
    assert [p.id for p in task.problems] == ["2025-I-1", "2025-I-2", "2025-II-1", "2025-II-2", "2025-II-3"]
    assert [p.gold for p in task.problems] == ["70", "42", "8", "0", "999"]
    assert "$17_b$" in task.problems[0].question
    assert task.source.endswith("AIME2025-I+AIME2025-II:test")


def test_aime25_subset_and_limit():
    task = load_task(TaskConfig(name="aime25", path=str(AIME25_DIR), subset="AIME2025-II", limit=2))
    assert [p.id for p in task.problems] == ["2025-II-1", "2025-II-2"]


def test_missing_split_is_a_task_error():
    with pytest.raises(TaskError, match="split 'validation'"):
        load_task(TaskConfig(name="aime25", path=str(AIME25_DIR), split="validation"))


# --------------------------------------------------------------------------------------------
# GPQA


def test_gpqa_gold_letter_points_at_the_correct_answer():
    task = load_task(TaskConfig(name="gpqa_diamond", path=str(GPQA_DIR)))
    rows = gpqa_rows()
    assert len(task.problems) == len(rows) == 5
    for p, row in zip(task.problems, rows, strict=True):
        assert p.id == row["Record ID"]
        assert p.answer_type == "choice" and len(p.choices) == 4
        assert p.choices[LETTERS.index(p.gold)] == str(row["Correct Answer"]).strip()
        assert sorted(p.choices) == sorted(str(row[c]).strip() for c in
                                           ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                            "Incorrect Answer 3"))
        for letter, choice in zip("ABCD", p.choices, strict=True):
            assert f"\n{letter}) {choice}" in p.question
        assert "'Answer: $LETTER'" in p.question
        assert task.grade(p, f"Reasoning...\nAnswer: {p.gold}").correct is True


def test_gpqa_shuffle_is_deterministic_and_seed_dependent():
    def orders(seed):
        task = load_task(TaskConfig(name="gpqa_diamond", path=str(GPQA_DIR), seed=seed))
        return [p.choices for p in task.problems]

    random.seed(0)
    first = orders(0)
    random.seed(12345)  # the global RNG plays no part
    assert orders(0) == first
    assert orders(1) != first
    # A problem's order does not depend on which other problems were loaded.
    alone = load_task(TaskConfig(name="gpqa_diamond", path=str(GPQA_DIR), limit=1))
    assert alone.problems[0].choices == first[0]


def test_gpqa_gold_positions_are_spread_over_the_letters():
    counts = {i: 0 for i in range(4)}
    for n in range(400):
        counts[option_order(0, f"rec{n}").index(0)] += 1
    assert all(60 <= c <= 140 for c in counts.values()), counts


def test_gpqa_option_text_is_stripped_and_multiline_questions_survive():
    task = load_task(TaskConfig(name="gpqa_diamond", path=str(GPQA_DIR)))
    last = task.problems[-1]
    assert "10^-4 eV" in last.choices and "A question\nover two lines, with a comma?" in last.question


def test_gpqa_subset_selects_another_config():
    task = load_task(TaskConfig(name="gpqa_diamond", path=str(GPQA_DIR), subset="gpqa_main"))
    assert [p.id for p in task.problems] == ["recMain0001"]


def test_gpqa_unknown_config_is_a_task_error():
    with pytest.raises(TaskError, match="gpqa_extended"):
        load_task(TaskConfig(name="gpqa_diamond", path=str(GPQA_DIR), subset="gpqa_extended"))


# --------------------------------------------------------------------------------------------
# Hub tasks offline, and local copies of them

OFFLINE_PROBE = """
from tje_hf.config import TaskConfig
from tje_hf.tasks import TaskError, load_task
for name in ("aime24", "aime25", "gpqa_diamond"):
    try:
        load_task(TaskConfig(name=name))
    except TaskError as exc:
        print(name + "\\t" + str(exc))
    else:
        print(name + "\\tloaded")
"""


def test_hub_tasks_offline_without_a_cache_are_one_line_task_errors(tmp_path):
    """Offline, nothing cached (empty HF_HOME and HF_DATASETS_CACHE): each Hub task fails with a
    one-line TaskError that says to set task.path to a local copy (and HF_TOKEN for gated GPQA)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),
               HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"))
    proc = subprocess.run([sys.executable, "-c", OFFLINE_PROBE], env=env, check=False, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    messages = dict(line.split("\t", 1) for line in proc.stdout.splitlines())
    assert set(messages) == {"aime24", "aime25", "gpqa_diamond"}
    for name, hub_id in (("aime24", "HuggingFaceH4/aime_2024"), ("aime25", "opencompass/AIME2025"),
                         ("gpqa_diamond", "Idavidrein/gpqa")):
        message = messages[name]
        assert message.startswith(f"task {name!r}: dataset {hub_id!r}")
        assert "cannot be loaded (offline mode is on and it is not in the cache): " in message
        assert ("set task.path=<local copy>: a JSONL, CSV or parquet file, or a directory laid out like the Hub "
                f"repo {hub_id}") in message
        assert ("HF_TOKEN" in message) == (name == "gpqa_diamond")
    assert "Traceback" not in proc.stderr


def test_aime24_from_one_file(aime24_dir, tmp_path):
    """A local copy may be the data file itself (parquet, or converted to JSONL or CSV)."""
    parquet = aime24_dir / "data" / "train-00000-of-00001.parquet"
    jsonl = tmp_path / "aime_2024.jsonl"
    pd.read_parquet(parquet).to_json(jsonl, orient="records", lines=True)
    csv = tmp_path / "aime_2024.csv"
    pd.read_parquet(parquet).to_csv(csv, index=False)
    expected = [p.id for p in load_task(TaskConfig(name="aime24", path=str(aime24_dir))).problems]
    for path in (parquet, jsonl, csv):
        task = load_task(TaskConfig(name="aime24", path=str(path)))
        assert [p.id for p in task.problems] == expected and [p.gold for p in task.problems] == ["204", "12", "7"]


def test_gpqa_from_its_csv_file():
    task = load_task(TaskConfig(name="gpqa_diamond", path=str(GPQA_DIR / "gpqa_diamond.csv")))
    assert task.problems == load_task(TaskConfig(name="gpqa_diamond", path=str(GPQA_DIR))).problems


def test_aime25_from_one_file_needs_the_subset_it_holds():
    path = str(AIME25_DIR / "aime2025-II.jsonl")
    with pytest.raises(TaskError, match="is one file, but opencompass/AIME2025 has two configs"):
        load_task(TaskConfig(name="aime25", path=path))
    task = load_task(TaskConfig(name="aime25", path=path, subset="AIME2025-II"))
    assert [p.id for p in task.problems] == ["2025-II-1", "2025-II-2", "2025-II-3"]


@pytest.mark.parametrize(("path", "match"), [
    ("/no/such/aime_2024", "no such file or directory"),
    ("./aime_2024.parquet", "no such file or directory"),
    (str(DATA / "hub" / "gpqa" / "README.md"), "unsupported file type '.md'"),
])
def test_a_bad_local_copy_is_a_task_error(path, match):
    with pytest.raises(TaskError, match=match):
        load_task(TaskConfig(name="aime24", path=path))


def test_an_unreadable_local_file_is_a_task_error(tmp_path):
    path = tmp_path / "aime.parquet"
    path.write_text("not parquet")
    with pytest.raises(TaskError, match=r"task 'aime24': file .* cannot be loaded"):
        load_task(TaskConfig(name="aime24", path=str(path)))


# --------------------------------------------------------------------------------------------
# Local files

JSONL_COLUMNS = {"id": "uid", "question": "problem", "answer": "solution"}


def test_local_jsonl_integer_with_column_map():
    task = load_task(TaskConfig(name="local", path=str(DATA / "local" / "problems.jsonl"), columns=JSONL_COLUMNS))
    assert [p.id for p in task.problems] == ["q1", "q2", "q3"]
    assert [p.gold for p in task.problems] == ["8", "-8", "42"]
    assert task.problems[0].question.startswith("How many primes are below 20?")
    assert "\\boxed{}" in task.problems[0].question
    assert task.grade(task.problems[1], "12 - 20 = -8").correct is True


def test_local_jsonl_choice_with_list_column(tmp_path):
    path = tmp_path / "choices.jsonl"  # the first two rows: their answers are option texts
    path.write_text("".join((DATA / "local" / "problems.jsonl").read_text().splitlines(keepends=True)[:2]))
    columns = {**JSONL_COLUMNS, "choices": "options"}
    task = load_task(TaskConfig(name="local", path=str(path), columns=columns, answer_type="choice"))
    # Gold given as option text becomes its letter.
    assert [p.gold for p in task.problems[:2]] == ["B", "A"]
    assert task.problems[0].choices == ("7", "8", "9", "10")
    assert "B) 8" in task.problems[0].question


def test_local_jsonl_with_a_bad_choice_gold_names_the_row():
    columns = {**JSONL_COLUMNS, "choices": "options"}
    with pytest.raises(TaskError, match=r"row 2: answer = '042'"):
        load_task(TaskConfig(name="local", path=str(DATA / "local" / "problems.jsonl"), columns=columns,
                             answer_type="choice"))


def test_local_csv_choices_as_json_strings():
    task = load_task(TaskConfig(name="local", path=str(DATA / "local" / "problems.csv"), answer_type="choice"))
    assert [(p.id, p.gold, p.choices) for p in task.problems] == [
        ("c1", "B", ("Mars", "Jupiter", "Venus")),
        ("c2", "C", ("4", "6", "7")),
    ]
    assert "one of ABC" in task.problems[0].question
    assert task.grade(task.problems[0], "Answer: B").correct is True


def test_local_parquet_text_answers_and_row_ids(tmp_path):
    path = tmp_path / "set.parquet"
    pd.DataFrame({"q": ["Capital of France?", "Derivative of x^2?"], "a": ["Paris", "2x"]}).to_parquet(path)
    task = load_task(TaskConfig(name="local", path=str(path), columns={"question": "q", "answer": "a"},
                                answer_type="text"))
    assert [p.id for p in task.problems] == ["0", "1"]
    assert task.grade(task.problems[0], "The answer is \\boxed{Paris}.").correct is True
    assert task.grade(task.problems[0], "\\boxed{London}").reason == "mismatch"
    assert task.grade(task.problems[1], "\\boxed{2 x}").correct is True


def test_local_missing_column_names_it_and_the_available_ones(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "1+1?", "target": "2"}) + "\n")
    with pytest.raises(TaskError) as info:
        load_task(TaskConfig(name="local", path=str(path), columns={"question": "prompt", "answer": "answer"}))
    message = str(info.value)
    assert "'answer'" in message and "prompt, target" in message and str(path) in message
    assert "\n" not in message


def test_local_explicit_id_column_must_exist():
    with pytest.raises(TaskError, match="no column 'key'"):
        load_task(TaskConfig(name="local", path=str(DATA / "local" / "problems.jsonl"),
                             columns={**JSONL_COLUMNS, "id": "key"}))


def test_local_unknown_field_in_column_map():
    with pytest.raises(TaskError, match="unknown field 'anwser'"):
        load_task(TaskConfig(name="local", path=str(DATA / "local" / "problems.jsonl"), columns={"anwser": "x"}))


@pytest.mark.parametrize("path, match", [(None, "needs task.path"), ("problems.txt", "unsupported file type"),
                                         ("missing.jsonl", "no such file")])
def test_local_path_errors(path, match):
    with pytest.raises(TaskError, match=match):
        load_task(TaskConfig(name="local", path=path))


def test_local_integer_answer_must_be_an_integer(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("question,answer\nWhat?,seven\n")
    with pytest.raises(TaskError, match=r"answer = 'seven'"):
        load_task(TaskConfig(name="local", path=str(path)))


def test_local_csv_with_a_gap_reads_integers_and_reports_the_empty_row(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("question,answer\n1+1?,2\n2+2?,\n")
    with pytest.raises(TaskError, match=r"row 1: empty answer \(column 'answer'\)"):
        load_task(TaskConfig(name="local", path=str(path)))
    path.write_text("question,answer,extra\n1+1?,2,\n2+2?,4,x\n")
    assert [p.gold for p in load_task(TaskConfig(name="local", path=str(path))).problems] == ["2", "4"]


def test_duplicate_ids_are_an_error(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("id,question,answer\na,1+1?,2\na,2+2?,4\n")
    with pytest.raises(TaskError, match="'a' occurs more than once"):
        load_task(TaskConfig(name="local", path=str(path)))


# --------------------------------------------------------------------------------------------
# The data model


def test_problem_validates_choice_gold():
    with pytest.raises(TaskError, match="gold = 'E'"):
        Problem(id="x", question="?", gold="E", answer_type="choice", choices=("a", "b", "c", "d"))
    with pytest.raises(TaskError, match="answer_type"):
        Problem(id="x", question="?", gold="1", answer_type="number")
    p = Problem(id="x", question="?", gold="1", metadata={"k": [1]})
    assert hash(p) == hash(Problem(id="x", question="?", gold="1"))


def test_an_empty_local_task_file_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TaskError, match="the file has no rows"):
        load_task(TaskConfig(name="local", path=str(empty), columns={"question": "q", "answer": "a"}))
