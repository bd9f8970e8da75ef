"""The run directory's guarantees without a model: traces checked on resume, one writer at a
time, --overwrite only in a run directory, atomic writes, one-line errors, standard JSON."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from small_runs import error_lines

from tje_hf.cli import main
from tje_hf.errors import RunDirError
from tje_hf.records import (
    DERIVED_FILES,
    SCHEMA_VERSION,
    TASK_HASH_KEY,
    RunDir,
    pack_trace,
    problem_record,
    read_records,
    read_trace,
)

COLUMNS = ("a", "b")


def trace(n: int, start: int = 0) -> np.ndarray:
    values = np.arange(start, start + 2 * n, dtype=np.float32).reshape(n, 2)
    return pack_trace(COLUMNS, values, np.zeros(n, dtype=np.int8), list(range(start, start + n)))


def add(run: RunDir, pid: str, n_tokens=(3, 2)) -> dict:
    steps = []
    for k, n in enumerate(n_tokens, 1):
        ref = run.append_trace(trace(n, k), COLUMNS)
        steps.append({"step": k, "answer_text": "1", "answer": "1", "correct": True, "grade_reason": "match",
                      "n_generated": n, "signals": {"all": {"a": 0.5}}, "trace": ref.to_json()})
    rec = {"schema": SCHEMA_VERSION, "problem_id": pid, "index": int(pid), "steps": steps}
    run.append(rec)
    return rec


def snapshot(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


# 1. traces.bin checked against the records on resume


def test_orphan_trace_bytes_are_cut_on_resume(tmp_path):
    run = RunDir.open(tmp_path / "r", {}, "h")
    add(run, "0")
    needed = run.traces_path.stat().st_size
    run.append_trace(trace(4), COLUMNS)  # a crash after the trace, before its record
    run.close()
    run = RunDir.open(tmp_path / "r", {}, "h")
    assert run.traces_path.stat().st_size == needed
    rec = add(run, "1")
    assert rec["steps"][0]["trace"]["offset"] == needed
    for r in read_records(tmp_path / "r"):
        for step in r["steps"]:
            assert len(read_trace(tmp_path / "r", step["trace"])) == step["n_generated"]


def test_truncated_traces_is_an_error_naming_the_damage(tmp_path):
    run = RunDir.open(tmp_path / "r", {}, "h")
    add(run, "0")
    add(run, "1")
    run.close()
    size = run.traces_path.stat().st_size
    with open(run.traces_path, "r+b") as f:  # a copy cut short
        f.truncate(size - 10)
    before = snapshot(tmp_path / "r")
    with pytest.raises(RunDirError) as exc:
        RunDir.open(tmp_path / "r", {}, "h")
    message = str(exc.value)
    assert "\n" not in message and "traces.bin is truncated" in message
    assert f"{size - 10} bytes" in message and "record 2 (problem '1') step 2" in message and f"..{size}" in message
    assert snapshot(tmp_path / "r") == before  # nothing appended at the short end


# 2. one writer at a time


HOLDER = textwrap.dedent("""
    import sys, time
    from tje_hf.records import RunDir
    run = RunDir.open(sys.argv[1], {}, "h", records_name=sys.argv[2])
    print("locked", flush=True)
    time.sleep(120)
""")


def _hold(path: Path, records_name: str = "records.jsonl") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), records_name], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "r"
    proc = _hold(out)
    try:
        before = snapshot(out)
        with pytest.raises(RunDirError, match=f"another process \\(PID {proc.pid}\\) is writing") as exc:
            RunDir.open(out, {}, "h")
        assert "\n" not in str(exc.value)
        with pytest.raises(RunDirError, match="another process"):
            RunDir.open(out, {}, "h", overwrite=True)  # not even --overwrite
        assert snapshot(out) == before
        # a shard's writer takes its own lock
        shard = RunDir.open(out, {}, "h", records_name="shards/records-1.jsonl")
        shard.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run = RunDir.open(out, {}, "h")  # the dead process's lock: the kernel released it
    assert (out / "records.lock").read_text().strip() == str(os.getpid())
    run.close()


def test_shards_lock_separately(tmp_path):
    out = tmp_path / "r"
    proc = _hold(out, "shards/records-0.jsonl")
    try:
        with pytest.raises(RunDirError, match=f"PID {proc.pid}"):
            RunDir.open(out, {}, "h", records_name="shards/records-0.jsonl")
        other = RunDir.open(out, {}, "h", records_name="shards/records-1.jsonl")
        main_run = RunDir.open(out, {}, "h")  # merge takes the main lock
        other.close()
        main_run.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# 3. --overwrite only in a run directory, only the tool's files


def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "records.txt").write_text("mine")
    (model / "shards").mkdir()
    (model / "shards" / "part-1").write_text("mine")
    return model


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_tje_did_not_mark_is_refused(tmp_path, overwrite):
    model = model_dir(tmp_path)
    before = snapshot(model)
    with pytest.raises(RunDirError, match="not a run directory") as exc:
        RunDir.open(model, {}, "h", overwrite=overwrite)
    assert "--overwrite" not in str(exc.value) and "\n" not in str(exc.value)
    assert snapshot(model) == before and not (model / "records.lock").exists()


def small_yaml(tmp_path: Path, out: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "builtin:smollm2"},
                                    "task": {"name": "arith", "size": 2}, "out_dir": str(out)}))
    return path


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_a_run_into_a_model_directory_is_a_one_line_error(tmp_path, capsys, flags):
    model = model_dir(tmp_path)
    before = snapshot(model)
    assert main(["run", "--config", str(small_yaml(tmp_path, model)), "--no-progress", *flags]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "not a run directory" in err[0] and "--overwrite" not in err[0]
    assert snapshot(model) == before


def test_overwrite_removes_only_what_the_tool_wrote(tmp_path):
    out = tmp_path / "r"
    run = RunDir.open(out, {}, "h")
    add(run, "0")
    run.write_environment({"x": 1})
    run.close()
    shard = RunDir.open(out, {}, "h", records_name="shards/records-0.jsonl")
    add(shard, "0")
    shard.close()
    (out / "regrades.jsonl").write_text("{}\n")
    (out / "report").mkdir()
    for name in DERIVED_FILES:  # a report, viewer and tables of the run being overwritten
        (out / name).write_text("stale")
    (out / "notes.md").write_text("mine")
    (out / "shards" / "mine.txt").write_text("mine")
    (out / "records.backup").write_text("mine")
    (out / "report" / "my-figure.png").write_text("mine")
    run = RunDir.open(out, {"new": 1}, "h2", overwrite=True)
    run.close()
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == ["config.json", "notes.md", "records.backup", "records.lock", "report/my-figure.png",
                    "shards/mine.txt", "shards/records-0.lock"]
    assert json.loads((out / "config.json").read_text())["config_hash"] == "h2"
    (out / "report" / "my-figure.png").unlink()
    RunDir.open(out, {"new": 1}, "h3", overwrite=True).close()
    assert not (out / "report").exists()  # emptied: removed with its files


# 4. atomic writes; a run that failed before its first record


def test_atomic_writes_fsync_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    RunDir.open(tmp_path / "r", {}, "h").close()
    assert synced == [False, True]  # config.json, then the directory that holds it


def test_a_run_without_records_may_be_reinitialised(tmp_path, caplog):
    out = tmp_path / "r"
    RunDir.open(out, {"model": "wrong/path"}, "h1").close()  # failed before its first record
    with caplog.at_level("WARNING", logger="tje_hf.records"):
        run = RunDir.open(out, {"model": "right/path"}, "h2")
    assert "re-initialising" in caplog.text and "h1" in caplog.text and "h2" in caplog.text
    assert json.loads((out / "config.json").read_text())["config"] == {"model": "right/path"}
    add(run, "0")
    run.close()
    before = snapshot(out)
    with pytest.raises(RunDirError, match="config hash h2.*--overwrite"):  # now it holds records
        RunDir.open(out, {}, "h3")
    assert snapshot(out) == before


def test_changed_problems_are_refused_in_shards_and_taken_before_the_first_record(tmp_path):
    """The task check is the run directory's own: it sees records in shards/ too, and a directory
    without records takes the new task's hash (a later resume over the new task is not refused)."""
    sharded = tmp_path / "sharded"
    RunDir.open(sharded, {TASK_HASH_KEY: "t1"}, "h").close()
    shard = RunDir.open(sharded, {TASK_HASH_KEY: "t1"}, "h", records_name="shards/records-1.jsonl")
    add(shard, "1")
    shard.close()
    before = snapshot(sharded)
    for records_name in ("shards/records-1.jsonl", "records.jsonl"):
        with pytest.raises(RunDirError, match="other problems.*content hash t1, now t2.*--overwrite"):
            RunDir.open(sharded, {TASK_HASH_KEY: "t2"}, "h", records_name=records_name)
    assert snapshot(sharded) == before

    fresh = tmp_path / "fresh"
    RunDir.open(fresh, {TASK_HASH_KEY: "t1"}, "h").close()  # failed before its first record
    run = RunDir.open(fresh, {TASK_HASH_KEY: "t2"}, "h")
    assert json.loads((fresh / "config.json").read_text())["config"][TASK_HASH_KEY] == "t2"
    add(run, "0")
    run.close()
    RunDir.open(fresh, {TASK_HASH_KEY: "t2"}, "h").close()  # resumes


# 5. bad files: one-line errors through the CLI


def _run_with_record_lines(tmp_path: Path, lines: list[bytes]) -> Path:
    from tje_hf.config import config_hash, load_run_config

    out = tmp_path / "r"
    run = RunDir.open(out, {}, config_hash(load_run_config(small_yaml(tmp_path, out))))
    run.close()
    (out / "records.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    return out


@pytest.mark.parametrize("bad, what", [(b"null", "line 2 is null"),
                                       (b'{"steps": []}', "line 2 is a record without 'problem_id'"),
                                       (b"[1, 2]", "line 2 is list")])
def test_a_bad_record_line_is_a_one_line_error(tmp_path, capsys, bad, what):
    good = json.dumps({"problem_id": "0", "steps": []}).encode()
    out = _run_with_record_lines(tmp_path, [good, bad, good])
    before = snapshot(out)
    assert main(["calibrate", str(out)]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "records.jsonl: " + what in err[0], err
    assert main(["run", "--config", str(small_yaml(tmp_path, out)), "--no-progress"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "records.jsonl" in err[0] and "line 2" in err[0], err
    assert snapshot(out) == before


def test_a_config_json_that_is_not_json_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text('{"schema": 2, "tje_run": tr')
    assert main(["run", "--config", str(small_yaml(tmp_path, out)), "--no-progress"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "config.json: not valid JSON" in err[0]
    assert main(["merge", str(out)]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "config.json: not valid JSON" in err[0]


def test_an_out_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "r"
    out.write_text("a file")
    assert main(["run", "--config", str(small_yaml(tmp_path, out)), "--no-progress"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and f"{out}: exists and is not a directory" in err[0]
    assert out.read_text() == "a file"


def test_an_out_dir_that_cannot_be_created_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: make mkdir fail as it would for a user
        def mkdir(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        parent.chmod(0o500)
    try:
        assert main(["run", "--config", str(small_yaml(tmp_path, parent / "r")), "--no-progress"]) == 2
    finally:
        parent.chmod(0o700)
    err = error_lines(capsys)
    assert len(err) == 1 and "cannot create the run directory (Permission denied)" in err[0], err


# 6. standard JSON


def test_non_finite_floats_are_written_as_null_and_read_as_nan(tmp_path):
    out = tmp_path / "r"
    run = RunDir.open(out, {"temperature": math.inf}, "h")
    run.write_environment({"x": math.nan})
    run.append({"problem_id": "0", "steps": [{"step": 1, "signals": {"all": {"a": math.nan, "b": math.inf,
                                                                              "c": 1.5}, "answer": {"a": -math.inf}},
                                               "wall_time_s": math.nan}]})
    run.close()

    def strict(token):
        raise ValueError(f"not JSON: {token}")

    for name in ("records.jsonl", "config.json", "environment.json"):
        text = (out / name).read_text()
        for line in text.splitlines() if name.endswith("jsonl") else [text]:
            json.loads(line, parse_constant=strict)
    (step,) = read_records(out)[0]["steps"]
    assert math.isnan(step["signals"]["all"]["a"]) and math.isnan(step["signals"]["all"]["b"])
    assert step["signals"]["all"]["c"] == 1.5 and math.isnan(step["signals"]["answer"]["a"])
    assert step["wall_time_s"] is None


def test_old_records_with_bare_nan_are_read(tmp_path):
    line = b'{"schema": 1, "problem_id": "0", "steps": [{"step": 1, "signals": {"all": {"a": NaN, "b": null}}}]}'
    out = _run_with_record_lines(tmp_path, [line])
    (step,) = read_records(out)[0]["steps"]
    assert math.isnan(step["signals"]["all"]["a"]) and math.isnan(step["signals"]["all"]["b"])


# 7. the question and the prompt in every record


def test_a_record_holds_the_question_and_the_rendered_prompt():
    result = SimpleNamespace(prompt_hash="abc", steps=[object()])
    problem = SimpleNamespace(id="p1", gold="9", question="What is 5 + 4?")
    rec = problem_record(result, [], problem=problem, index=0, task="arith", config_hash="h", model="m",
                         model_revision="r", family="generic", policy="all",
                         prompt="<|user|>What is 5 + 4?<|assistant|>")
    assert rec["schema"] == 2 and rec["question"] == "What is 5 + 4?"
    assert rec["prompt"] == "<|user|>What is 5 + 4?<|assistant|>"


def test_schema_1_records_are_read_and_a_newer_schema_is_an_error(tmp_path):
    out = _run_with_record_lines(tmp_path, [b'{"schema": 1, "problem_id": "0", "steps": []}',
                                            b'{"schema": 2, "problem_id": "1", "question": "q", "steps": []}'])
    assert [r["problem_id"] for r in read_records(out)] == ["0", "1"]
    with open(out / "records.jsonl", "ab") as f:
        f.write(b'{"schema": 3, "problem_id": "2", "steps": []}\n')
    with pytest.raises(RunDirError, match="record 3 has schema 3"):
        read_records(out)
