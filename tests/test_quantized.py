"""A bitsandbytes 4-bit model runs the whole refinement loop on the CPU.

A tiny random Llama (SmolLM2's vocabulary and tokenizer, logits sharpened x40) is saved to a
directory and loaded back through ``tje_hf.load_model`` with ``quantization: 4bit``: its Linear
layers must be bnb ``Linear4bit``; three greedy refinement steps with cache reuse must produce
tokens at every step, account every prompt token as reused or prefilled, reuse at steps 2-3,
give finite top-20 entropies in [0, log2 20] bits, and the very tokens of the loop without reuse.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from tje_hf import DecodeConfig, RefineConfig, SignalConfig
from tje_hf.config import ModelSpec
from tje_hf.families import make_family
from tje_hf.memory import NF4_BYTES_PER_PARAM, count_parameters, estimate_memory
from tje_hf.models import load_model
from tje_hf.refine import refine

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                       reason="bitsandbytes is not installed (pip install 'tje-hf[quant]')"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

QUESTIONS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "Name a prime number larger than 10."}],
]
GREEDY = DecodeConfig(max_new_tokens=10, temperature=0.0, signals=SignalConfig(trace=True))


@pytest.fixture(scope="module")
def quantized(smollm2, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2.tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # peaked distributions: meaningful entropies and argmax
    path = tmp_path_factory.mktemp("tiny-llama-4bit")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return load_model(ModelSpec(name_or_path=str(path), quantization="4bit", dtype="float32", family="generic"),
                      device="cpu")


def _run(lm, reuse: bool):
    config = RefineConfig(steps=3, reuse_cache=reuse, history="template")
    return refine(lm.model, lm.tokenizer, make_family(lm.family), QUESTIONS, ["q0", "q1"], config, GREEDY,
                  run_seed=3)


def test_linear_layers_are_4bit(quantized):
    import bitsandbytes as bnb

    projections = {name: type(m) for name, m in quantized.model.named_modules() if name.endswith("_proj")}
    assert len(projections) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert all(cls is bnb.nn.Linear4bit for cls in projections.values()), projections
    assert type(quantized.model.lm_head) is torch.nn.Linear  # the output layer stays in float32
    assert quantized.family == "generic" and quantized.revision == "local"


def test_estimate_of_the_4bit_weights(quantized):
    """nf4 codes plus one float32 absmax per 64 weights, against what bitsandbytes holds."""
    import bitsandbytes as bnb

    model = quantized.model
    measured = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            measured += module.weight.untyped_storage().nbytes() + module.weight.quant_state.absmax.nbytes
    linear = count_parameters(model.config).linear_weight
    print(f"\nnf4 Linear weights: estimate/measured {linear * NF4_BYTES_PER_PARAM / measured:.4f}")
    assert 0.9 <= linear * NF4_BYTES_PER_PARAM / measured <= 1.1
    est = estimate_memory(model.config, dtype="float32", quantization="4bit", batch_size=1, context_tokens=64)
    total = sum(p.untyped_storage().nbytes() for p in model.parameters()) + measured - sum(
        m.weight.untyped_storage().nbytes() for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    total += sum(b.nbytes for b in model.buffers())
    print(f"4-bit model weights: estimate/measured {est.weights_bytes / total:.4f}")
    assert 0.75 <= est.weights_bytes / total <= 1.25


def test_refinement_loop_on_4bit(quantized):
    reused = _run(quantized, reuse=True)
    fresh = _run(quantized, reuse=False)
    for res, ref in zip(reused, fresh, strict=True):
        assert len(res.steps) == 3
        for step, other in zip(res.steps, ref.steps, strict=True):
            assert step.n_generated > 0 and len(step.token_ids) == step.n_generated
            assert step.prefilled_tokens + step.reused_tokens == step.prompt_tokens
            h = step.signals["all"]["topk_entropy@20"]
            assert math.isfinite(h) and 0.0 <= h <= math.log2(20) + 1e-6
            assert step.token_ids == other.token_ids, f"{res.problem_id} step {step.step}: reuse changed tokens"
            np.testing.assert_allclose(step.trace, other.trace, rtol=1e-3, atol=1e-3)
            assert other.reused_tokens == 0
        assert res.steps[0].reused_tokens == 0
        assert all(s.reused_tokens > 0 and s.cache == "reused" for s in res.steps[1:])
