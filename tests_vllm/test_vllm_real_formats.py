"""The real gpt-oss and Qwen3 formats end to end through the vLLM backend, and against the HF backend.

The checkpoints, problems, forced completions and checks are those of
``tests/test_real_formats_e2e.py`` (``tests/real_formats.py``): a tiny random-weight
``GptOssForCausalLM`` (sliding-window layers, sinks) and ``Qwen3MoeForCausalLM`` at the real
vocabulary sizes with the real tokenizers and chat templates, loaded by ``load_vllm_model`` and by
``load_model`` from the same local directory. A vLLM logits processor (:class:`ForceOnVllm`,
given to the engine like any ``logits_processors`` plugin) forces the real-format completion;
vLLM takes its raw log-probabilities before any logits processor, so the signals are the model's
own, as on the HF side.

Per format, one run on each backend with the same config, then:

* both records pass ``check_forced_run`` (tokens, per-token segment labels, counts, answers, grades);
* both backends were handed the same prompt ids at every call (step 1 and the template-history
  step 2, which drops the reasoning), and recorded the same prompts, tokens and segment labels;
* the signals vLLM can compute agree with the HF tracker's per token (float32 on both), and the two
  that need the full vocabulary are recorded as missing, not invented;
* from step 2 on vLLM serves the earlier conversation from its prefix cache (whole 32-token blocks);
* calibration, the report and the viewer run on the vLLM run.

The engines are built in this process one after another (the tiny Llama of the other modules, then
these two mixture-of-experts models): ``VllmBackend.shutdown`` must leave nothing behind that stops
the next one from loading.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
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
from vllm.distributed.parallel_state import model_parallel_is_initialized
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from tje_hf.analysis.calibration import calibrate_records
from tje_hf.analysis.report import write_report
from tje_hf.generation.kvcache import longest_common_prefix
from tje_hf.generation.vllm import UNAVAILABLE_SIGNALS
from tje_hf.models.loading import load_model, load_vllm_model
from tje_hf.records import read_trace
from tje_hf.runner import run
from tje_hf.viewer import write_viewer

BLOCK_SIZE = 32
#: Per-token agreement of the signals vLLM computes with the HF tracker's, float32 on both engines:
#: different attention and MoE kernels leave up to ~1.5e-5 (printed in the terminal summary).
ENTROPY_ATOL = 2e-4  # bits
LOGPROB_ATOL = 2e-4  # nats


class ForceOnVllm(LogitsProcessor):
    """vLLM (v1) logits processor: in every request, every logit -inf but the next token of
    ``ForceOnVllm.forced`` (then its last token). Set ``forced`` before generating; the engine
    runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the class attribute is shared."""

    forced: ClassVar[list[int]] = []

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.outputs: dict[int, list[int]] = {}  # batch row -> the request's live output ids

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.outputs.pop(index, None)
        for index, _params, _prompt, output_ids in batch_update.added:
            self.outputs[index] = output_ids
        for a, b, direction in batch_update.moved:
            moved_a, moved_b = self.outputs.pop(a, None), self.outputs.pop(b, None)
            if moved_a is not None:
                self.outputs[b] = moved_a
            if moved_b is not None and direction.name == "SWAP":
                self.outputs[a] = moved_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, output_ids in self.outputs.items():
            token = self.forced[min(len(output_ids), len(self.forced) - 1)]
            logits[row] = float("-inf")
            logits[row, token] = 0.0
        return logits


class PromptSpy:
    """Wraps ``backend.generate`` to keep the prompt ids of every call."""

    def __init__(self, monkeypatch, backend):
        self.prompts: list[list[list[int]]] = []
        original = backend.generate

        def generate(prompt_token_ids, *args, **kwargs):
            self.prompts.append([list(map(int, p)) for p in prompt_token_ids])
            return original(prompt_token_ids, *args, **kwargs)

        monkeypatch.setattr(backend, "generate", generate)


@pytest.fixture(scope="module", params=sorted(FORMATS))
def both_runs(request, tmp_path_factory):
    """The forced run of one format on each backend: (name, completion, {backend: (out_dir, prompts)})."""
    name = request.param
    completion = forced_completion(name)
    base = tmp_path_factory.mktemp(name)
    spec = model_spec(write_model_dir(name, base / "model"))
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        lm = load_vllm_model(spec, max_model_len=512, enforce_eager=True, block_size=BLOCK_SIZE, seed=0,
                             logits_processors=[ForceOnVllm])
        assert lm.family == FORMATS[name].family
        ForceOnVllm.forced = completion.ids
        spy = PromptSpy(mp, lm.backend)
        cfg = run_config(spec, completion, base / "vllm")
        try:
            run(cfg, lm=lm, task=forced_task(), progress=False)
        finally:
            lm.backend.shutdown()
        assert not model_parallel_is_initialized()  # nothing left behind for the next engine
        runs["vllm"] = (cfg.out_dir, spy.prompts)
    with pytest.MonkeyPatch.context() as mp:
        lm = load_model(spec, check_memory=False)
        force_on_hf(mp, completion.ids)
        spy = PromptSpy(mp, lm.backend)
        cfg = run_config(spec, completion, base / "hf")
        run(cfg, lm=lm, task=forced_task(), progress=False)
        runs["hf"] = (cfg.out_dir, spy.prompts)
    return name, completion, runs


@pytest.mark.engine
@pytest.mark.slow
def test_vllm_records_the_real_format(both_runs, tmp_path):
    name, completion, runs = both_runs
    out_dir, prompts = runs["vllm"]
    records = check_forced_run(out_dir, name, completion)
    for row, rec in enumerate(records):
        second = rec["steps"][1]
        # the engine's prefix cache serves the whole blocks that step 2's prompt shares with step 1's
        # prompt and completion (vLLM computes at least a prompt's last token)
        shared = longest_common_prefix(prompts[0][row] + completion.ids, prompts[1][row])
        assert second["cache"] == "prefix-cache", second
        assert second["reused_tokens"] == BLOCK_SIZE * (min(shared, len(prompts[1][row]) - 1) // BLOCK_SIZE) > 0, \
            (shared, second["reused_tokens"])
        for s in rec["steps"]:  # missing (null on disk, NaN when read), not invented
            assert all(math.isnan(s["signals"]["all"][c]) for c in UNAVAILABLE_SIGNALS), s["signals"]["all"]

    cal = calibrate_records(records, signal="topk_entropy@20", segment="all", step=1)
    assert json.dumps(cal.to_json())
    report = write_report(out_dir, tmp_path / "report")
    assert report.name == "report.md" and report.stat().st_size > 200
    viewer = Path(write_viewer(Path(out_dir), str(tmp_path / "viewer.html")))
    assert "p-right" in viewer.read_text() and viewer.stat().st_size > 1000


@pytest.mark.engine
@pytest.mark.slow
def test_both_backends_build_the_same_prompts_tokens_and_segments(both_runs, measurements):
    name, completion, runs = both_runs
    (v_dir, v_prompts), (h_dir, h_prompts) = runs["vllm"], runs["hf"]
    assert len(v_prompts) == len(h_prompts) == 2  # one batch of two problems per step
    assert v_prompts == h_prompts  # every prompt id of steps 1 and 2
    v_records = check_forced_run(v_dir, name, completion)
    h_records = check_forced_run(h_dir, name, completion)
    worst = {"topk_entropy@20": 0.0, "deepconf_confidence": 0.0, "token_logprob": 0.0}
    for v, h in zip(v_records, h_records, strict=True):
        assert v["prompt"] == h["prompt"] and v["prompt_hash"] == h["prompt_hash"]
        for sv, sh in zip(v["steps"], h["steps"], strict=True):
            for key in ("prompt_tokens", "n_generated", "stop_reason", "counts", "answer", "answer_text", "correct"):
                assert sv[key] == sh[key], key
            tv, th = read_trace(v_dir, sv["trace"]), read_trace(h_dir, sh["trace"])
            columns = list(sv["trace"]["columns"])
            assert columns == list(sh["trace"]["columns"])
            np.testing.assert_array_equal(tv["token"], th["token"])
            np.testing.assert_array_equal(tv["segment"], th["segment"])
            for column, so_far in worst.items():
                i = columns.index(column)
                worst[column] = max(so_far, float(np.abs(tv["values"][:, i] - th["values"][:, i]).max()))
            for column in UNAVAILABLE_SIGNALS:
                assert np.isnan(tv["values"][:, columns.index(column)]).all()
                assert not np.isnan(th["values"][:, columns.index(column)]).any()
    assert worst["topk_entropy@20"] <= ENTROPY_ATOL, worst
    assert worst["deepconf_confidence"] <= LOGPROB_ATOL and worst["token_logprob"] <= LOGPROB_ATOL, worst
    assert all(math.isfinite(d) for d in worst.values())
    measurements[f"real format {name}"] = {"tokens": len(completion.ids), "worst": worst}
