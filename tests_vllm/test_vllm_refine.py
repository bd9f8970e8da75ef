"""The refinement loop on the vLLM backend: the same loop, the same records, prefix caching.

``tje_hf.refinement.refine`` takes either backend (``VllmBackend`` or ``HfBackend``). With greedy decoding
both backends must produce the same tokens at every step (the tiny model is float32 on both),
and from step 2 on the engine serves the shared conversation prefix from its prefix cache.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tje_hf.config import DecodeConfig, RefineConfig, SignalConfig
from tje_hf.generation.hf import HfBackend
from tje_hf.models.families import make_family
from tje_hf.refinement import refine

# A ChatML-like template over the word-level vocabulary: t3 opens a turn, t4 closes it, t10 and
# t11 stand for the user and assistant roles.
TEMPLATE = ("{% for m in messages %}t3 {{ 't10' if m['role'] == 'user' else 't11' }} {{ m['content'] }} t4 "
            "{% endfor %}{% if add_generation_prompt %}t3 t11 {% endif %}")
# Longer than the engine's 32-token cache block, so that step 2 has whole blocks to reuse.
QUESTIONS = [[{"role": "user", "content": " ".join(f"t{100 + 7 * i}" for i in range(40))}],
             [{"role": "user", "content": " ".join(f"t{900 + 5 * i}" for i in range(52))}]]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture
def templated_backend(backend, tokenizer):
    """The engine built once for the whole test run with the chat-template tokenizer (decoding is the same)."""
    backend.tokenizer = tokenizer
    yield backend
    backend.tokenizer = None  # back to the engine's own


@pytest.mark.engine
def test_refine_on_vllm_matches_the_transformers_loop(templated_backend, hf_model, tokenizer, tiny_model):
    hf_model.generation_config.eos_token_id = tiny_model.eos_id
    hf_model.generation_config.pad_token_id = tokenizer.pad_token_id or 0
    decode = DecodeConfig(max_new_tokens=12, temperature=0.0, signals=SignalConfig())
    config = RefineConfig(steps=3, instruction="t1200 t1300 t1400")
    family = make_family("generic")
    ids = ["a", "b"]
    on_vllm = refine(templated_backend, family, QUESTIONS, ids, config, decode, run_seed=3)
    on_hf = refine(HfBackend(hf_model, tokenizer), family, QUESTIONS, ids, config, decode, run_seed=3)
    for v, h in zip(on_vllm, on_hf, strict=True):
        assert [s.generation.token_ids for s in v.steps] == [s.generation.token_ids for s in h.steps]
        for sv, sh in zip(v.steps, h.steps, strict=True):
            assert sv.prompt_ids == sh.prompt_ids
            assert sv.generation.means["all"]["topk_entropy@20"] == pytest.approx(
                sh.generation.means["all"]["topk_entropy@20"], abs=2e-4)
            # (on vLLM prefilled is defined as prompt - cached: the identity is checked on the HF side)
            assert sh.generation.prompt_tokens == sh.reuse.prefilled + sh.reuse.reused
        # from step 2 on, the engine's prefix cache serves the earlier conversation
        assert all(s.reuse.mode == "prefix-cache" and s.reuse.reused > 0 for s in v.steps[1:])


def test_both_backends_end_a_turn_on_the_same_ids(templated_backend, hf_model, tokenizer, tiny_model):
    """One end-of-turn rule: the generation config's EOS ids and the tokenizer's EOS, on both."""
    hf = HfBackend(hf_model, tokenizer)
    assert templated_backend.eos_token_ids == hf.eos_token_ids == tuple(sorted({tiny_model.eos_id,
                                                                                tokenizer.eos_token_id}))
    assert templated_backend.manages_prefix_cache and not hf.manages_prefix_cache
    assert list(templated_backend.describe()) == list(hf.describe())  # the same environment.json keys
