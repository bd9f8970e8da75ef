"""End to end on real token ids: tiny random-weight gpt-oss and Qwen3-MoE checkpoints at the real
vocabulary sizes (201,088 and 151,936) with the real tokenizers and chat templates, loaded by
``load_model`` from a local directory and run through runner -> records -> calibration -> report
-> viewer, with a forced real-format completion (``real_formats``).

``tests_vllm/test_vllm_real_formats.py`` runs the same checkpoints and checks through the vLLM
backend and compares the two backends' prompts, tokens and segment labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_formats import (
    FORMATS,
    check_forced_run,
    force_on_hf,
    forced_completion,
    forced_task,
    model_spec,
    run_config,
    write_model_dir,
)

from tje_hf.analysis.calibration import calibrate_records
from tje_hf.analysis.report import write_report
from tje_hf.models.loading import load_model
from tje_hf.runner import run
from tje_hf.viewer import write_viewer


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_real_format_run_records_calibration_report_viewer(name, tmp_path, monkeypatch):
    completion = forced_completion(name)
    spec = model_spec(write_model_dir(name, tmp_path / "model"))
    lm = load_model(spec, check_memory=False)
    assert lm.family == FORMATS[name].family  # detected from the checkpoint, as for the real model
    calls = force_on_hf(monkeypatch, completion.ids)
    cfg = run_config(spec, completion, tmp_path / "run")
    summary = run(cfg, lm=lm, task=forced_task(), progress=False)
    assert calls, "the forcing wrapper was not called"
    assert summary.n_problems == 2

    records = check_forced_run(cfg.out_dir, name, completion)
    for rec in records:
        first, second = rec["steps"]
        assert first["reused_tokens"] == 0 and first["cache"] == "none", first
        # the explicit cache is reused up to the common prefix (step 1's whole prompt, less at most
        # the generation header that step 2 renders differently), and only the rest is prefilled
        assert second["cache"] == "reused" and second["reused_tokens"] >= first["prompt_tokens"] - 8, second
        assert second["reused_tokens"] + second["prefilled_tokens"] == second["prompt_tokens"]

    cal = calibrate_records(records, signal="topk_entropy@20", segment="all", step=1)
    assert json.dumps(cal.to_json())
    report = write_report(cfg.out_dir, tmp_path / "report")
    assert report.name == "report.md" and report.stat().st_size > 200
    viewer = Path(write_viewer(Path(cfg.out_dir), str(tmp_path / "viewer.html")))
    page = viewer.read_text()
    assert "p-right" in page and viewer.stat().st_size > 1000
