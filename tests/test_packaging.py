"""What a fresh clone and an installed wheel need: every file the docs name is in git, every
packaged config loads, the wheel holds the package's data files, and the main job runs from the
installed wheel in a working directory outside the checkout."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from needs import unavailable

from tje_hf.cli import main
from tje_hf.config import ConfigError, RunConfig, load_run_config, packaged_configs

ROOT = Path(__file__).resolve().parent.parent
PATH_RE = re.compile(
    r"(?<![\w./~$-])((?:\.\./)?[A-Za-z0-9_.*-]+(?:/[A-Za-z0-9_.*-]+)+"
    r"\.(?:py|sh|yaml|yml|md|png|json|jsonl|html|js|css|toml|csv|jinja))\b")
# Paths the docs name that a run or a script writes, not files of the repository.
OUTPUT_PREFIXES = ("runs/", "RUN_DIR/", "report/", "shards/", "~/", "$")
OUT_ARG_RE = re.compile(r"(?:--out[= ]|default=\")(\S+)")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        unavailable("not a git checkout")
    return out.stdout.splitlines()


def named_paths() -> list[tuple[str, str]]:
    """(document, path) for every file path written in README.md, docs/ and scripts/."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "scripts").iterdir())]
    found = []
    for doc in docs:
        if not doc.is_file() or doc.suffix not in {".md", ".py", ".sh"}:
            continue
        text = doc.read_text()
        outputs = set(OUT_ARG_RE.findall(text))
        for path in PATH_RE.findall(text):
            if path.startswith(OUTPUT_PREFIXES) or path in outputs or "://" in path:
                continue
            found.append((str(doc.relative_to(ROOT)), path))
    return found


def test_every_file_the_docs_name_is_tracked():
    tracked = set(tracked_files())
    missing = []
    for doc, path in named_paths():
        # A path is read relative to the repository, to the naming file, or to the package.
        bases = ["", str(Path(doc).parent) + "/", "tje_hf/"]
        candidates = [os.path.normpath(base + path) for base in bases]
        if not any(c in tracked or fnmatch.filter(tracked, c) for c in candidates):
            missing.append(f"{doc}: {path}")
    assert len(named_paths()) > 30  # the scan itself works
    assert not missing, "named but not tracked by git:\n" + "\n".join(missing)


def test_run_outputs_are_ignored_but_configs_are_not():
    tracked = set(tracked_files())
    for name in packaged_configs("runs"):
        assert f"tje_hf/configs/runs/{name}.yaml" in tracked
    for name in packaged_configs("models"):
        assert f"tje_hf/configs/models/{name}.yaml" in tracked
    ignored = subprocess.run(["git", "check-ignore", "runs/demo/records.jsonl", "tje_hf/configs/runs/demo.yaml"],
                             cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    assert ignored == ["runs/demo/records.jsonl"]


def test_every_packaged_config_loads_and_validates():
    runs = packaged_configs("runs")
    models = packaged_configs("models")
    assert "demo" in runs and len(models) == 8
    for name in runs:
        cfg = load_run_config(name)
        assert isinstance(cfg, RunConfig) and cfg.out_dir == f"runs/{name}"
    paper_models = sorted(m for m in models if m != "smollm2-135m-instruct")
    assert len(runs) == 1 + 3 * len(paper_models)
    for model in paper_models:
        model_data = yaml.safe_load(models[model].read_text())
        for task in ("aime24", "aime25", "gpqa_diamond"):
            cfg = load_run_config(f"{model}_{task}")
            assert cfg.task.name == task
            assert cfg.model == load_run_config(None, [f"model={json.dumps(model_data)}"]).model
            # The paper's settings.
            assert (cfg.refine.steps, cfg.decode.max_new_tokens, cfg.decode.temperature, cfg.refine.policy) == \
                (4, 8192, 0.7, "all")


def test_demo_config_is_the_documented_demo():
    cfg = load_run_config("demo")
    assert cfg.model.name_or_path == "builtin:smollm2"
    assert (cfg.task.name, cfg.task.size, cfg.task.digits) == ("arith", 64, 1)
    assert (cfg.batch_size, cfg.decode.temperature, cfg.refine.steps, cfg.decode.max_new_tokens) == (16, 0.7, 4, 48)
    assert cfg.decode.signals.trace and cfg.decode.signals.trace_alternatives == 20


def test_config_names_and_paths_resolve(tmp_path, monkeypatch):
    by_name = load_run_config("gpt-oss-20b_aime24")
    assert load_run_config("gpt-oss-20b_aime24.yaml") == by_name
    # A user's own file elsewhere may name a packaged model config.
    own = tmp_path / "elsewhere" / "mine.yaml"
    own.parent.mkdir()
    own.write_text("model: gpt-oss-20b\ntask: {name: aime25}\nout_dir: runs/mine\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(own)
    assert cfg.model == by_name.model and cfg.task.name == "aime25"
    # A model config next to the user's file wins over the packaged one of the same name.
    (own.parent / "gpt-oss-20b.yaml").write_text("name_or_path: /models/my-gpt-oss\nfamily: gpt-oss\n")
    assert load_run_config(own).model.name_or_path == "/models/my-gpt-oss"


def test_unknown_names_are_one_line_errors_with_close_matches(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_run_config("gpt-oss-20b_aime42")
    message = str(err.value)
    assert "\n" not in message
    assert "close matches: gpt-oss-20b_aime24" in message or "close matches: gpt-oss-20b_aime25" in message
    bad_model = tmp_path / "run.yaml"
    bad_model.write_text("model: gpt-oss-21b\n")
    with pytest.raises(ConfigError, match=r"'model' = 'gpt-oss-21b'.*close matches: gpt-oss-20b") as err:
        load_run_config(bad_model)
    assert ".yaml.yaml" not in str(err.value)


def test_tje_configs_lists_one_line_per_packaged_config(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "model", "task", "steps", "max", "new", "tokens"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == set(packaged_configs("runs"))
    assert rows["gpt-oss-20b_aime24"] == ["openai/gpt-oss-20b", "aime24", "4", "8192"]
    assert rows["demo"] == ["builtin:smollm2", "arith", "4", "48"]


def test_tje_run_with_an_unknown_name_exits_2(capsys):
    assert main(["run", "--config", "qwen3-30b-a3b_aime24"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tje: error: run config 'qwen3-30b-a3b_aime24'")
    assert "qwen3-30b-a3b-instruct-2507_aime24" in err[0]


# --------------------------------------------------------------------------------------------
# The wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (found,) = out.glob("tje_hf-*.whl")
    return found


def test_wheel_holds_every_non_python_file_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    data_files = [f for f in tracked_files() if f.startswith("tje_hf/") and not f.endswith(".py")]
    assert any(f.startswith("tje_hf/configs/runs/") for f in data_files)
    assert [f for f in data_files if f not in names] == []
    assert "tje_hf/configs/runs/demo.yaml" in names
    assert "tje_hf/configs/models/gpt-oss-20b.yaml" in names


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel_outside_the_checkout(wheel, tmp_path):
    """The main job, shortened, through the wheel's own `tje` entry point: records, the report
    with its plots and the viewer come out, and nothing is read from the source tree."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import tje_hf; print(tje_hf.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site)  # the wheel's copy, not the checkout's
    done = subprocess.run([sys.executable, str(site / "bin" / "tje"), "demo", "--problems", "4", "--steps", "2",
                           "--max-new-tokens", "16", "--out", "out", "--no-progress"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = work / "out"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["steps"]) == 2 for r in records)
    assert all(0 < s["n_generated"] <= 16 for r in records for s in r["steps"])
    assert (out / "report" / "report.md").stat().st_size > 0
    assert len(list((out / "report").glob("*.png"))) >= 3
    assert "<html" in (out / "viewer.html").read_text()[:500].lower()
    assert f"viewer:  {out.name}/viewer.html" in done.stdout or "viewer.html" in done.stdout
