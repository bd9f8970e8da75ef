"""One table of bad inputs through `tje`: each ends in one line on stderr with exit code 2, no
traceback, and leaves every byte already on disk as it was. (The run-directory damage cases with a
model, concurrent writers and resumes are in test_run_dir.py and test_robustness.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_runs import build_run

from tje_hf.cli import main


def snapshot(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_yaml(tmp: Path, body: str) -> str:
    path = tmp / "run.yaml"
    path.write_text(f"model: {{name_or_path: builtin:smollm2}}\nout_dir: {tmp / 'out'}\n{body}")
    return str(path)


def with_records(tmp: Path, lines: list[str]) -> Path:
    run = build_run(tmp / "run")
    good = (run / "records.jsonl").read_text().splitlines()
    (run / "records.jsonl").write_text("\n".join(good[:1] + lines + good[1:]) + "\n")
    return run


def without_problem_id(tmp: Path) -> Path:
    run = build_run(tmp / "run")
    recs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    del recs[0]["problem_id"]
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def bad_config_json(tmp: Path) -> Path:
    run = build_run(tmp / "run")
    (run / "config.json").write_text("{not json")
    return run


def empty_dir(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


# (name, argv builder (tmp -> argv), a fragment of the one error line)
CASES = [
    ("empty task file", lambda t: ["run", "--config", run_yaml(t, f"task: {{name: local, path: {(t / 'e.jsonl')}, "
                                   "columns: {question: q, answer: a}}\n")], "has no rows"),
    ("negative temperature", lambda t: ["run", "--config", run_yaml(t, ""), "decode.temperature=-1"], "temperature"),
    ("zero steps", lambda t: ["run", "--config", run_yaml(t, ""), "refine.steps=0"], "steps"),
    ("top-k of zero", lambda t: ["run", "--config", run_yaml(t, ""), "decode.signals.ks=[0]"], "ks"),
    ("gate without tau", lambda t: ["run", "--config", run_yaml(t, ""), "refine.policy=gate"], "tau"),
    ("unknown key", lambda t: ["run", "--config", run_yaml(t, ""), "decode.temprature=0.5"], "temprature"),
    ("unquoted YAML date", lambda t: ["run", "--config", run_yaml(t, "system_prompt: 2025-08-05\n")], "system_prompt"),
    ("out_dir is a file", lambda t: ["run", "--config", run_yaml(t, ""), f"out_dir={t / 'e.jsonl'}"], "e.jsonl"),
    ("null record line", lambda t: ["report", str(with_records(t, ["null"]))], "null"),
    ("record without problem_id", lambda t: ["report", str(without_problem_id(t))], "problem_id"),
    ("config.json not JSON", lambda t: ["report", str(bad_config_json(t))], "config.json"),
    ("report on a missing dir", lambda t: ["report", str(t / "nope")], "nope"),
    ("report on an empty dir", lambda t: ["report", str(empty_dir(t))], "empty"),
    ("calibrate on a missing dir", lambda t: ["calibrate", str(t / "nope")], "nope"),
    ("calibrate on an empty dir", lambda t: ["calibrate", str(empty_dir(t))], "empty"),
    ("view on a missing dir", lambda t: ["view", str(t / "nope")], "nope"),
    ("view with an unknown signal", lambda t: ["view", str(build_run(t / "run")), "--signal", "entropy"], "entropy"),
    ("view with a confidence signal", lambda t: ["view", str(build_run(t / "run")), "--signal",
                                                 "deepconf_confidence"], "deepconf_confidence"),
    ("report with an unknown signal", lambda t: ["report", str(build_run(t / "run")), "--signal", "entropy"],
     "entropy"),
    ("export of a missing dir", lambda t: ["export", str(t / "nope"), "--csv", str(t / "x.csv")], "nope"),
]


@pytest.mark.parametrize("name, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, capsys, name, argv, fragment):
    (tmp_path / "e.jsonl").write_text("")
    args = argv(tmp_path)
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main(args) == 2, name
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("tje: error: "), err
    assert "Traceback" not in err[0] and fragment in err[0], err[0]
    assert snapshot(tmp_path) == before  # nothing written, nothing removed
