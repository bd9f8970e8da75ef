"""The memory estimate against measured footprints, the fit check, and the paper models' numbers.

Measured = bytes of the model's parameters and buffers, and the bytes of the KV-cache tensors'
storage after a batch-2 ``generate_batch`` with the refinement loop's cache
(``tje_hf.generation.kvcache.new_cache``: sliding-window layers record their past). The estimate must be
within 25 % of each part; the ratios are printed (``pytest -s``).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny_gpt_oss, build_tiny_qwen3_moe
from transformers import DynamicCache

from tje_hf import DecodeConfig, SignalConfig
from tje_hf.config import ModelSpec
from tje_hf.generation.hf import HfBackend, generate_batch
from tje_hf.generation.kvcache import RecordingSlidingLayer, new_cache
from tje_hf.models.allocation import AllocationMeter
from tje_hf.models.loading import ModelLoadError, load_model
from tje_hf.models.memory import (
    EAGER_SCORE_COPIES,
    FP8_SCALE_BYTES,
    RECORD_BLOCK,
    GiB,
    InsufficientMemoryError,
    _count_analytic,
    attention_transient_bytes,
    check_fits,
    count_parameters,
    effective_quantization,
    estimate_memory,
    prefill_chunk,
    reference_config,
)

BATCH, PROMPT, NEW = 2, 12, 8  # 12 + 8 - 1 = 19 cached positions: decoding crosses a sliding window of 16


def model_bytes(model) -> int:
    """Parameters and buffers, each storage once."""
    tensors = list(model.parameters()) + list(model.buffers())
    return _storage_bytes(tensors)


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def cache_bytes(cache) -> int:
    """The memory the cache's key/value tensors hold (storage, not the visible slice)."""
    held = [t for layer in cache.layers
            for t in (layer.tensors() if isinstance(layer, RecordingSlidingLayer) else (layer.keys, layer.values))]
    return _storage_bytes([t for t in held if torch.is_tensor(t) and t.numel()])


def run_generate(model, tokenizer, cache):
    """Batch 2, PROMPT prompt tokens, exactly NEW generated tokens (greedy); returns the cache."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (BATCH, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    decode = DecodeConfig(max_new_tokens=NEW, min_new_tokens=NEW, temperature=0.0, signals=SignalConfig())
    out = generate_batch(model, tokenizer, ids.to(model.device), mask.to(model.device), decode, cache=cache)
    assert all(r.n_generated == NEW for r in out.results)
    assert out.cache.get_seq_length() == PROMPT + NEW - 1
    return out.cache


def compare(name, model, cache, record_sliding_past=True):
    est = estimate_memory(model.config, dtype="float32", quantization="none", batch_size=BATCH,
                          context_tokens=PROMPT + NEW - 1, record_sliding_past=record_sliding_past)
    w_meas, kv_meas = model_bytes(model), cache_bytes(cache)
    ratios = {"weights": est.weights_bytes / w_meas, "kv": est.kv_cache_bytes / kv_meas,
              "weights+kv": (est.weights_bytes + est.kv_cache_bytes) / (w_meas + kv_meas)}
    print(f"\n{name}: estimate/measured " + ", ".join(f"{k} {v:.4f}" for k, v in ratios.items())
          + f" (weights {w_meas} B, KV {kv_meas} B measured)")
    for part, ratio in ratios.items():
        assert 0.75 <= ratio <= 1.25, f"{name} {part}: estimate/measured = {ratio:.3f}\n{est}"
    return est, ratios


def test_smollm2_estimate_matches_measured(smollm2):
    est, _ = compare("smollm2", smollm2.model, run_generate(smollm2.model, smollm2.tokenizer, new_cache(smollm2.model)))
    assert est.n_sliding_layers == 0 and est.logits_bytes > 0
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.logits_bytes + est.activation_bytes
    # sdpa, 9 query heads over 3 key/value heads of 64: the cache's copy and the repeated keys and
    # values of one layer at the last context (2 sequences, float32)
    assert est.attention_bytes == 2 * BATCH * (3 + 9) * (PROMPT + NEW - 1) * 64 * 4


def test_tiny_gpt_oss_past_the_window(smollm2):
    model = build_tiny_gpt_oss(sliding_window=16)
    recorded = run_generate(model, smollm2.tokenizer, new_cache(model))
    est, _ = compare("tiny gpt-oss (recorded past)", model, recorded, record_sliding_past=True)
    assert est.n_sliding_layers == 1 and est.sliding_window == 16
    # A plain sliding cache keeps window - 1 tokens in its sliding layer: the estimate says so too.
    plain = run_generate(model, smollm2.tokenizer, DynamicCache(config=model.config))
    est_plain, _ = compare("tiny gpt-oss (window only)", model, plain, record_sliding_past=False)
    assert est_plain.kv_cache_bytes < est.kv_cache_bytes
    per_tok = est.kv_bytes_per_token_sliding * BATCH
    # recorded: every position, the live window beside them, and the free part of the last block
    assert est.kv_cache_bytes - est_plain.kv_cache_bytes == per_tok * (PROMPT + NEW - 1 + RECORD_BLOCK - 1)


def test_tiny_qwen3_moe(smollm2):
    model = build_tiny_qwen3_moe()
    est, _ = compare("tiny qwen3-moe", model, run_generate(model, smollm2.tokenizer, new_cache(model)))
    assert est.n_sliding_layers == 0
    assert count_parameters(model.config).fused_experts > 0


def test_fit_check_raises_one_line(smollm2):
    est = estimate_memory(smollm2.model.config, dtype="float32", batch_size=16, context_tokens=8192)
    assert check_fits(est, "cpu", available_bytes=64 * GiB).available_bytes == 64 * GiB
    with pytest.raises(InsufficientMemoryError) as info:
        check_fits(est, "cpu", available_bytes=int(1.5 * GiB))
    msg = str(info.value)
    print("\n" + msg)
    assert "\n" not in msg
    assert isinstance(info.value, MemoryError) and isinstance(info.value, ModelLoadError)
    assert "1.5 GiB free" in msg and f"{est.total_bytes / GiB:.1f} GiB" in msg
    assert "batch_size <= " in msg and "max_new_tokens" in msg
    # Weights alone too big: the advice is to quantise or get more memory, not a smaller batch.
    with pytest.raises(InsufficientMemoryError, match="a GPU with more memory"):
        check_fits(est, "cpu", available_bytes=100 << 20)


def test_load_model_stops_before_loading_when_it_cannot_fit(smollm2, monkeypatch):
    import transformers

    # (the smollm2 fixture has converted the GGUF already: that conversion loads weights itself)

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded before the memory check refused them")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(InsufficientMemoryError, match=r"batch 100000000 x 8192 tokens.*CPU RAM"):
        load_model(ModelSpec(), device="cpu", batch_size=10**8)


def test_effective_quantization():
    mx = {"quant_method": "mxfp4"}
    cfg = type("C", (), {"quantization_config": mx})()
    assert effective_quantization("mxfp4", cfg, cuda=True, mxfp4_kernels=True) == "mxfp4"
    assert effective_quantization("mxfp4", cfg, cuda=False, mxfp4_kernels=True) == "none"  # dequantised
    assert effective_quantization("none", cfg, cuda=True, mxfp4_kernels=True) == "mxfp4"  # the checkpoint's
    assert effective_quantization("bf16-dequantized", cfg, cuda=True, mxfp4_kernels=True) == "none"
    assert effective_quantization("4bit", cfg) == "4bit"
    plain = type("C", (), {})()
    assert effective_quantization("mxfp4", plain, cuda=True, mxfp4_kernels=True) == "none"
    # A fine-grained FP8 checkpoint stays FP8 on a GPU of compute capability >= 8.9 only.
    fp8 = type("C", (), {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})()
    assert effective_quantization("fp8", fp8, cuda=True, fp8_gpu=True) == "fp8"
    assert effective_quantization("none", fp8, cuda=True, fp8_gpu=True) == "fp8"  # the checkpoint's
    assert effective_quantization("fp8", fp8, cuda=True, fp8_gpu=False) == "none"  # e.g. an A100: dequantised
    assert effective_quantization("fp8", fp8, cuda=False, fp8_gpu=True) == "none"
    assert effective_quantization("fp8", plain, cuda=True, fp8_gpu=True) == "none"  # nothing quantised on the fly
    assert effective_quantization("4bit", fp8) == "4bit"


def _tiny_qwen3_moe_config(**extra):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                          head_dim=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                          num_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
                          tie_word_embeddings=False, dtype="bfloat16", **extra)


def test_fp8_weights_by_hand():
    """Fine-grained FP8 (Qwen3-30B-A3B-*-FP8's format) of a tiny Qwen3-MoE, counted by hand.

    Hidden 256, 2 layers, 4 heads x 64 (2 KV heads), 4 experts of width 128, vocabulary 1000.
    In FP8 (1 B each), per layer: q 256x256 + k 128x256 + v 128x256 + o 256x256 = 196,608 and the
    fused experts 4 x (gate_up 256x256 + down 256x128) = 393,216: 589,824; 2 layers 1,179,648 B.
    Float32 scales, one per 128x128 block: q 2x2 + k 1x2 + v 1x2 + o 2x2 = 12, experts
    4 x (2x2 + 2x1) = 24: 36 a layer, 72 in all, 288 B. In bf16 (2 B each): embeddings and the
    output layer 2 x 1000 x 256 = 512,000, per layer the router 4 x 256 = 1,024, q/k norms 2 x 64,
    input/post-attention norms 2 x 256 (1,664), 2 layers 3,328, final norm 256: 515,584 params,
    1,031,168 B. Rotary tables: inv_freq and original_inv_freq, 32 float32 each: 256 B.
    """
    fp8_weight, scales, bf16_params, buffers = 1_179_648, 72, 515_584, 256
    expected = fp8_weight * 1 + scales * 4 + bf16_params * 2 + buffers
    assert expected == 2_211_360
    cfg = _tiny_qwen3_moe_config()
    counts = count_parameters(cfg)
    assert counts.source == "meta"
    assert (counts.fp8_weight, counts.fp8_scales, counts.total - counts.fp8_weight, counts.buffer_bytes) == \
        (fp8_weight, scales, bf16_params, buffers)
    est = estimate_memory(cfg, quantization="fp8", batch_size=1, context_tokens=8)
    assert est.weights_bytes == expected and est.quantization == "fp8"
    assert est.notes and "FP8" in est.notes[0]
    # Unquantised (or dequantised: an FP8 checkpoint on a GPU below compute capability 8.9 or on
    # the CPU): every parameter in bf16.
    assert estimate_memory(cfg, quantization="none", context_tokens=8).weights_bytes == \
        (fp8_weight + bf16_params) * 2 + buffers
    # The checkpoint's own quantization_config sets the block: 64x64 gives q 4x4 + k 2x4 + v 2x4
    # + o 4x4 = 48 and experts 4 x (4x4 + 4x2) = 96 scales a layer: 288 in all, 1,152 B.
    # Qwen's skip list names the output layer, the norms and the router: only lm_head is a
    # Linear among them, so the FP8 weights are the same.
    skip = ["lm_head"] + [f"model.layers.{i}.{m}" for i in range(2)
                          for m in ("input_layernorm", "mlp.gate", "post_attention_layernorm")]
    cfg64 = _tiny_qwen3_moe_config(quantization_config={"quant_method": "fp8", "weight_block_size": [64, 64],
                                                        "modules_to_not_convert": skip})
    est64 = estimate_memory(cfg64, quantization="fp8", context_tokens=8)
    assert count_parameters(cfg64).fp8_scales == 288
    assert est64.weights_bytes == expected + (288 - 72) * FP8_SCALE_BYTES
    # A skip list that keeps the attention projections in bf16 moves them out of FP8 (a pattern
    # matches as Transformers' should_convert_module reads it: a prefix or regex up to a module
    # boundary, or a suffix).
    cfg_attn = _tiny_qwen3_moe_config(quantization_config={
        "quant_method": "fp8", "modules_to_not_convert": ["lm_head", r"model.layers.\d+.self_attn"]})
    attn = 2 * 196_608
    assert count_parameters(cfg_attn).fp8_weight == fp8_weight - attn
    assert estimate_memory(cfg_attn, quantization="fp8", context_tokens=8).weights_bytes == \
        expected + attn * (2 - 1) - 2 * 12 * FP8_SCALE_BYTES


def test_fp8_refuses_what_transformers_cannot_hold():
    with pytest.raises(ValueError, match="FP8Experts does not take"):
        estimate_memory(reference_config("gpt-oss-20b"), quantization="fp8", context_tokens=8)


def test_paper_models_at_batch_16_x_16k():
    """gpt-oss-20b (bf16, MXFP4) and Qwen3-30B-A3B from their public architecture values."""
    gpt = reference_config("gpt-oss-20b")
    kw = {"batch_size": 16, "context_tokens": 16384}
    bf16 = estimate_memory(gpt, dtype="bfloat16", quantization="none", **kw)
    mxfp4 = estimate_memory(gpt, dtype="bfloat16", quantization="mxfp4", **kw)
    window = estimate_memory(gpt, dtype="bfloat16", quantization="mxfp4", record_sliding_past=False, **kw)
    qwen = estimate_memory(reference_config("qwen3-30b-a3b"), dtype="bfloat16", quantization="none", **kw)
    qwen4 = estimate_memory(reference_config("qwen3-30b-a3b"), dtype="bfloat16", quantization="4bit", **kw)
    qwen8 = estimate_memory(reference_config("qwen3-30b-a3b"), dtype="bfloat16", quantization="fp8", **kw)
    for est in (bf16, mxfp4, window, qwen, qwen4, qwen8):
        print("\n" + est.table())
    assert 20.5e9 < bf16.n_params < 21.5e9
    # 20.91 B parameters x 2 B = 41.8 GB = 38.96 GiB
    assert 38.5 * GiB < bf16.weights_bytes < 42 * GiB
    assert 12 * GiB < mxfp4.weights_bytes < 14 * GiB
    assert 55 * GiB < qwen.weights_bytes < 59 * GiB
    # bitsandbytes leaves Qwen3-MoE's fused experts in bf16: 4-bit saves only the attention.
    assert qwen4.weights_bytes > 50 * GiB and any("fused MoE expert" in n for n in qwen4.notes)
    # FP8 (Qwen/Qwen3-30B-A3B-*-2507-FP8): 29.90 B weights at 1 B + 1.82 M float32 block scales +
    # 0.63 B in bf16 (embeddings, output layer, router, norms) = 29.03 GiB, the size of the
    # published checkpoint's tensors.
    assert 28.9 * GiB < qwen8.weights_bytes < 29.1 * GiB
    assert qwen8.kv_cache_bytes == qwen.kv_cache_bytes
    # KV: 24 layers x 8 KV heads x 64 dims x K,V x 2 B = 48 KiB a token; 16 x 16384 tokens = 12 GiB
    # when the sliding layers record their past, about half when they keep their window only.
    # (recording: plus, per sliding layer, the live window of 127 and up to 63 positions of a block)
    sliding_token = 12 * 2 * 8 * 64 * 2 * 16  # 12 sliding layers, K and V, 16 sequences
    assert bf16.kv_cache_bytes == mxfp4.kv_cache_bytes == 12 * GiB + sliding_token * (127 + 63)
    assert window.kv_cache_bytes == 6 * GiB + sliding_token * 127
    # gpt-oss attends eagerly: the cache copy (8 heads), keys and values repeated to 64 heads, and
    # as much again for the scores, at 16 x 16384 tokens of 64 dims in bf16; Qwen3 (sdpa): the
    # cache copy (4 heads) and keys and values repeated to 32 heads of 128
    assert mxfp4.attn_implementation == "eager" and qwen.attn_implementation == "sdpa"
    assert mxfp4.attention_bytes == 2 * 16 * 16384 * 64 * 2 * (8 + 64 + 64)
    assert qwen.attention_bytes == 2 * 16 * 16384 * 128 * 2 * (4 + 32)
    # On a GPU, bf16 experts decode with batched_mm: a copy of each selected expert (gate_up
    # 2 x 768 x 2048 and down 2048 x 768) for each of 16 x 8 (token, expert) pairs; MXFP4 runs its
    # own kernel, and the CPU keeps grouped_mm
    assert qwen.experts_bytes == 16 * 8 * 3 * 768 * 2048 * 2 and mxfp4.experts_bytes == 0
    assert estimate_memory(reference_config("qwen3-30b-a3b"), dtype="bfloat16", device_type="cpu",
                           **kw).experts_bytes == 0
    assert qwen.total_bytes == qwen.weights_bytes + qwen.kv_cache_bytes + qwen.logits_bytes + qwen.attention_bytes
    assert qwen.kv_cache_bytes == 24 * GiB
    assert 0 < bf16.logits_bytes < 0.2 * GiB
    assert "records their past" in bf16.table() and "keep 127 tokens" in window.table()


@pytest.mark.parametrize("name", ["gpt-oss-20b", "qwen3-30b-a3b", "llama-3.3-70b"])
def test_analytic_count_agrees_with_meta(name):
    cfg = reference_config(name)
    meta, analytic = count_parameters(cfg), _count_analytic(cfg)
    assert meta.source == "meta"
    assert abs(analytic.total - meta.total) / meta.total < 0.01
    assert abs(analytic.linear_weight - meta.linear_weight) / max(meta.linear_weight, 1) < 0.01
    assert abs(analytic.fp8_weight - meta.fp8_weight) <= 0.01 * max(meta.fp8_weight, 1)
    assert abs(analytic.fp8_scales - meta.fp8_scales) <= 0.01 * max(meta.fp8_scales, 1)


def test_eager_attention_allocates_what_the_estimate_counts(smollm2):
    """gpt-oss's eager attention at its real head shapes (64 query heads, 8 key/value heads of 64),
    measured on the CPU: the bytes one attention layer allocates in a real refinement-loop call
    (the cache's copy, keys and values repeated to every query head, the scores) stay within
    ``attention_transient_bytes`` at the context the run was sized for, because the backend
    prefills in chunks (``prefill_chunk``); a one-pass prefill would need several times more."""
    model = build_tiny_gpt_oss(head_dim=64, heads=(64, 8))
    B, P, budget, new = 2, 400, 512, 4
    peaks = []  # (query positions, bytes) per call of the full-attention layer

    def enter(module, args, kwargs):
        module.meter = AllocationMeter()
        module.meter.__enter__()

    def leave(module, args, kwargs, out):
        module.meter.__exit__(None, None, None)
        peaks.append((kwargs["hidden_states"].shape[1], module.meter.peak_bytes))

    attn = model.model.layers[1].self_attn
    assert model.config.layer_types[1] == "full_attention"
    hooks = [attn.register_forward_pre_hook(enter, with_kwargs=True),
             attn.register_forward_hook(leave, with_kwargs=True)]
    prompts = torch.randint(100, 40000, (B, P), generator=torch.Generator().manual_seed(0)).tolist()
    decode = DecodeConfig(max_new_tokens=new, min_new_tokens=new, temperature=0.0, signals=SignalConfig())
    try:
        HfBackend(model, smollm2.tokenizer, context_tokens=budget).generate(prompts, decode)
        chunked = list(peaks)
        peaks.clear()
        HfBackend(model, smollm2.tokenizer).generate(prompts, decode)  # no context sized: one pass
        one_pass = list(peaks)
    finally:
        for hook in hooks:
            hook.remove()
    estimate = attention_transient_bytes(model.config, "eager", B, budget, 4)
    chunk = prefill_chunk(model.config, P, budget)
    assert [q for q, _ in chunked] == [chunk] * (P // chunk) + [P % chunk] + [1] * (new - 1)
    worst = max(b for _, b in chunked)
    print(f"\neager attention, batch {B}, {P}-token prompt, sized for {budget}: worst call {worst} B, "
          f"estimate {estimate} B ({worst / estimate:.3f}); one-pass prefill {one_pass[0][1]} B")
    assert 0.8 * estimate <= worst <= estimate
    # a decode step: the cache copy and the repeated keys and values at its context, the scores of one query
    ctx = P + new - 1
    kv_copies = 2 * B * (8 + 64) * ctx * 64 * 4
    assert kv_copies <= chunked[-1][1] <= kv_copies + EAGER_SCORE_COPIES * B * 64 * ctx * 4 + 64 * 1024
    assert one_pass[0][1] > 3 * estimate
