"""The runner end to end on the real default model: records, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from small_runs import error_lines, local_qa_config, small_config, tiny_model_dir

from tje_hf.cli import main
from tje_hf.config import load_run_config
from tje_hf.errors import ConfigError
from tje_hf.records import RunDir, read_records, read_trace, source_revision
from tje_hf.runner import run

VOLATILE = {"finished_at", "wall_time_s", "prefill_time_s"}


def stable(records: list[dict]) -> list[dict]:
    """Records without the fields that legitimately differ between two runs (clock times)."""
    out = []
    for rec in records:
        rec = {k: v for k, v in rec.items() if k not in VOLATILE}
        rec["steps"] = [{k: v for k, v in s.items() if k not in VOLATILE | {"trace"}} for s in rec["steps"]]
        out.append(rec)
    return out


def test_run_releases_the_model_it_loaded_and_not_a_given_one(tmp_path, smollm2, monkeypatch):
    """A model ``run`` loads itself is shut down before it returns (so that a loop over configs in
    one process finds the device free), even when the run fails; a model passed in is left alone."""
    from tje_hf.generation.hf import HfBackend

    shut = []
    original = HfBackend.shutdown
    monkeypatch.setattr(HfBackend, "shutdown", lambda self: (shut.append(self), original(self))[1])
    given = load_run_config(small_config(tmp_path, "given", task={"size": 2}))
    run(given, lm=smollm2, progress=False)
    assert shut == []
    loaded = load_run_config(small_config(tmp_path, "loaded", task={"size": 2}))
    run(loaded, progress=False)
    assert len(shut) == 1 and shut[0] is not smollm2.backend
    failing = load_run_config(small_config(tmp_path, "failing", task={"size": 2}, decode={"signals": {"ks": [20, 64000]}}))
    with pytest.raises(ConfigError, match="exceed the model's vocabulary"):
        run(failing, progress=False)
    assert len(shut) == 2


def test_run_writes_complete_records(tmp_path, smollm2):
    cfg = load_run_config(small_config(tmp_path))
    summary = run(cfg, lm=smollm2, progress=False)
    records = read_records(cfg.out_dir)
    assert summary.n_problems == len(records) == 6
    assert [r["index"] for r in records] == list(range(6))
    env = json.loads((Path(cfg.out_dir) / "environment.json").read_text())
    assert env["model_revision"].startswith("gguf-") and "torch" in env["versions"]
    assert env["source"] == source_revision()
    for rec in records:
        assert len(rec["steps"]) == 2 and rec["config_hash"] == records[0]["config_hash"]
        for step in rec["steps"]:
            assert step["prompt_tokens"] == step["prefilled_tokens"] + step["reused_tokens"]
            assert step["correct"] in (True, False, None)
            assert (step["correct"] is None) == (step["answer"] is None)
            trace = read_trace(cfg.out_dir, step["trace"])
            assert len(trace) == step["n_generated"] == step["counts"]["all"]
            assert trace["alt_ids"].shape == (step["n_generated"], 3)
            col = step["trace"]["columns"].index("topk_entropy@20")
            assert step["signals"]["all"]["topk_entropy@20"] == pytest.approx(float(trace["values"][:, col].mean()),
                                                                              abs=1e-5)
        assert rec["steps"][1]["reused_tokens"] > 0
    # same config again: nothing to do, nothing duplicated
    again = run(cfg, lm=smollm2, progress=False)
    assert again.n_new == 0 and len(read_records(cfg.out_dir)) == 6


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, smollm2):
    reference_cfg = load_run_config(small_config(tmp_path, "reference"))
    run(reference_cfg, lm=smollm2, progress=False)
    reference = read_records(reference_cfg.out_dir)

    killed_yaml = small_config(tmp_path, "killed")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tje_hf.cli", "run", "--config", str(killed_yaml), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once some, but not all, problems are recorded
        if (out / "records.jsonl").exists() and len(read_records(out)) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_records(out)
    assert 2 <= len(partial) < 6, "the run must be killed mid-way"
    # a crash in the middle of a write leaves a torn line: it is dropped and cut on resume
    with open(out / "records.jsonl", "ab") as f:
        f.write(b'{"schema": 1, "problem_id": "torn')
    assert len(read_records(out)) == len(partial)
    assert main(["run", "--config", str(killed_yaml), "--no-progress"]) == 0
    resumed = read_records(out)
    assert [r["problem_id"] for r in resumed] == [r["problem_id"] for r in reference]
    assert stable(resumed) == stable(reference)
    # the traces agree as well
    for a, b in zip(resumed, reference, strict=True):
        for sa, sb in zip(a["steps"], b["steps"], strict=True):
            assert (read_trace(out, sa["trace"]) == read_trace(reference_cfg.out_dir, sb["trace"])).all()


def test_another_config_in_the_same_directory_is_an_error(tmp_path, smollm2, capsys):
    first = small_config(tmp_path, "same", task={"size": 2})
    assert main(["run", "--config", str(first), "--no-progress"]) == 0
    n = len(read_records(tmp_path / "same"))
    assert main(["run", "--config", str(first), "--no-progress", "decode.temperature=0.3"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "config hash" in err[0] and "--overwrite" in err[0]
    assert len(read_records(tmp_path / "same")) == n  # nothing lost
    assert main(["run", "--config", str(first), "--no-progress", "--overwrite", "decode.temperature=0.3"]) == 0


@pytest.mark.parametrize("override, message", [
    ("decode.temprature=0.5", "unknown config key 'decode.temprature'"),
    ("decode.temperature=hot", "config field 'decode.temperature' = 'hot': expected a number"),
    ("refine.steps=0", "config field 'refine.steps' = 0: must be >= 1"),
    ("task.name=nope", "nope"),
])
def test_bad_config_is_a_one_line_error(tmp_path, capsys, override, message):
    path = small_config(tmp_path)
    assert main(["run", "--config", str(path), "--no-progress", override]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and message in err[0]


def test_missing_dataset_column_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n")
    path = small_config(tmp_path, task={"name": "local", "path": str(data),
                                        "columns": {"id": "id", "question": "q", "answer": "a"}})
    assert main(["run", "--config", str(path), "--no-progress"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "'id'" in err[0]


def test_model_without_chat_template_is_a_one_line_error(tmp_path, smollm2, capsys):
    model_dir = tiny_model_dir(tmp_path, smollm2, template=False, context=4096)
    path = small_config(tmp_path, model={"name_or_path": str(model_dir), "family": "generic"})
    assert main(["run", "--config", str(path), "--no-progress"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "no chat template" in err[0]


def test_prompt_longer_than_context_is_recorded_as_context_full_alone_in_its_batch(tmp_path, smollm2):
    rows = [{"id": "short", "q": "1+1?", "a": "2"}, {"id": "long", "q": "word " * 200, "a": "3"}]
    path = local_qa_config(tmp_path, smollm2, rows, context=80, batch_size=1, refine={"steps": 1},
                           decode={"max_new_tokens": 4})
    assert main(["run", "--config", str(path), "--no-progress"]) == 0
    records = read_records(tmp_path / "run")
    assert [(r["problem_id"], r["n_steps"], r["stopped"]) for r in records] == [("short", 1, None),
                                                                               ("long", 0, "context_full")]


def test_torn_line_is_cut_when_the_run_reopens(tmp_path):
    run_dir = RunDir.open(tmp_path / "r", {"a": 1}, "h1")
    run_dir.append({"problem_id": "1", "steps": []})
    with open(run_dir.records_path, "ab") as f:
        f.write(b'{"problem_id": "2", "st')
    assert [r["problem_id"] for r in read_records(tmp_path / "r")] == ["1"]
    reopened = RunDir.open(tmp_path / "r", {"a": 1}, "h1")
    reopened.append({"problem_id": "3", "steps": []})
    assert [r["problem_id"] for r in read_records(tmp_path / "r")] == ["1", "3"]


def test_source_revision_names_the_commit_and_local_changes(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert source_revision(tmp_path) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    assert source_revision(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "b.py").write_text("untracked\n")  # untracked files do not change the code run
    assert source_revision(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_revision(tmp_path) == {"commit": head, "dirty": True}


def test_records_hold_the_question_and_the_rendered_prompt(tmp_path, smollm2):
    from tje_hf.tasks import load_task

    cfg = load_run_config(small_config(tmp_path, task={"size": 2}, refine={"steps": 1},
                                       decode={"max_new_tokens": 4}))
    run(cfg, lm=smollm2, progress=False)
    questions = {p.id: p.question for p in load_task(cfg.task).problems}
    text = (Path(cfg.out_dir) / "records.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # standard JSON
    for rec in read_records(cfg.out_dir):
        assert rec["schema"] == 2 and rec["question"] == questions[rec["problem_id"]]
        assert rec["question"] in rec["prompt"] and rec["prompt"] != rec["question"]  # the chat template applied
    config = json.loads((Path(cfg.out_dir) / "config.json").read_text())
    assert config["tje_run"] is True and config["schema"] == 2
