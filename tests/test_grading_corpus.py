"""The grading corpus (tests/grading_corpus.yaml): every output graded, its extraction and verdict
checked against what a careful reader takes from it, and the grader's accuracy printed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from tje_hf.tasks.grading import (
    Grade,
    grade_aime,
    grade_choice,
    grade_integer,
    grade_text,
    integer_of,
    normalize_text,
)

CORPUS = yaml.safe_load((Path(__file__).parent / "grading_corpus.yaml").read_text(encoding="utf-8"))
ENTRIES = CORPUS["entries"]
STYLES = {"gpt-oss", "qwen3", "llama", "small"}
TASKS = {"aime", "integer", "choice", "text"}


def grade(entry: dict) -> Grade:
    text, gold = entry["output"], entry["gold"]
    if entry["task"] == "aime":
        return grade_aime(text, gold)
    if entry["task"] == "integer":
        return grade_integer(text, gold)
    if entry["task"] == "choice":
        return grade_choice(text, gold, choices=entry.get("choices"))
    return grade_text(text, gold)


def expected_correct(entry: dict) -> bool | None:
    """``correct`` when the entry states it, else what ``expected`` vs ``gold`` gives."""
    expected, gold = entry["expected"], entry["gold"]
    if "correct" in entry:
        return entry["correct"]
    if expected is None:
        return None
    if entry["task"] in ("aime", "integer"):
        value = integer_of(expected)
        in_range = entry["task"] == "integer" or (value is not None and 0 <= value <= 999)
        return value is not None and in_range and value == integer_of(gold)
    if entry["task"] == "choice":
        return expected == gold
    return normalize_text(expected) == normalize_text(gold)


def outcome(entry: dict) -> str:
    correct = expected_correct(entry)
    return "unparseable" if correct is None else "right" if correct else "wrong"


def test_corpus_is_well_formed():
    # The README states these counts: a changed corpus changes them there too.
    assert len(ENTRIES) == 224
    assert Counter(outcome(entry) for entry in ENTRIES) == {"right": 146, "wrong": 35, "unparseable": 43}
    ids = [entry["id"] for entry in ENTRIES]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    for entry in ENTRIES:
        assert {"id", "style", "task", "gold", "expected", "note", "output"} <= set(entry), entry["id"]
        assert entry["style"] in STYLES and entry["task"] in TASKS, entry["id"]
        assert isinstance(entry["gold"], str) and isinstance(entry["output"], str), entry["id"]
        assert entry["expected"] is None or isinstance(entry["expected"], str), entry["id"]
    # Every style has right, wrong and unparseable outputs.
    kinds = {(entry["style"], outcome(entry)) for entry in ENTRIES}
    assert kinds == {(style, kind) for style in STYLES for kind in ("right", "wrong", "unparseable")}


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry["id"] for entry in ENTRIES])
def test_corpus_entry(entry):
    graded = grade(entry)
    assert (graded.answer, graded.correct) == (entry["expected"], expected_correct(entry)), entry["note"]


def test_corpus_accuracy():
    """The share of entries whose extraction and verdict both match the reader's, by style."""
    hits: Counter = Counter()
    totals: Counter = Counter()
    for entry in ENTRIES:
        graded = grade(entry)
        ok = (graded.answer, graded.correct) == (entry["expected"], expected_correct(entry))
        for key in ("all", entry["style"], outcome(entry)):
            totals[key] += 1
            hits[key] += ok
    print()
    for key in ("all", *sorted(STYLES), "right", "wrong", "unparseable"):
        print(f"grading corpus accuracy [{key}]: {hits[key]}/{totals[key]} = {hits[key] / totals[key]:.1%}")
    assert hits["all"] == totals["all"]
