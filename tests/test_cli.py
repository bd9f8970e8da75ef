"""The ``tje`` command line: every command's help, packaged config names, one-line config errors.

Nothing here loads a model: ``tje run`` is only driven as far as its config, which fails first.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tje_hf.cli import build_parser, main
from tje_hf.config import packaged_configs

COMMANDS = ("run", "demo", "configs", "report", "compare", "view", "calibrate", "merge")


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


@pytest.mark.parametrize("command", ["report", "calibrate", "view", "compare", "merge"])
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
