"""The memory estimate against measured footprints, the fit check, and the paper models' numbers.

Measured = bytes of the model's parameters and buffers, and the bytes of the KV-cache tensors'
storage after a batch-2 ``generate_batch`` with the refinement loop's cache
(``tje_hf.generation.kvcache.new_cache``: sliding-window layers record their past). The estimate must be
within 25 % of each part; the ratios are printed (``pytest -s``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_gpt_oss, build_tiny_qwen3_moe
from transformers import DynamicCache

from tje_hf import DecodeConfig, SignalConfig
from tje_hf.config import ModelSpec
from tje_hf.generation.hf import generate_batch
from tje_hf.generation.kvcache import new_cache
from tje_hf.models.loading import ModelLoadError, load_model
from tje_hf.models.memory import (
    GiB,
    InsufficientMemoryError,
    _count_analytic,
    check_fits,
    count_parameters,
    effective_quantization,
    estimate_memory,
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
    return _storage_bytes([t for layer in cache.layers for t in (layer.keys, layer.values)
                           if torch.is_tensor(t) and t.numel()])


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
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.logits_bytes


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
    assert est.kv_cache_bytes - est_plain.kv_cache_bytes == per_tok * (PROMPT + NEW - 1 - 15)


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


def test_paper_models_at_batch_16_x_16k():
    """gpt-oss-20b (bf16, MXFP4) and Qwen3-30B-A3B from their public architecture values."""
    gpt = reference_config("gpt-oss-20b")
    kw = {"batch_size": 16, "context_tokens": 16384}
    bf16 = estimate_memory(gpt, dtype="bfloat16", quantization="none", **kw)
    mxfp4 = estimate_memory(gpt, dtype="bfloat16", quantization="mxfp4", **kw)
    window = estimate_memory(gpt, dtype="bfloat16", quantization="mxfp4", record_sliding_past=False, **kw)
    qwen = estimate_memory(reference_config("qwen3-30b-a3b"), dtype="bfloat16", quantization="none", **kw)
    qwen4 = estimate_memory(reference_config("qwen3-30b-a3b"), dtype="bfloat16", quantization="4bit", **kw)
    for est in (bf16, mxfp4, window, qwen, qwen4):
        print("\n" + est.table())
    assert 20.5e9 < bf16.n_params < 21.5e9
    # 20.91 B parameters x 2 B = 41.8 GB = 38.96 GiB
    assert 38.5 * GiB < bf16.weights_bytes < 42 * GiB
    assert 12 * GiB < mxfp4.weights_bytes < 14 * GiB
    assert 55 * GiB < qwen.weights_bytes < 59 * GiB
    # bitsandbytes leaves Qwen3-MoE's fused experts in bf16: 4-bit saves only the attention.
    assert qwen4.weights_bytes > 50 * GiB and any("fused MoE expert" in n for n in qwen4.notes)
    # KV: 24 layers x 8 KV heads x 64 dims x K,V x 2 B = 48 KiB a token; 16 x 16384 tokens = 12 GiB
    # when the sliding layers record their past, about half when they keep their window only.
    assert bf16.kv_cache_bytes == mxfp4.kv_cache_bytes == 12 * GiB
    assert window.kv_cache_bytes == 6 * GiB + 12 * 2 * 8 * 64 * 2 * 16 * 127
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
