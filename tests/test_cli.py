"""The ``tje`` command line: every command's help, packaged config names, one-line errors (exit 2,
the traceback with ``--debug``), ``tje run --limit`` and what it prints at the end, ``tje view
--max-alternatives``, a Hub task offline.

Nothing here loads a model except the one ``slow`` test: ``tje run`` is otherwise driven as far as
its config or its task, which fail first, or through a stand-in for the runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_runs import N_ALT, build_run, hand_records, write_run

import tje_hf.runner
from tje_hf.cli import build_parser, main
from tje_hf.config import packaged_configs
from tje_hf.records import DERIVED_FILES, RunDir
from tje_hf.runner import summarize
from tje_hf.viewer import read_payload

COMMANDS = ("run", "demo", "configs", "report", "compare", "view", "calibrate", "merge", "export", "regrade")


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


def subcommand_summaries() -> dict[str, str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {choice.dest: choice.help for choice in sub._choices_actions}


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = flat(capsys.readouterr().out)
    assert out.startswith("usage: tje")
    assert "Think Just Enough" in out and "--config" in out  # description and epilog
    summaries = subcommand_summaries()
    assert set(summaries) == set(COMMANDS)
    for name, summary in summaries.items():
        assert f"{name} {flat(summary)}" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help_describes_the_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = flat(capsys.readouterr().out)
    assert out.startswith(f"usage: tje {command}")
    summary = subcommand_summaries()[command]
    assert summary and flat(summary) in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: tje" in capsys.readouterr().err


def test_run_takes_a_packaged_config_name(capsys):
    """The name resolves to the packaged YAML: the error is about the override applied to it."""
    name = "gpt-oss-20b_aime24"
    assert name in packaged_configs("runs")
    assert main(["run", "--config", name, "decode.no_such_field=1"]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("tje: error: ")
    assert "'decode.no_such_field'" in err[0] and "max_new_tokens" in err[0]
    assert captured.out == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--config", "no-such-config"], "no packaged config of that name"),
    (["run", "--config", "demo", "--set", "refine.steps=zero"],
     "'refine.steps' = 'zero': expected an integer"),
    (["run", "--config", "demo", "not-an-override"], "expected key.path=value"),
])
def test_bad_run_config_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("tje: error: ") and message in err[0]


@pytest.mark.parametrize("command", ["report", "calibrate", "view", "compare", "merge", "export"])
def test_missing_or_empty_run_dir_is_one_line_and_exit_2(command, tmp_path, capsys):
    """A typo'd RUN_DIR is a one-line error, and nothing is created there (view used to write
    NO-SUCH-RUN/viewer.html)."""
    missing = tmp_path / "no-such-run"
    extra = ["--out", str(tmp_path / "cmp")] if command == "compare" else []
    assert main([command, str(missing), *extra]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0] == f"tje: error: {missing}: no such run directory"
    assert not missing.exists() and not (tmp_path / "cmp").exists()
    if command == "merge":
        return
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "records.jsonl").touch()
    assert main([command, str(empty), *extra]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "records.jsonl" in err[0]
    assert sorted(p.name for p in empty.iterdir()) == ["records.jsonl"]


def test_bad_config_fails_before_torch_loads():
    """``tje run`` reads its config before importing the runner: a typo costs no torch import."""
    code = ("import sys\nfrom tje_hf.cli import main\n"
            "rc = main(['run', '--config', 'demo', 'decode.no_such_field=1', '--no-progress'])\n"
            "print(rc, sorted({'torch', 'transformers', 'vllm'} & set(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.split("\n")[0] == "2 []", proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("tje: error: unknown config key")


def one_error_line(capsys) -> str:
    """The single line a failed command wrote to stderr."""
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("tje: error: "), err
    return err[0]


# --------------------------------------------------------------------------------------------
# tje run: --limit, the next commands


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """``tje_hf.runner.run`` replaced by a stand-in that writes the hand-built run into
    ``cfg.out_dir`` and remembers the config it was given."""
    seen = {}

    def run(cfg, **kwargs):
        seen["cfg"] = cfg
        write_run(Path(cfg.out_dir), hand_records())
        return summarize(cfg.out_dir, n_new=6)

    monkeypatch.setattr(tje_hf.runner, "run", run)
    return seen


def test_run_limit_is_task_limit_and_the_end_names_the_next_commands(fake_run, tmp_path, capsys):
    out = tmp_path / "my run"
    assert main(["run", "--config", "demo", "--limit", "3", f"out_dir={out}", "--no-progress"]) == 0
    assert fake_run["cfg"].task.limit == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4] == f"records: {out / 'records.jsonl'} (6 problems, 6 new, 0 s)"
    quoted = f"'{out}'"  # shell-quoted: the path has a space
    assert lines[-3].split("#")[0].split() == ["next:", "tje", "report", *quoted.split()]
    assert lines[-2].split("#")[0].split() == ["tje", "view", *quoted.split()]
    assert lines[-1].split() == ["tje", "export", *quoted.split(), "--csv", *f"'{out / 'records.csv'}'".split()]


def test_run_limit_and_task_limit_agree(fake_run, tmp_path):
    assert main(["run", "--config", "demo", f"out_dir={tmp_path}", "--no-progress"]) == 0
    assert fake_run["cfg"].task.limit is None
    assert main(["run", "--config", "demo", f"out_dir={tmp_path}", "--limit", "2", "--no-progress"]) == 0
    assert fake_run["cfg"].task.limit == 2


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_run_limit_must_be_a_positive_integer(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", "demo", "--limit", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument --limit: {value!r}: expected an integer >= 1" in err


@pytest.mark.slow
def test_run_limit_runs_that_many_problems(tmp_path, capsys):
    """The real thing: the built-in model on the first 2 problems of the demo task, one short step."""
    out = tmp_path / "run"
    assert main(["run", "--config", "demo", "--limit", "2", "refine.steps=1", "decode.max_new_tokens=4",
                 "decode.signals.trace=false", f"out_dir={out}", "--no-progress"]) == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == 2
    assert f"tje report {out}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# tje view --max-alternatives


@pytest.mark.parametrize("n", [None, 2, 0])
def test_view_max_alternatives(n, tmp_path):
    run = build_run(tmp_path / "run")
    extra = [] if n is None else ["--max-alternatives", str(n)]
    assert main(["view", str(run), "--out", str(tmp_path / "v.html"), "--problem", "p-0", *extra]) == 0
    _, problems = read_payload(tmp_path / "v.html")
    steps = problems[0]["steps"]
    expected = N_ALT if n is None else n
    assert [s.get("A", 0) for s in steps] == [expected] * 3
    assert all(len(s.get("alt", [])) == expected * s["n"] for s in steps)


def test_overwrite_knows_every_file_the_analysis_commands_write(tmp_path):
    """``report``, ``view`` and ``export`` at their default paths write only names that
    ``--overwrite`` removes with the run (records.DERIVED_FILES), so no stale report survives it."""
    run = build_run(tmp_path / "run")
    before = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert main(["report", str(run)]) == 0
    assert main(["view", str(run)]) == 0
    assert main(["export", str(run)]) == 0
    assert main(["export", str(run), "--parquet", str(run / "records.parquet")]) == 0
    written = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()} - before
    assert {"report/report.md", "report/hist.png", "viewer.html", "records.csv", "records.parquet"} <= written
    assert written <= set(DERIVED_FILES), written - set(DERIVED_FILES)
    RunDir.open(run, {}, "another", overwrite=True).close()
    assert not any((run / name).exists() for name in DERIVED_FILES) and not (run / "report").exists()


def test_view_max_alternatives_must_not_be_negative(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["view", str(tmp_path), "--max-alternatives", "-1"])
    assert exc.value.code == 2 and "argument --max-alternatives: '-1': expected an integer >= 0" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# One line, exit 2, unless --debug


@pytest.fixture
def hand_run(tmp_path):
    return write_run(tmp_path / "run", hand_records())


@pytest.mark.parametrize(("command", "signal", "message"), [
    ("report", "topk_entropy@7", "signal 'topk_entropy@7' not recorded"),
    ("compare", "topk_entropy@7", "signal 'topk_entropy@7' not recorded"),
    ("calibrate", "topk_entropy@7", "topk_entropy@7"),
    ("calibrate", "no_such_signal", "unknown signal 'no_such_signal'"),
    ("view", "deepconf_confidence", "the viewer colours tokens by entropy"),
])
def test_a_signal_that_was_not_recorded_is_one_line(command, signal, message, hand_run, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "out")] if command == "compare" else []
    assert main([command, str(hand_run), "--signal", signal, *extra]) == 2
    assert message in one_error_line(capsys)


def test_a_step_that_was_not_recorded_is_one_line(hand_run, capsys):
    assert main(["calibrate", str(hand_run), "--step", "9"]) == 2
    assert "step 9 asked" in one_error_line(capsys)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, hand_run, capsys):
    argv = ["calibrate", str(hand_run), "--step", "9"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(ValueError, match="step 9 asked"):
        main(argv)
    assert capsys.readouterr().err == ""


def test_debug_is_off_by_default():
    assert build_parser().parse_args(["configs"]).debug is False
    assert build_parser().parse_args(["--debug", "configs"]).debug is True
    assert build_parser().parse_args(["configs", "--debug"]).debug is True


def test_an_unexpected_error_is_one_line_that_says_how_to_see_it(hand_run, monkeypatch, capsys):
    import tje_hf.analysis.report

    def broken(*args, **kwargs):
        raise KeyError("no_such_key")

    monkeypatch.setattr(tje_hf.analysis.report, "write_report", broken)
    assert main(["report", str(hand_run)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("tje: error: unexpected KeyError at test_cli.py:")
    assert "'no_such_key'" in line and line.endswith("(`tje --debug report ...` shows the traceback)")
    with pytest.raises(KeyError):
        main(["--debug", "report", str(hand_run)])


def test_a_multi_line_message_is_printed_on_one_line(hand_run, monkeypatch, capsys):
    import tje_hf.analysis.report

    def broken(*args, **kwargs):
        raise PermissionError("first line\nsecond line")

    monkeypatch.setattr(tje_hf.analysis.report, "write_report", broken)
    assert main(["report", str(hand_run)]) == 2
    assert one_error_line(capsys) == "tje: error: first line second line"


# --------------------------------------------------------------------------------------------
# A Hub task offline


def offline_env(tmp_path) -> dict[str, str]:
    """Offline, with empty Hub and datasets caches: nothing is cached, nothing can be fetched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),
               HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"), TOKENIZERS_PARALLELISM="false")
    return env


def test_hub_task_offline_is_one_line_that_names_task_path(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tje_hf.cli", "run", "--config", "gpt-oss-20b_aime24", "--limit",
                           "2", f"out_dir={tmp_path / 'run'}", "--no-progress"], env=offline_env(tmp_path),
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    line = err[0]
    assert line.startswith("tje: error: task 'aime24': dataset 'HuggingFaceH4/aime_2024'")
    assert "task.path=<local copy>" in line and "JSONL, CSV or parquet file" in line
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_missing_local_model_directory_is_named_as_such(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{name_or_path: {tmp_path / 'no-such-model'}}}\ntask: {{name: arith, size: 2}}\n"
                   f"out_dir: {tmp_path / 'out'}\n")
    assert main(["run", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tje: error: model.name_or_path = ") and "no such directory" in err[-1]
    assert "Repo id" not in err[-1]
