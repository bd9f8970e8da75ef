"""A bitsandbytes 4-bit model runs the whole refinement loop on the CPU.

A tiny random Llama (SmolLM2's vocabulary and tokenizer, logits sharpened x40) is saved to a
directory and loaded back through ``tje_hf.load_model`` with ``quantization: 4bit``: its Linear
layers must be bnb ``Linear4bit``. Three greedy refinement steps with cache reuse must produce
tokens at every step, account every prompt token as reused or prefilled exactly as the plan says,
reuse at steps 2-3, give finite top-20 entropies in [0, log2 20] bits, and match the loop without
reuse: the same tokens, per-token signals within SIGNAL_ATOL, and a reused cache that holds the
keys and values a fresh prefill computes, within KV_ATOL. A cache that is one column off must fail
the same comparison.

Why reuse is not bit-exact here (measured with bitsandbytes 0.50.2 and torch 2.13 on a 2-core
AVX-512 CPU that has AVX512_BF16):

* On CPUs with AVX512_BF16, ``Linear4bit`` repacks its weights on the first forward and runs
  bitsandbytes' fused nf4 kernel, which rounds its float32 input to bfloat16 and returns
  bfloat16 values. That kernel is row-independent: a one-row decode and an n-row prefill give
  bit-identical rows (layer-0 keys and values agree exactly).
* Attention (torch's float32 SDPA kernel) is not: the output for a token computed by a one-query
  decode and by an n-query prefill differ in the last bits (~1e-7). Where such a value lies
  next to a bfloat16 rounding boundary, the next 4-bit projection sees an input one bfloat16 step
  (2^-8 relative) apart, and that difference grows layer by layer.
* Measured, reuse vs no reuse, this model and these prompts, by ``ATEN_CPU_CAPABILITY``:
  ``default``: bit-identical (no value happened to cross a rounding boundary);
  ``avx2``: keys/values of decode-built tokens up to 0.0039 (one bfloat16 step; layer 1), logits at
  the first step-2 position up to 0.034, per-token signals up to 0.038 (top-k entropies 0.019 bits);
  ``avx512`` and unset: 0.0039, 0.093 and 0.033 (0.027 bits). Tokens identical on every path.
  Whether a crossing happens is chance: the same model built from other seeds is bit-exact on all
  paths, and eager attention (matmul + softmax) crosses even under ``default`` (signals 0.037;
  0.049 under avx2/avx512). The thread count (1, 2, 4) changes none of these numbers.
* Without AVX512_BF16 (AVX2-only or older AVX-512 CPUs) bitsandbytes dequantises to float32 and
  calls ``F.linear``: decode-built keys/values differ by <= 7e-7 and signals by <= 2.3e-5 (float32
  GEMM blocking for M=1 vs M=n), as for an unquantised float32 model.
"""

from __future__ import annotations

import importlib.util
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from needs import unavailable

from tje_hf import DecodeConfig, RefineConfig, SignalConfig
from tje_hf.columns import signal_columns
from tje_hf.config import ModelSpec
from tje_hf.generation.hf import generate_batch
from tje_hf.generation.kvcache import CachedPrefix, longest_common_prefix, new_cache, plan_reuse
from tje_hf.generation.outputs import left_pad
from tje_hf.models.families import make_family
from tje_hf.models.loading import load_model
from tje_hf.models.memory import NF4_BYTES_PER_PARAM, count_parameters, estimate_memory
from tje_hf.refinement import refine

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


@pytest.fixture(autouse=True, scope="module")
def _bitsandbytes():
    if importlib.util.find_spec("bitsandbytes") is None:
        unavailable("bitsandbytes is not installed (pip install 'tje-hf[quant]')")

QUESTIONS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "Name a prime number larger than 10."}],
]
# Two alternatives per token: the top-1/top-2 log-probability gap says where greedy is a near tie.
GREEDY = DecodeConfig(max_new_tokens=10, temperature=0.0,
                      signals=SignalConfig(trace=True, trace_alternatives=2, full_vocab=True))
COLUMNS = signal_columns(GREEDY.signals.ks)  # the trace's columns

# Per-token signals (top-k and full entropies in bits, DeepConf confidence, self-certainty,
# log-probability in nats), reuse vs no reuse. The largest difference measured on any kernel path
# is 0.038 (avx2; 0.049 with eager attention); 0.1 leaves a 2.6x margin. A cache one column off
# moves step 2's signals by 0.69-1.2 (top-k entropies 0.21-0.9 bits) before its tokens part.
SIGNAL_ATOL = 0.1
# Keys and values of the reused prefix vs a fresh prefill of the same tokens: measured at most
# 0.0039 (one bfloat16 step for |x| in [0.5, 1)); |x| <= 1.3 here, so 2^-6 is two bfloat16 steps
# at the largest magnitude (4x the measurement). One column off, they differ by 1.2-1.9.
KV_ATOL = 2.0 ** -6
# A token may differ only where the no-reuse run's top-1/top-2 gap is below this (nats): reuse
# moved the gap by at most 0.066 on any path (avx2); 0.2 is 3x that. On every path measured the
# tokens are identical; the smallest gap at steps 2-3 is 0.0186 (0.001 under `default`), in a
# row that reuse did not perturb, so a different rounding pattern could flip a token there.
NEAR_TIE = 0.2


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
    return refine(lm.backend, make_family(lm.family), QUESTIONS, ["q0", "q1"], config, GREEDY, run_seed=3)


class Runs(NamedTuple):
    reused: list
    fresh: list


@pytest.fixture(scope="module")
def runs(quantized):
    return Runs(_run(quantized, reuse=True), _run(quantized, reuse=False))


def _disagreements(reused, fresh) -> list[str]:
    """Where the loop with reuse departs from the loop without: step 1 (nothing to reuse yet) must
    be bit-identical; steps 2-3 must have the same tokens and signals within SIGNAL_ATOL. A token
    may differ only at a near tie of the run without reuse; that problem's later steps then have
    other prompts and are not compared."""
    bad = []
    for res, ref in zip(reused, fresh, strict=True):
        for a, b in zip(res.steps, ref.steps, strict=True):
            where = f"{res.problem_id} step {a.step}"
            if a.prompt_ids != b.prompt_ids:
                bad.append(f"{where}: the prompts differ")
                break
            ta, tb = a.generation.token_ids, b.generation.token_ids
            first = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
            diverged = ta != tb
            k = min(first + 1, len(ta), len(tb)) if diverged else len(ta)
            d = np.abs(a.generation.trace[:k] - b.generation.trace[:k])
            if a.step == 1:
                if diverged or d.max(initial=0.0) > 0:
                    bad.append(f"{where}: not bit-identical (tokens {ta} vs {tb}, max |d| {d.max(initial=0.0):.3g})")
            else:
                if d.max(initial=0.0) > SIGNAL_ATOL:
                    pos, col = np.unravel_index(np.nanargmax(d), d.shape)
                    bad.append(f"{where}: {COLUMNS[col]} at token {pos} differs by {d.max():.3g} > {SIGNAL_ATOL}")
                if diverged:
                    alt = b.generation.alt_logprobs
                    gap = float(alt[first, 0]) - float(alt[first, 1]) if first < len(tb) else math.inf
                    if not gap < NEAR_TIE:
                        bad.append(f"{where}: token {first} differs ({ta[first:first + 1]} vs {tb[first:first + 1]}) "
                                   f"where the top-1/top-2 gap is {gap:.3g} >= {NEAR_TIE}")
            if diverged:
                break
    return bad


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


def test_refinement_loop_on_4bit(runs):
    reused, fresh = runs
    for res, ref in zip(reused, fresh, strict=True):
        assert len(res.steps) == len(ref.steps) == 3
        for step, other in zip(res.steps, ref.steps, strict=True):
            gen = step.generation
            assert gen.n_generated > 0 and len(gen.token_ids) == gen.n_generated
            assert step.reuse.prefilled + step.reuse.reused == gen.prompt_tokens == len(step.prompt_ids)
            h = gen.means["all"]["topk_entropy@20"]
            assert math.isfinite(h) and 0.0 <= h <= math.log2(20) + 1e-6
            assert other.reuse.mode == "none" and other.reuse.reused == 0
        assert res.steps[0].reuse.mode == "none" and res.steps[0].reuse.reused == 0
    # Steps 2-3 reuse exactly what the plan promises: each row's common prefix with the tokens its
    # cache held (the previous prompt and output but its last, never-fed token), and every row
    # prefills the batch's widest remainder R (rows are laid out as one left-padded batch).
    for s in (1, 2):
        steps = [(res.steps[s - 1], res.steps[s]) for res in reused]
        lcp = [longest_common_prefix(prev.prompt_ids + prev.generation.token_ids[:-1], cur.prompt_ids)
               for prev, cur in steps]
        width = max(len(cur.prompt_ids) - c for (_, cur), c in zip(steps, lcp, strict=True))
        for (prev, cur), c in zip(steps, lcp, strict=True):
            assert cur.reuse.mode == "reused"
            assert cur.reuse.common_prefix == c >= len(prev.prompt_ids)  # the template keeps the old turns
            assert cur.reuse.prefilled == width and cur.reuse.reused == len(cur.prompt_ids) - width > 0
    worst = max((np.abs(a.generation.trace - b.generation.trace).max() for res, ref in zip(reused, fresh, strict=True)
                 for a, b in zip(res.steps, ref.steps, strict=True)
                 if a.generation.token_ids == b.generation.token_ids), default=0.0)
    print(f"\nreuse vs no reuse: max per-token signal difference {worst:.3g} (tolerance {SIGNAL_ATOL})")
    assert _disagreements(reused, fresh) == []


def test_the_reused_cache_holds_what_a_prefill_computes(quantized, runs):
    """Step 2's reused keys and values (from step 1's prefill and its one-token decode steps,
    cut back by ``plan_reuse``) against a fresh prefill of the whole step-2 prompt."""
    model, tok = quantized.model, quantized.tokenizer
    first = [r.steps[0].prompt_ids for r in runs.fresh]
    second = [r.steps[1].prompt_ids for r in runs.fresh]
    ids, mask = left_pad(first, tok.pad_token_id, model.device)
    out = generate_batch(model, tok, ids, mask, GREEDY, cache=new_cache(model))
    assert [r.token_ids for r in out.results] == [r.steps[0].generation.token_ids for r in runs.fresh]
    prefix = CachedPrefix.after_generate(out.cache, out.sequences, mask, [r.n_generated for r in out.results])
    plan = plan_reuse(prefix, second, tok.pad_token_id, model.device)
    assert plan.mode == "reused"
    width = plan.cache.get_seq_length()
    fresh = generate_batch(model, tok, plan.input_ids, plan.attention_mask,
                           DecodeConfig(max_new_tokens=1, temperature=0.0), cache=new_cache(model)).cache
    assert fresh.get_seq_length() == plan.input_ids.shape[1]
    real = plan.attention_mask[:, :width].bool()  # (B, W): the reused tokens' columns
    both = real[:, 1:] & real[:, :-1]
    for i, (got_layer, want_layer) in enumerate(zip(plan.cache.layers, fresh.layers, strict=True)):
        for name in ("keys", "values"):
            got = getattr(got_layer, name).float()
            want = getattr(want_layer, name).float()[:, :, :width]
            diff = (got - want).abs().amax(dim=(1, 3))[real].max().item()
            # the same comparison one column off (what an offset error would hand the model)
            shifted = (got[:, :, 1:] - want[:, :, :-1]).abs().amax(dim=(1, 3))[both].max().item()
            print(f"\nlayer {i} {name}: max |reused - prefill| {diff:.3g}, one column off {shifted:.3g}")
            assert diff <= KV_ATOL, f"layer {i} {name}: the reused cache differs from a prefill by {diff:.3g}"
            assert shifted > 10 * KV_ATOL, f"layer {i} {name}: neighbouring columns differ by only {shifted:.3g}"


def test_an_offset_cache_fails_the_comparison(quantized, runs, monkeypatch):
    """The tolerances above cannot hide a wrong layout: with every reused key and value moved one
    column to the right (each position holding its predecessor's state), step 2's signals depart
    from the loop without reuse by several times SIGNAL_ATOL."""
    from tje_hf.generation import kvcache

    compact = kvcache.compact

    def off_by_one(*args, **kwargs):
        cache = compact(*args, **kwargs)
        for layer in cache.layers if cache is not None else ():
            layer.keys = torch.cat([layer.keys[:, :, :1], layer.keys[:, :, :-1]], dim=2)
            layer.values = torch.cat([layer.values[:, :, :1], layer.values[:, :, :-1]], dim=2)
        return cache

    monkeypatch.setattr(kvcache, "compact", off_by_one)
    broken = _run(quantized, reuse=True)
    assert all(s.reuse.mode == "reused" for r in broken for s in r.steps[1:])
    bad = _disagreements(broken, runs.fresh)
    print("\n" + "\n".join(bad))
    assert any("step 2" in b for b in bad), bad
