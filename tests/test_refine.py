"""The refinement loop: reuse of the KV cache changes nothing but the work done.

With greedy decoding, the loop with cache reuse must produce exactly the tokens of the loop
without it, with per-token signals equal within float32 tolerance, for the real SmolLM2, a tiny
gpt-oss whose prompts outgrow its sliding window and a tiny Qwen3-MoE, in both history modes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_fixtures import harmony_eos_ids, harmony_tokenizer, qwen3_thinking_tokenizer
from tiny_models import build_tiny_gpt_oss, build_tiny_qwen3_moe

from tje_hf import DecodeConfig, RefineConfig, SignalConfig
from tje_hf.generation.hf import HfBackend, generate_batch
from tje_hf.generation.kvcache import CachedPrefix, longest_common_prefix, new_cache, plan_reuse
from tje_hf.models.families import make_family
from tje_hf.refinement import gate_value, refine

QUESTIONS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "Name the largest planet of the solar system and say one fact about it."}],
    [{"role": "user", "content": "Is 17 prime?"}],
]
GREEDY = DecodeConfig(max_new_tokens=14, temperature=0.0, signals=SignalConfig(trace=True))


@pytest.fixture(scope="module")
def harmony_setup():
    tok = harmony_tokenizer()
    model = build_tiny_gpt_oss(vocab_size=len(tok), sliding_window=16)
    model.generation_config.eos_token_id = harmony_eos_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, make_family("gpt-oss", reasoning_effort="low", template_date="2025-01-01")


@pytest.fixture(scope="module")
def qwen3_setup():
    tok = qwen3_thinking_tokenizer()
    model = build_tiny_qwen3_moe(vocab_size=len(tok))
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, make_family("qwen3-thinking")


def _setup(name, request):
    if name == "smollm2":
        lm = request.getfixturevalue("smollm2")
        return lm.model, lm.tokenizer, make_family("generic")
    return request.getfixturevalue(name)


def _run(model, tok, family, history, reuse, steps=3, questions=QUESTIONS, decode=GREEDY, **kw):
    config = RefineConfig(steps=steps, history=history, reuse_cache=reuse, **kw)
    return refine(HfBackend(model, tok), family, questions, [f"p{i}" for i in range(len(questions))], config,
                  decode, run_seed=7)


@pytest.mark.parametrize("history", ["template", "continuation"])
@pytest.mark.parametrize("name", ["smollm2", "harmony_setup", "qwen3_setup"])
def test_reuse_gives_the_same_tokens_and_signals(name, history, request):
    model, tok, family = _setup(name, request)
    questions = QUESTIONS[:2] if name == "smollm2" else QUESTIONS
    with_reuse = _run(model, tok, family, history, True, questions=questions)
    without = _run(model, tok, family, history, False, questions=questions)
    reused_any = 0
    for a, b in zip(with_reuse, without, strict=True):
        assert len(a.steps) == len(b.steps) == 3
        for sa, sb in zip(a.steps, b.steps, strict=True):
            assert sa.prompt_ids == sb.prompt_ids
            assert sa.generation.token_ids == sb.generation.token_ids, f"step {sa.step} differs"
            # per-token signals (float32): top-k entropies in bits, log-probs in nats
            ta, tb = sa.generation.trace, sb.generation.trace
            assert np.allclose(ta, tb, atol=2e-4, equal_nan=True), np.abs(ta - tb).max()
            assert sa.generation.prompt_tokens == sa.reuse.prefilled + sa.reuse.reused
            assert sb.reuse.reused == 0 and sb.reuse.prefilled == sb.generation.prompt_tokens
            if sa.step > 1:
                assert sa.reuse.mode == "reused"
                assert 0 < sa.reuse.reused <= sa.reuse.common_prefix
                reused_any += sa.reuse.reused
    if name == "harmony_setup":  # the prompts are longer than the sliding window
        assert min(len(r.steps[0].prompt_ids) for r in with_reuse) > 16
    assert reused_any > 0


@pytest.mark.parametrize("history", ["template", "continuation"])
def test_exact_accounting_batch_of_one(history, qwen3_setup):
    model, tok, family = qwen3_setup
    res = _run(model, tok, family, history, True, steps=3, questions=QUESTIONS[1:2])[0]
    for prev, step in zip(res.steps, res.steps[1:], strict=False):
        full_prev = prev.prompt_ids + prev.generation.token_ids
        lcp = longest_common_prefix(full_prev[:-1], step.prompt_ids)  # the last token was never fed
        assert step.reuse.common_prefix == lcp
        assert step.reuse.prefilled == len(step.prompt_ids) - lcp
        assert step.reuse.reused == lcp
        if history == "continuation":  # everything already computed is reused
            assert lcp == len(full_prev) - 1
        else:  # Qwen3 drops the reasoning of earlier turns: reuse stops where it starts
            assert lcp < len(full_prev) - 1


def test_gate_stops_low_entropy_problems_after_one_step(qwen3_setup):
    model, tok, family = qwen3_setup
    everything = _run(model, tok, family, "template", True, steps=3)
    values = sorted(gate_value(r.steps[0], "topk_entropy@20", "all") for r in everything)
    tau = (values[0] + values[1]) / 2  # exactly one problem at or below tau
    gated = _run(model, tok, family, "template", True, steps=3, policy="gate", tau=tau)
    for full, g in zip(everything, gated, strict=True):
        h1 = gate_value(full.steps[0], "topk_entropy@20", "all")
        assert len(g.steps) == (1 if h1 <= tau else 3)
        # the same seeds: gating changes which steps run, not what they produce
        for sg, sf in zip(g.steps, full.steps, strict=False):
            assert sg.generation.token_ids == sf.generation.token_ids
    assert sorted(len(g.steps) for g in gated) == [1, 3, 3]


def test_sampling_is_reproducible_and_batch_independent(qwen3_setup):
    model, tok, family = qwen3_setup
    sampled = DecodeConfig(max_new_tokens=10, temperature=0.8, top_p=0.95, signals=SignalConfig())
    a = _run(model, tok, family, "template", True, steps=2, decode=sampled)
    b = _run(model, tok, family, "template", True, steps=2, decode=sampled)
    alone = refine(HfBackend(model, tok), family, QUESTIONS[2:], ["p2"], RefineConfig(steps=2), sampled,
                   run_seed=7)
    assert ([s.generation.token_ids for r in a for s in r.steps]
            == [s.generation.token_ids for r in b for s in r.steps])
    assert [s.generation.token_ids for s in alone[0].steps] == [s.generation.token_ids for s in a[2].steps]


def test_generate_refuses_a_cache_covering_the_whole_input(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    ids = torch.tensor([tok("Hello there, how are you?")["input_ids"]])
    mask = torch.ones_like(ids)
    out = generate_batch(model, tok, ids, mask, DecodeConfig(max_new_tokens=3, temperature=0.0),
                         cache=new_cache(model))
    prefix = CachedPrefix.after_generate(out.cache, out.sequences, mask, [r.n_generated for r in out.results])
    with pytest.raises(ValueError, match="must hold fewer"):
        generate_batch(model, tok, out.sequences[:, :-1], torch.ones_like(out.sequences[:, :-1]),
                       DecodeConfig(max_new_tokens=3, temperature=0.0), cache=prefix.cache)
    # the plan never hands over a cache covering the whole input: at least one token is prefilled
    plan = plan_reuse(prefix, [prefix.row_tokens(0)], tok.pad_token_id, model.device)
    assert plan.prefilled == [1] and plan.cache.get_seq_length() == len(prefix.row_tokens(0)) - 1


def test_cached_prefix_checks_its_layout(smollm2):
    cache = new_cache(smollm2.model)
    with pytest.raises(ValueError, match="holds 0 positions"):
        CachedPrefix(cache, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_reuse_with_a_checkpoint_that_names_its_cache(smollm2):
    """A checkpoint whose generation config sets ``cache_implementation`` (Gemma-style "static")
    still reuses its cache: Transformers refuses a cache together with a cache implementation, so
    the backend drops the checkpoint's choice when it hands over its own cache."""
    model, tok = smollm2.model, smollm2.tokenizer
    family = make_family("generic")
    model.generation_config.cache_implementation = "static"
    try:
        with_reuse = _run(model, tok, family, "continuation", True, steps=2, questions=QUESTIONS[:2])
    finally:
        model.generation_config.cache_implementation = None
    without = _run(model, tok, family, "continuation", False, steps=2, questions=QUESTIONS[:2])
    for a, b in zip(with_reuse, without, strict=True):
        assert a.steps[1].reuse.mode == "reused" and a.steps[1].reuse.reused > 0
        assert [s.generation.token_ids for s in a.steps] == [s.generation.token_ids for s in b.steps]
