"""``tje regrade``: the current grader over existing records, into an append-only sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from small_runs import error_lines

from tje_hf.cli import main
from tje_hf.errors import RunDirError
from tje_hf.records import RunDir, read_records
from tje_hf.regrade import regrade

TASK = {"name": "arith", "size": 3, "seed": 3}


def build(tmp_path: Path, task: dict = TASK) -> Path:
    """A run whose recorded grades are what an older grader said: wrong for some answers."""
    from tje_hf.config import TaskConfig, from_dict
    from tje_hf.tasks import load_task

    out = tmp_path / "run"
    problems = load_task(from_dict(TaskConfig, TASK)).problems
    run = RunDir.open(out, {"task": task}, "h")
    for i, p in enumerate(problems):
        steps = [
            # right answer, graded wrong by the old grader: changes
            {"step": 1, "answer_text": f"answer: {p.gold}", "answer": None, "correct": None,
             "grade_reason": "unparseable"},
            # wrong answer, graded wrong: stays
            {"step": 2, "answer_text": "\\boxed{99999}", "answer": "99999", "correct": False,
             "grade_reason": "mismatch"},
        ]
        run.append({"schema": 2, "problem_id": p.id, "index": i, "steps": steps})
    run.close()
    return out


def test_regrade_appends_new_grades_and_keeps_the_originals(tmp_path):
    out = build(tmp_path)
    records_bytes = (out / "records.jsonl").read_bytes()
    summary = regrade(out)
    assert summary.n_problems == 3 and summary.n_changed == 3
    assert summary.before == [0.0, 0.0] and summary.after == [1.0, 0.0]
    assert (out / "records.jsonl").read_bytes() == records_bytes  # never rewritten
    lines = [json.loads(line) for line in (out / "regrades.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(line["grader"] and line["regraded_at"] for line in lines)
    for rec in read_records(out):
        first, second = rec["steps"]
        assert first["correct"] is True and first["grade_reason"] == "match"
        assert first["original_grade"] == {"answer": None, "correct": None, "grade_reason": "unparseable"}
        assert second["correct"] is False and second["original_grade"]["correct"] is False
    original = read_records(out, regrades=False)
    assert original[0]["steps"][0]["correct"] is None and "original_grade" not in original[0]["steps"][0]
    # again: nothing changes; the newest line wins, the original stays the run's
    again = regrade(out)
    assert again.n_changed == 0 and again.before == again.after == [1.0, 0.0]
    assert len((out / "regrades.jsonl").read_text().splitlines()) == 6
    assert read_records(out)[0]["steps"][0]["original_grade"]["grade_reason"] == "unparseable"


def test_newest_regrade_wins(tmp_path):
    out = build(tmp_path)
    regrade(out)
    rec = read_records(out)[0]
    with open(out / "regrades.jsonl", "a") as f:
        f.write(json.dumps({"problem_id": rec["problem_id"], "grader": "x", "regraded_at": "t",
                            "steps": [{"step": 1, "answer": "0", "correct": False, "grade_reason": "mismatch"}]})
                + "\n")
    first = read_records(out)[0]["steps"][0]
    assert first["correct"] is False and first["original_grade"]["grade_reason"] == "unparseable"


def test_tje_regrade_prints_the_summary(tmp_path, capsys):
    out = build(tmp_path)
    assert main(["regrade", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 1 | 3 | 0.000 | 1.000 |" in text and "3 step grades changed" in text
    # reports use the newest grade
    assert main(["export", str(out), "--csv", str(tmp_path / "t.csv")]) == 0


def test_a_missing_local_task_file_is_a_one_line_error(tmp_path, capsys):
    out = build(tmp_path, task={"name": "local", "path": str(tmp_path / "gone.jsonl"),
                                "columns": {"id": "id", "question": "q", "answer": "a"}})
    before = (out / "records.jsonl").read_bytes()
    assert main(["regrade", str(out)]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "gone.jsonl" in err[0], err
    assert not (out / "regrades.jsonl").exists() and (out / "records.jsonl").read_bytes() == before


def test_a_problem_no_longer_in_the_task_is_an_error(tmp_path):
    out = build(tmp_path, task={**TASK, "size": 2})
    with pytest.raises(RunDirError, match="not in task 'arith' any more"):
        regrade(out)
    assert not (out / "regrades.jsonl").exists()
