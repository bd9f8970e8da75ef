"""End to end on real token ids: tiny random-weight gpt-oss and Qwen3-MoE models at the real
vocabulary sizes (201,088 and 151,936) with the real tokenizers and chat templates, through
runner -> records -> calibration -> report -> viewer.

The weights are random, so a test-only logits processor forces a real-format completion (the
harmony channels of gpt-oss; Qwen3's ``...</think>`` then the answer). It runs after the tracker
(which sees the raw logits first) and sets every logit but the forced token's to -inf, so that
the segmentation, the answer extraction, the grading and the KV reuse across template-history
steps (which drop the earlier reasoning) all run on the ids the real model would produce.

``HfBackend.generate`` takes no extra logits processors, so the tests wrap the module-level
``generate_batch`` it calls (which does take them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_gpt_oss, build_tiny_qwen3_moe
from test_reference_formats import reference_dir, reference_tokenizer

from tje_hf.analysis.calibration import calibrate_records
from tje_hf.analysis.report import write_report
from tje_hf.config import DecodeConfig, ModelSpec, RefineConfig, RunConfig, SignalConfig
from tje_hf.generation import hf as hf_mod
from tje_hf.generation.hf import HfBackend
from tje_hf.models.loading import LoadedModel
from tje_hf.records import read_records, read_trace
from tje_hf.runner import run
from tje_hf.tasks.base import Problem, Task
from tje_hf.tasks.grading import grade_integer
from tje_hf.viewer import write_viewer

REASONING_TEXT = "We need 6 times 7. That is 42."
ANSWER_TEXT = "The answer is \\boxed{42}."

# (family, reference tokenizer, builder, real vocabulary size, completion pieces)
# The pieces are (text, class): "R" reasoning, "A" answer, "H" header/structural tokens.
FORMATS = {
    "gpt-oss": ("gpt-oss", "gpt-oss", build_tiny_gpt_oss, 201_088, [
        ("<|channel|>analysis<|message|>", "H"), (REASONING_TEXT, "R"),
        ("<|end|><|start|>assistant<|channel|>final<|message|>", "H"), (ANSWER_TEXT, "A"), ("<|return|>", "H")]),
    "qwen3-thinking": ("qwen3-thinking", "qwen3-thinking-2507", build_tiny_qwen3_moe, 151_936, [
        (REASONING_TEXT + "\n", "R"), ("</think>", "H"), ("\n\n" + ANSWER_TEXT, "A"), ("<|im_end|>", "H")]),
}


class ForceCompletion:
    """Logits processor: every logit -inf but the next token of ``forced`` (then its last token)."""

    def __init__(self, forced: list[int]):
        self.forced = forced
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        pos = min(input_ids.shape[1] - self.start, len(self.forced) - 1)
        out = torch.full_like(scores, float("-inf"))
        out[:, self.forced[pos]] = 0.0
        return out


def encode(tok, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def forced_completion(tok, pieces) -> tuple[list[int], dict[str, int]]:
    """The completion's ids and the expected number of reasoning / answer tokens; the pieces must
    tokenize alone as they do together (so the expected counts are the model's)."""
    ids, counts = [], {"R": 0, "A": 0, "H": 0}
    for text, cls in pieces:
        piece = encode(tok, text)
        ids += piece
        counts[cls] += len(piece)
    assert ids == encode(tok, "".join(t for t, _ in pieces)), "pieces tokenize differently when joined"
    return ids, counts


@pytest.fixture
def force(monkeypatch):
    """``force(ids)``: every later HfBackend.generate call forces ``ids`` (a fresh processor per call)."""
    original = hf_mod.generate_batch
    calls = []

    def install(ids: list[int]):
        def generate_batch(*args, logits_processor=(), **kwargs):
            calls.append(1)
            return original(*args, logits_processor=[*logits_processor, ForceCompletion(ids)], **kwargs)

        monkeypatch.setattr(hf_mod, "generate_batch", generate_batch)
        return calls

    return install


def tiny_lm(name: str) -> tuple[LoadedModel, object]:
    family, ref, builder, vocab, _ = FORMATS[name]
    tok = reference_tokenizer(ref)
    assert len(tok) <= vocab
    model = builder(vocab_size=vocab)
    assert model.config.vocab_size == vocab
    # The tiny builders use ids 1/2 for BOS/EOS; the real tokenizer's own ends are the ones that count.
    eos = tok.convert_tokens_to_ids("<|return|>" if name == "gpt-oss" else "<|im_end|>")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = eos, pad, None
    spec = ModelSpec(name_or_path=str(reference_dir(ref)), family=family)
    return LoadedModel(HfBackend(model, tok), spec, family, f"random:{name}", str(reference_dir(ref))), tok


PROBLEMS = [  # the forced answer 42 is right for the first, wrong for the second
    Problem(id="p-right", question="What is 6 times 7? Put your final answer within \\boxed{}.", gold="42"),
    Problem(id="p-wrong", question="What is 6 times 8? Put your final answer within \\boxed{}.", gold="48"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_real_format_run_records_calibration_report_viewer(name, tmp_path, force):
    lm, tok = tiny_lm(name)
    ids, expected = forced_completion(tok, FORMATS[name][4])
    calls = force(ids)
    task = Task(name="forced", problems=PROBLEMS, grader=lambda p, text: grade_integer(text, p.gold), source="test")
    cfg = RunConfig(model=lm.spec,
                    decode=DecodeConfig(max_new_tokens=len(ids) + 4, temperature=0.7,
                                        signals=SignalConfig(trace=True, trace_alternatives=3)),
                    refine=RefineConfig(steps=2, history="template", reuse_cache=True),
                    batch_size=2, seed=5, out_dir=str(tmp_path / name))
    summary = run(cfg, lm=lm, task=task, progress=False)
    assert calls, "the forcing wrapper was not called"
    assert summary.n_problems == 2

    records = read_records(cfg.out_dir)
    assert [r["problem_id"] for r in records] == ["p-right", "p-wrong"]
    for rec in records:
        assert rec["family"] == FORMATS[name][0] and rec["n_steps"] == 2
        for s in rec["steps"]:
            # the whole forced completion, ended by the family's end-of-turn token
            assert s["n_generated"] == len(ids) and s["stop_reason"] == "eos", s
            assert s["counts"]["reasoning"] == expected["R"], (s["counts"], expected)
            assert s["counts"]["answer"] == expected["A"], (s["counts"], expected)
            assert s["counts"]["all"] == len(ids)
            assert s["answer"] == "42"
            assert ANSWER_TEXT in s["answer_text"] and REASONING_TEXT not in s["answer_text"]
            trace = read_trace(cfg.out_dir, s["trace"])
            assert trace["token"].tolist() == ids  # the real ids, as forced
        assert [s["correct"] for s in rec["steps"]] == [rec["problem_id"] == "p-right"] * 2
        first, second = rec["steps"]
        assert first["reused_tokens"] == 0
        # step 2's prompt is step 1's plus the answer (reasoning dropped) and the instruction:
        # the cache is reused up to the common prefix, and only the rest is prefilled
        assert second["cache"] == "reused" and second["reused_tokens"] > 0, second
        assert second["reused_tokens"] + second["prefilled_tokens"] == second["prompt_tokens"]
        assert second["prompt_tokens"] > first["prompt_tokens"]
        # template history drops the reasoning: step 2's prompt is shorter than step 1 + completion
        assert second["prompt_tokens"] < first["prompt_tokens"] + len(ids) + 64
        assert second["reused_tokens"] >= first["prompt_tokens"] - 8

    cal = calibrate_records(records, signal="topk_entropy@20", segment="all", step=1)
    assert json.dumps(cal.to_json())
    report = write_report(cfg.out_dir, tmp_path / "report")
    assert report.name == "report.md" and report.stat().st_size > 200
    viewer = Path(write_viewer(Path(cfg.out_dir), str(tmp_path / "viewer.html")))
    page = viewer.read_text()
    assert "p-right" in page and viewer.stat().st_size > 1000
