"""Faults, not only bad input (issue 22): Ctrl-C, a torn or full-disk write in every append-only
file, duplicated and mixed records, NaN in a config, errors that name the file and line, a closed
pipe, a problem that cannot fit the context, and a top-k over the vocabulary in the Python API.

Each test injects the fault for real (a SIGINT to a running ``tje run``, bytes cut mid-line, a
tmpfs filled to the last byte, ``/dev/full``, a pipe whose reader is gone) and checks what is on
disk and what the user is told."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from small_runs import error_lines, local_qa_config, small_config
from synthetic_runs import build_run

from tje_hf import config as config_module
from tje_hf.cli import main
from tje_hf.config import DecodeConfig, RunConfig, SignalConfig, load_run_config
from tje_hf.errors import ConfigError, RunDirError, TaskError
from tje_hf.records import RunDir, pack_trace, read_records
from tje_hf.regrade import regrade

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def snapshot(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def record(pid: str, config_hash: str = "h", n_tokens: int = 0, run: RunDir | None = None) -> dict:
    """A minimal record of problem ``pid``; with ``run`` and ``n_tokens``, one step with a trace."""
    steps = []
    if run is not None and n_tokens:
        values = np.arange(2 * n_tokens, dtype=np.float32).reshape(n_tokens, 2)
        ref = run.append_trace(pack_trace(("a", "b"), values, np.zeros(n_tokens, np.int8), list(range(n_tokens))),
                               ("a", "b"))
        steps.append({"step": 1, "answer_text": "1", "answer": "1", "correct": True, "grade_reason": "match",
                      "n_generated": n_tokens, "signals": {"all": {"a": 0.5}}, "trace": ref.to_json()})
    return {"schema": 2, "config_hash": config_hash, "problem_id": pid, "index": int(pid), "steps": steps}


# --------------------------------------------------------------------------------------------
# 1. Ctrl-C: one line, exit 130, the run resumes


@pytest.mark.parametrize("when", ["load", "generation"])
def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(tmp_path, when):
    path = small_config(tmp_path, task={"size": 4}, batch_size=1, decode={"max_new_tokens": 24})
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tje_hf.cli", "run", "--config", str(path), "--no-progress"],
                            env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # at load: config.json is written just before the model loads; mid-generation: a record is on disk
        if (out / "config.json").exists() if when == "load" else len(read_records(out)) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    on_disk = len(read_records(out))
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("tje:")]
    assert lines == [f"tje: interrupted: {on_disk} problems on disk; run the same command to resume"], err
    if when == "generation":
        assert 1 <= on_disk < 4
    assert main(["run", "--config", str(path), "--no-progress"]) == 0  # the same command resumes
    assert sorted(r["problem_id"] for r in read_records(out)) == [f"arith-{i:04d}" for i in range(4)]


# --------------------------------------------------------------------------------------------
# 2. A torn last line is cut on open in every append-only file


@pytest.mark.parametrize("records_name", ["records.jsonl", "shards/records-1.jsonl"])
def test_a_torn_last_line_and_orphan_trace_bytes_are_cut_in_records_and_shards(tmp_path, records_name):
    out = tmp_path / "r"
    run = RunDir.open(out, {}, "h", records_name=records_name)
    run.append(record("0", run=run, n_tokens=3))
    needed = run.traces_path.stat().st_size
    run.append_trace(pack_trace(("a", "b"), np.zeros((4, 2), np.float32), np.zeros(4, np.int8), [1, 2, 3, 4]),
                     ("a", "b"))  # a crash after the trace bytes...
    with open(run.records_path, "ab") as f:
        f.write(b'{"schema": 2, "problem_id": "1", "st')  # ...and in the middle of its record
    run.close()
    run = RunDir.open(out, {}, "h", records_name=records_name)
    assert run.traces_path.stat().st_size == needed
    assert run.records_path.read_bytes().endswith(b"\n")
    run.append(record("2", run=run, n_tokens=2))
    run.close()
    assert [r["problem_id"] for r in read_records(run.records_path)] == ["0", "2"]


def regrade_run(tmp_path: Path, size: int = 3) -> Path:
    """``size`` recorded problems of the built-in arith task, graded by an 'older grader'."""
    from tje_hf.config import TaskConfig, from_dict
    from tje_hf.tasks import load_task

    task = {"name": "arith", "size": size, "seed": 3}
    out = tmp_path / "run"
    run = RunDir.open(out, {"task": task}, "h")
    for i, p in enumerate(load_task(from_dict(TaskConfig, task)).problems):
        run.append({"schema": 2, "config_hash": "h", "problem_id": p.id, "index": i, "steps": [
            {"step": 1, "answer_text": f"answer: {p.gold}", "answer": None, "correct": None,
             "grade_reason": "unparseable", "n_generated": 5, "signals": {"all": {"topk_entropy@20": 0.5 + i}}}]})
    run.close()
    return out


def test_a_torn_regrade_line_is_cut_by_the_next_regrade(tmp_path, capsys):
    out = regrade_run(tmp_path)
    regrade(out)
    clean = (out / "regrades.jsonl").read_bytes()
    with open(out / "regrades.jsonl", "ab") as f:  # a regrade cut short by a full disk or a kill
        f.write(b'{"problem_id": "arith-0001", "config_hash": "h", "gra')
    assert len(read_records(out)) == 3  # the torn line is not read
    regrade(out)
    text = (out / "regrades.jsonl").read_bytes()
    assert text.startswith(clean) and len(text.splitlines()) == 6
    assert all(json.loads(line)["problem_id"] for line in text.splitlines())
    assert [r["steps"][0]["correct"] for r in read_records(out)] == [True, True, True]
    for argv in (["calibrate", str(out)], ["export", str(out), "--csv", str(tmp_path / "t.csv")]):
        assert main(argv) == 0, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 3. One record per problem


def test_a_duplicated_record_line_is_read_once_with_a_warning(tmp_path, caplog, capsys):
    run = build_run(tmp_path / "run")
    lines = (run / "records.jsonl").read_bytes().splitlines(keepends=True)
    (run / "records.jsonl").write_bytes(b"".join(lines + lines[2:4]))  # two lines appended twice
    with caplog.at_level(logging.WARNING, logger="tje_hf.records"):
        records = read_records(run)
    assert [r["problem_id"] for r in records] == ["p-0", "p-1", "p-2", "p-3", "p-4", "p-5", "p-big"]
    assert "line 8 repeats line 3" in caplog.text and "line 9 repeats line 4" in caplog.text
    from tje_hf.export import to_dataframe

    assert len(to_dataframe(run)) == 21  # 7 problems x 3 steps
    assert main(["calibrate", str(run)]) == 0
    cal = json.loads(capsys.readouterr().out)
    assert cal["n_c"] + cal["n_i"] + cal["n_excluded"] == 7
    resumed = RunDir.open(run, {"refine": {"steps": 3}, "task": {"name": "arith"}}, "cafe0001")
    assert len(resumed.finished_ids()) == 7
    resumed.close()


def test_two_different_records_of_one_problem_are_an_error_naming_both_lines(tmp_path, capsys):
    run = build_run(tmp_path / "run")
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    other = json.loads(lines[2])
    other["steps"][0]["correct"] = not other["steps"][0]["correct"]
    (run / "records.jsonl").write_text("".join(lines) + json.dumps(other) + "\n")
    with pytest.raises(RunDirError, match=r"records.jsonl: lines 3 and 8 are two different records of problem "
                                          r"'p-2'"):
        read_records(run)
    assert main(["export", str(run), "--csv", str(tmp_path / "t.csv")]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "lines 3 and 8" in err[0]
    assert not (tmp_path / "t.csv").exists()


# --------------------------------------------------------------------------------------------
# 4. Records of two configs


def test_records_of_another_config_are_refused_on_open_without_a_config_json(tmp_path):
    out = tmp_path / "r"
    run = RunDir.open(out, {}, "h1")
    run.append(record("0", "h1"))
    run.close()
    (out / "config.json").unlink()  # lost, or the records copied from another run
    before = snapshot(out)
    with pytest.raises(RunDirError) as exc:
        RunDir.open(out, {}, "h2")
    message = str(exc.value)
    assert "\n" not in message and "records.jsonl: line 1" in message and "config hash h1" in message
    assert "this config hashes to h2; config.json is missing: restore it, or use another out_dir" in message
    with pytest.raises(RunDirError, match="config.json is missing"):  # unmarked: --overwrite removes nothing
        RunDir.open(out, {}, "h2", overwrite=True)
    assert snapshot(out) == before  # no config.json written, nothing appended
    RunDir.open(out, {}, "h1").close()  # the records' own config resumes, and writes config.json again
    RunDir.open(out, {}, "h2", overwrite=True).close()  # now marked: --overwrite starts over
    assert read_records(out) == []


def test_a_record_whose_hash_differs_from_config_json_is_refused_by_every_reader(tmp_path, capsys):
    out = tmp_path / "r"
    run = RunDir.open(out, {}, "h1")
    run.append(record("0", "h1"))
    run.close()
    with open(out / "records.jsonl", "a") as f:  # another run's record, appended by hand
        f.write(json.dumps(record("1", "h2")) + "\n")
    with pytest.raises(RunDirError, match=r"records.jsonl: line 2 is a record of config hash h2, but config.json "
                                          r"holds config hash h1"):
        read_records(out)
    assert main(["calibrate", str(out)]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "line 2" in err[0] and "h2" in err[0]
    (out / "config.json").unlink()
    with pytest.raises(RunDirError, match="records.jsonl: lines 1 and 2 are records of two configs"):
        read_records(out)


# --------------------------------------------------------------------------------------------
# 5. NaN and infinity in every float field of every config


def float_fields(cls: type, prefix: str = "") -> list[tuple[str, type, str]]:
    """``(dotted path, owning class, field)`` of every float field reachable from ``cls``."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp) or (tp,)
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if nested:
            found += float_fields(nested[0], f"{prefix}{f.name}.")
        elif float in args:
            found.append((prefix + f.name, cls, f.name))
    return found


FLOAT_FIELDS = float_fields(RunConfig)


def test_the_float_fields_are_all_found():
    assert {path for path, _, _ in FLOAT_FIELDS} == {
        "decode.temperature", "decode.top_p", "decode.repetition_penalty", "decode.window_stop.threshold",
        "refine.tau"}
    classes = {c for c in vars(config_module).values() if isinstance(c, type)
               and issubclass(c, config_module._Validated) and c is not config_module._Validated}
    assert {cls for _, cls, _ in FLOAT_FIELDS} <= classes
    # every config class is reachable from RunConfig (else its float fields would be missed here)
    reachable = {RunConfig} | {typing.get_args(t)[0] if typing.get_args(t) else t
                               for c in classes for t in typing.get_type_hints(c).values()}
    assert classes <= reachable


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path, cls, name", FLOAT_FIELDS, ids=[p for p, _, _ in FLOAT_FIELDS])
def test_nan_and_infinity_are_refused_at_load_naming_the_field(path, cls, name, value):
    yaml_value = {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    with pytest.raises(ConfigError) as exc:
        load_run_config(None, [f"{path}={yaml_value}"])
    assert str(exc.value) == f"config field '{path}' = {value!r}: must be a finite number (not NaN or infinity)"
    with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.{name} = {value!r}: must be a finite number"):
        cls(**{name: value})


# --------------------------------------------------------------------------------------------
# 6. Errors that say what is wrong


@pytest.mark.parametrize("content, cause", [
    (b'{"q": "1+1?", "a": "2"}\n{"q": "2+2?", "a": \n{"q": "3+3?", "a": "6"}\n',
     "line 2: not valid JSON (Expecting value at column 20)"),
    (b'{"q": "1+1?", "a": "2"}\n{"q": "\\ud800?", "a": "4"}\n',
     "line 2: a lone surrogate ('\\ud800') in a string; it is not a character: remove it or pair it"),
    (b'{"q": "1+1?", "a": "2"}\n{"q": "\xed\xa0\x80?", "a": "4"}\n',
     "line 2: not valid UTF-8 (invalid continuation byte at byte 8)"),
], ids=["malformed", "lone surrogate escape", "invalid utf-8"])
def test_a_bad_jsonl_task_line_is_named_with_its_file_line_and_cause(tmp_path, capsys, content, cause):
    from tje_hf.config import TaskConfig
    from tje_hf.tasks import load_task

    data = tmp_path / "qa.jsonl"
    data.write_bytes(content)
    with pytest.raises(TaskError) as exc:
        load_task(TaskConfig(name="local", path=str(data), columns={"question": "q", "answer": "a"}))
    assert str(exc.value) == f"task.path = {str(data)!r}: {data} {cause}"
    path = small_config(tmp_path, task={"name": "local", "path": str(data), "columns": {"question": "q",
                                                                                      "answer": "a"}})
    assert main(["run", "--config", str(path), "--no-progress"]) == 2
    assert error_lines(capsys) == [f"tje: error: {exc.value}"]


def test_a_csv_task_that_cannot_be_parsed_names_the_file_and_the_cause(tmp_path):
    from tje_hf.config import TaskConfig
    from tje_hf.tasks import load_task

    data = tmp_path / "qa.csv"
    data.write_text('q,a\n"1+1?,2\n')
    with pytest.raises(TaskError, match=r"qa.csv'\: cannot read it as csv \(split 'train'\): Error tokenizing "
                                        r"data. C error: EOF inside string"):
        load_task(TaskConfig(name="local", path=str(data), columns={"question": "q", "answer": "a"}))


def test_a_truncated_config_json_under_export_names_the_file(tmp_path, capsys):
    run = build_run(tmp_path / "run")
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])
    assert main(["export", str(run), "--csv", str(tmp_path / "t.csv")]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and f"{run / 'config.json'}: not valid JSON" in err[0], err


def test_export_into_a_closed_pipe_ends_quietly(tmp_path):
    run = build_run(tmp_path / "run")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte (`| head -0`): every write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "tje_hf.cli", "export", str(run), "--csv", "-"], env=ENV,
                              check=False, cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (128 + signal.SIGPIPE, "")


def test_a_full_device_is_named_with_the_file_and_nothing_is_lost(tmp_path, capsys):
    """``/dev/full`` fails every write with ENOSPC, as a full disk does."""
    run = build_run(tmp_path / "run")
    target = tmp_path / "table.csv"
    target.symlink_to("/dev/full")
    assert main(["export", str(run), "--csv", str(target)]) == 2
    assert error_lines(capsys) == [(f"tje: error: no space left on /dev while writing {target}; nothing written "
                                    "was lost; free space and run the same command")]
    assert target.is_symlink() and os.readlink(target) == "/dev/full"  # written through, never replaced


FULL_DISK = textwrap.dedent("""
    # In a private mount namespace: a 512 KiB tmpfs at SMALL holds a copy of the run and a file
    # that fills it, less one page (4 KiB): room for about half of the regrade.
    import os, shutil, sys
    from pathlib import Path
    from tje_hf.cli import main
    src, small = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.copytree(src, small / "run")
    filler = small / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass
    os.truncate(filler, os.path.getsize(filler) - 4096)
    print("rc", main(["regrade", str(small / "run")]), flush=True)
    filler.unlink()  # free space, run the same command
    print("rc", main(["regrade", str(small / "run")]), flush=True)
    print("rc", main(["calibrate", str(small / "run")]), flush=True)
    lines = (small / "run" / "regrades.jsonl").read_bytes().splitlines()
    print("regrade lines", len(lines), flush=True)
""")


def test_a_full_disk_during_regrade_is_one_line_and_the_next_regrade_works(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], check=False, capture_output=True).returncode != 0:
        pytest.skip("needs unshare (a user and mount namespace) to mount a small tmpfs")
    out = regrade_run(tmp_path, size=40)  # 40 regrade lines: about 8 KB, more than the room left
    small = tmp_path / "small"
    small.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    mount = f'mount -t tmpfs -o size=512k tmpfs "{small}" && exec "{sys.executable}" "{script}" "{out}" "{small}"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", mount], check=False, env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("tje:")]
    assert err == [(f"tje: error: no space left on {small} while writing {small / 'run' / 'regrades.jsonl'}; "
                    "nothing written was lost; free space and run the same command")], proc.stderr
    said = [line for line in proc.stdout.splitlines() if line.startswith(("rc ", "regrade lines "))]
    assert said[:3] == ["rc 2", "rc 0", "rc 0"], proc.stdout
    n = int(said[3].split()[-1])
    assert 40 < n < 80  # the lines written whole before the disk filled (the torn one cut), then a whole regrade


# --------------------------------------------------------------------------------------------
# 7. A problem that cannot fit the context is recorded as such; its batch-mates go on


def test_a_problem_that_cannot_fit_is_recorded_and_its_batch_mates_go_on(tmp_path, smollm2, capsys):
    rows = [{"id": "short", "q": "1+1?", "a": "2"}, {"id": "long", "q": "word " * 400, "a": "3"},
            {"id": "after", "q": "2+2?", "a": "4"}]
    path = local_qa_config(tmp_path, smollm2, rows, context=256,  # room for both steps of "short"
                           batch_size=2, refine={"steps": 2}, decode={"max_new_tokens": 4})
    assert main(["run", "--config", str(path), "--no-progress"]) == 0
    records = {r["problem_id"]: r for r in read_records(tmp_path / "run")}
    assert list(records) == ["short", "long", "after"]
    long = records["long"]
    assert (long["stopped"], long["n_steps"], long["steps"]) == ("context_full", 0, [])
    assert long["prompt"].count("word") == 400  # the prompt that did not fit is kept
    assert [records[p]["n_steps"] for p in ("short", "after")] == [2, 2]
    assert main(["run", "--config", str(path), "--no-progress"]) == 0  # a resume has nothing left to do
    assert len(read_records(tmp_path / "run")) == 3
    capsys.readouterr()
    assert main(["calibrate", str(tmp_path / "run")]) == 0  # the problem that never ran is left out
    cal = json.loads(capsys.readouterr().out)
    assert cal["n_c"] + cal["n_i"] + cal["n_excluded"] == 2
    assert main(["report", str(tmp_path / "run")]) == 0
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "2 problems" in md and "1 more problems did not fit the model's context and ran no step" in md
    assert main(["view", str(tmp_path / "run")]) == 0


# --------------------------------------------------------------------------------------------
# 8. A top-k over the vocabulary is refused by the Python API too


def test_generate_with_entropy_refuses_a_top_k_over_the_vocabulary(smollm2):
    from tje_hf.generation.hf import generate_with_entropy

    with pytest.raises(ConfigError, match=r"^SignalConfig.ks = \(20, 100000\): \[100000\] exceed the model's "
                                          r"vocabulary of 49152 tokens; use top-k sizes up to 49152$"):
        generate_with_entropy(smollm2.model, smollm2.tokenizer, "1+1=",
                              DecodeConfig(max_new_tokens=2, signals=SignalConfig(ks=(20, 100000))))
