"""The vLLM backend against its contract and against the HF path on the same tokens.

Tolerances (float32 engine and float32 HF forward on the same weights): top-k entropies within
``ENTROPY_ATOL`` bits, DeepConf confidence and token log-probabilities within ``LOGPROB_ATOL``
nats. The differences measured are printed in the terminal summary ("vLLM vs HF cross-check").
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tje_hf.config import DecodeConfig, ModelSpec, SignalConfig, WindowStopConfig
from tje_hf.generation.hf import HfBackend
from tje_hf.generation.signals import deepconf_confidence, token_logprob, topk_entropies
from tje_hf.generation.tracker import signal_columns
from tje_hf.generation.vllm import (
    UNAVAILABLE_SIGNALS,
    VllmBackend,
    logprobs_needed,
    segment_means,
    token_signals,
    top_logprobs,
)
from tje_hf.models.loading import load_backend, load_vllm_model
from tje_hf.models.segments import ANSWER, HEADER, REASONING, SegmentRules

ENTROPY_ATOL = 2e-4  # bits
LOGPROB_ATOL = 2e-4  # nats
KS = (5, 10, 15, 20)


def greedy(n: int, trace: bool = True, **kw) -> DecodeConfig:
    return DecodeConfig(max_new_tokens=n, temperature=0.0, signals=SignalConfig(ks=KS, trace=trace), **kw)


def hf_signals(hf_model, prompt: list[int], generated: list[int]) -> dict[str, np.ndarray]:
    """Teacher-forced HF signals of ``generated`` after ``prompt``: one forward pass, raw logits."""
    ids = torch.tensor([prompt + generated])
    with torch.inference_mode():
        logits = hf_model(ids).logits[0].float()
    L, n = len(prompt), len(generated)
    at = logits[L - 1: L - 1 + n]  # the logits that predicted each generated token
    return {
        "topk": topk_entropies(at, KS).numpy(),
        "deepconf_confidence": deepconf_confidence(at, 20).numpy(),
        "token_logprob": token_logprob(at, torch.tensor(generated)).numpy(),
    }


def compare_with_hf(hf_model, out, prompts, measurements, label: str) -> None:
    columns = list(out.columns)
    worst = {"topk_entropy": 0.0, "deepconf_confidence": 0.0, "token_logprob": 0.0}
    for prompt, res in zip(prompts, out.results, strict=True):
        ref = hf_signals(hf_model, prompt, res.token_ids)
        got = res.trace
        d_topk = np.abs(got[:, : len(KS)] - ref["topk"]).max()
        d_conf = np.abs(got[:, columns.index("deepconf_confidence")] - ref["deepconf_confidence"]).max()
        d_lp = np.abs(got[:, columns.index("token_logprob")] - ref["token_logprob"]).max()
        worst["topk_entropy"] = max(worst["topk_entropy"], float(d_topk))
        worst["deepconf_confidence"] = max(worst["deepconf_confidence"], float(d_conf))
        worst["token_logprob"] = max(worst["token_logprob"], float(d_lp))
        assert d_topk <= ENTROPY_ATOL, f"{label}: top-k entropy differs from HF by {d_topk:.3g} bits"
        assert d_conf <= LOGPROB_ATOL, f"{label}: DeepConf confidence differs from HF by {d_conf:.3g} nats"
        assert d_lp <= LOGPROB_ATOL, f"{label}: token logprob differs from HF by {d_lp:.3g} nats"
    h20 = np.concatenate([r.trace[:, columns.index("topk_entropy@20")] for r in out.results])
    measurements[label] = {**worst, "tokens": int(sum(r.n_generated for r in out.results)),
                           "mean_topk_entropy@20_bits": float(h20.mean())}


# --------------------------------------------------------------------------------------------
# Without an engine: the conversion from vLLM's logprobs


def _entry(pairs: dict[int, tuple[float, int]]) -> dict:
    return {tid: SimpleNamespace(logprob=lp, rank=rank) for tid, (lp, rank) in pairs.items()}


def test_top_logprobs_excludes_a_sampled_token_ranked_below_n():
    rng = np.random.default_rng(1)
    logits = np.sort(rng.normal(size=100))[::-1] * 3
    logp = logits - np.log(np.exp(logits).sum())
    top = {100 + i: (float(logp[i]), i + 1) for i in range(20)}
    sampled = {7: (float(logp[56]), 57)}  # the 21st entry: the sampled token, rank 57
    pairs = top_logprobs(_entry({**sampled, **top}), 20)
    assert [p[0] for p in pairs] == [100 + i for i in range(20)]
    values, _, _ = token_signals([_entry({**sampled, **top})], [7], KS, 20)
    cols = signal_columns(KS)
    ref = topk_entropies(torch.tensor(logits, dtype=torch.float32), KS).numpy()
    np.testing.assert_allclose(values[0, : len(KS)], ref, atol=1e-5)
    assert values[0, cols.index("token_logprob")] == pytest.approx(logp[56], abs=1e-6)
    assert values[0, cols.index("deepconf_confidence")] == pytest.approx(-logp[:20].mean(), abs=1e-5)
    for name in UNAVAILABLE_SIGNALS:
        assert math.isnan(values[0, cols.index(name)])


def test_flat_logprobs_fast_path_equals_the_dict_path():
    """vLLM's FlatLogprobs (sampled token first, then ranks 1..n, duplicates kept) read as arrays
    gives what the per-token dicts give; a FlatLogprobs of another layout falls back to dicts."""
    import itertools

    from vllm.logprobs import FlatLogprobs

    rng = np.random.default_rng(2)
    flat, dicts, sampled_ids = FlatLogprobs(), [], []
    for t, sampled_rank in enumerate((1, 7, 57)):
        logits = np.sort(rng.normal(size=200))[::-1] * 4
        logp = (logits - np.log(np.exp(logits).sum())).tolist()
        ids = (rng.permutation(2000)[:200] + 10).tolist()
        s = sampled_rank - 1
        flat.append_fast([ids[s]] + ids[:20], [logp[s]] + logp[:20],
                         itertools.chain((sampled_rank,), range(1, 21)), [None] * 21)
        dicts.append(flat[t])
        sampled_ids.append(ids[s])
    fast, fast_ids, fast_lp = token_signals(flat, sampled_ids, KS, 20, n_alt=20)
    slow, slow_ids, slow_lp = token_signals(dicts, sampled_ids, KS, 20, n_alt=20)
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast_ids, slow_ids)
    np.testing.assert_array_equal(fast_lp, slow_lp)
    deduped = FlatLogprobs()
    deduped.extend(dicts)  # the sampled token inside the top 20 appears once: 20 entries
    np.testing.assert_array_equal(token_signals(deduped, sampled_ids, KS, 20)[0], slow)
    with pytest.raises(ValueError, match="sampled id"):
        token_signals(flat, [sampled_ids[0], sampled_ids[1], 3], KS, 20)


def test_top_logprobs_rejects_a_short_entry():
    with pytest.raises(ValueError, match="rank <= 20"):
        top_logprobs(_entry({i: (-1.0 - i, i + 1) for i in range(19)}), 20)


def test_segment_means_follow_the_labels():
    cols = signal_columns((20,))
    values = np.arange(12, dtype=np.float32).reshape(4, 3).repeat(2, axis=1)[:, : len(cols)]
    labels = np.array([REASONING, HEADER, ANSWER, ANSWER], dtype=np.int8)
    means, counts, n_invalid = segment_means(values, labels, cols)
    assert counts == {"all": 4, "reasoning": 1, "answer": 2} and n_invalid == 0
    assert means["all"][cols[0]] == pytest.approx(values[:, 0].mean())
    assert means["answer"][cols[0]] == pytest.approx(values[2:, 0].mean())
    assert means["reasoning"][cols[0]] == pytest.approx(values[0, 0])


def test_contract_errors_name_the_value():
    b = VllmBackend("/nonexistent")  # the engine is never built: checks come first
    with pytest.raises(ValueError, match="ks"):
        b.generate([[1, 2]], DecodeConfig(signals=SignalConfig(ks=(20, 30))))
    ws = WindowStopConfig(column="topk_entropy@20", threshold=1.0, window=4, min_tokens=4)
    with pytest.raises(ValueError, match="window_stop"):
        b.generate([[1, 2]], DecodeConfig(window_stop=ws))
    with pytest.raises(ValueError, match="num_logprobs"):
        VllmBackend("/nonexistent", num_logprobs=10)
    with pytest.raises(ValueError, match="logprobs_mode"):
        VllmBackend("/nonexistent", logprobs_mode="processed_logprobs")


def test_the_runner_sizes_the_engine_for_the_run(tiny_model):
    """``load_backend(..., signals=, context_tokens=)`` (what ``tje run`` calls) asks the engine for
    enough log-probabilities a token (the largest k, the trace's alternatives, at least DeepConf's
    20) and a context of the run's longest conversation, capped at the model's (512 tokens here)."""
    assert logprobs_needed(SignalConfig()) == 20
    assert logprobs_needed(SignalConfig(ks=(5, 10, 20, 32))) == 32
    assert logprobs_needed(SignalConfig(trace=True, trace_alternatives=25)) == 25
    assert logprobs_needed(SignalConfig(trace=False, trace_alternatives=25)) == 20
    spec = ModelSpec(name_or_path=str(tiny_model.path), family="generic", dtype="float32")
    lm = load_backend(spec, "vllm", signals=SignalConfig(ks=(5, 10, 20, 32)))  # the engine is built on first use
    assert lm.backend.num_logprobs == lm.backend.engine_args["max_logprobs"] == 32
    assert lm.backend.engine_args["max_model_len"] is None  # no bound given: the model's own
    assert load_backend(spec, "vllm").backend.num_logprobs == 20
    assert load_backend(spec, "vllm", context_tokens=300).backend.engine_args["max_model_len"] == 300
    assert load_backend(spec, "vllm", context_tokens=2048 + 4 * 8192).backend.engine_args["max_model_len"] == 512
    assert load_vllm_model(spec, context_tokens=300, max_model_len=400).backend.engine_args["max_model_len"] == 400


# --------------------------------------------------------------------------------------------
# With the engine


@pytest.mark.engine
def test_lengths_stop_reasons_segments_and_means(backend, tiny_model):
    rules = SegmentRules(initial=REASONING, transitions=((REASONING, tiny_model.think_end_id, ANSWER),))
    prompts = [tiny_model.eos_prompt] + tiny_model.free_prompts[:2]
    out = backend.generate(prompts, greedy(12), seeds=[0, 1, 2], segment_rules=rules)
    eos_row, *free_rows = out.results
    # The EOS row: HF's greedy tokens up to and including the EOS, then stop.
    assert eos_row.token_ids == tiny_model.eos_greedy
    assert eos_row.stop_reason == "eos" and eos_row.n_generated == len(tiny_model.eos_greedy)
    for r in free_rows:
        assert r.stop_reason == "max_new_tokens" and r.n_generated == 12 == len(r.token_ids)
    assert out.columns == signal_columns(KS)
    assert out.extras["unavailable_signals"] == list(UNAVAILABLE_SIGNALS)
    assert out.cache is None and out.wall_time_s > 0 and out.tokens_per_s > 0
    L = max(len(p) for p in prompts)
    assert out.prompt_length == L and tuple(out.sequences.shape) == (3, L + 12)
    for prompt, r, row in zip(prompts, out.results, out.sequences, strict=True):
        assert r.prompt_tokens == len(prompt)
        assert row[L - len(prompt): L].tolist() == prompt and row[L: L + r.n_generated].tolist() == r.token_ids
        assert r.text == backend.tokenizer.decode(r.token_ids, skip_special_tokens=True)
        assert r.trace.shape == (r.n_generated, len(out.columns)) and r.trace.dtype == np.float32
        assert r.segments.shape == (r.n_generated,) and r.n_invalid == 0
        masks = {"all": np.ones(r.n_generated, bool), "reasoning": r.segments == REASONING,
                 "answer": r.segments == ANSWER}
        for seg, m in masks.items():
            assert r.counts[seg] == int(m.sum())
            for j, col in enumerate(out.columns):
                expected = float(r.trace[m, j].astype(np.float64).mean()) if m.any() else math.nan
                assert r.means[seg][col] == pytest.approx(expected, nan_ok=True, rel=1e-6), (seg, col)
        h = r.trace[:, : len(KS)]
        assert np.all(h >= 0) and np.all(h <= np.log2(np.array(KS)) + 1e-5)
    # The reasoning segment closes at THINK_END: reasoning, one header token, then answer.
    n = len(tiny_model.eos_greedy)
    assert eos_row.segments.tolist() == [REASONING] * (n - 2) + [HEADER, ANSWER]


@pytest.mark.engine
def test_cross_check_greedy_against_hf(backend, tiny_model, hf_model, measurements):
    prompts = [tiny_model.eos_prompt] + tiny_model.free_prompts
    out = backend.generate(prompts, greedy(24), seeds=list(range(len(prompts))))
    compare_with_hf(hf_model, out, prompts, measurements, "greedy")


@pytest.mark.engine
def test_cross_check_sampled_raw_logprobs(backend, tiny_model, hf_model, measurements):
    """With temperature, top-k and a repetition penalty the values stay the raw model's (raw_logprobs)."""
    prompts = tiny_model.free_prompts
    decode = DecodeConfig(max_new_tokens=24, temperature=1.5, top_k=50, top_p=0.95, repetition_penalty=1.3,
                          signals=SignalConfig(ks=KS, trace=True, trace_alternatives=5))
    out = backend.generate(prompts, decode, seeds=[11, 12, 13, 14])
    compare_with_hf(hf_model, out, prompts, measurements, "sampled T=1.5")
    r = out.results[0]
    assert r.alt_ids.shape == (r.n_generated, 5) and r.alt_logprobs.dtype == np.float16
    assert np.all(np.diff(r.alt_logprobs.astype(np.float32), axis=1) <= 0)


@pytest.mark.engine
def test_unavailable_signals_are_nan(backend, tiny_model, monkeypatch):
    from tje_hf.generation import vllm as vllm_backend

    def no_dicts(*args, **kwargs):
        raise AssertionError("vLLM's flat logprobs were not read as arrays (layout changed?)")

    monkeypatch.setattr(vllm_backend, "_dict_top", no_dicts)  # and check the fast path is taken
    out = backend.generate(tiny_model.free_prompts[:2], greedy(6), seeds=[0, 1])
    cols = list(out.columns)
    assert out.extras["unavailable_signals"] == ["full_entropy", "self_certainty"]
    for r in out.results:
        for name in UNAVAILABLE_SIGNALS:
            assert np.isnan(r.trace[:, cols.index(name)]).all()
            for seg in ("all", "answer"):
                assert math.isnan(r.means[seg][name])
        for name in ("topk_entropy@20", "deepconf_confidence", "token_logprob"):
            assert np.isfinite(r.trace[:, cols.index(name)]).all()
            assert math.isfinite(r.means["all"][name])


@pytest.mark.engine
def test_per_row_seeds_do_not_depend_on_the_batch(backend, tiny_model):
    a, b, c = tiny_model.free_prompts[:3]
    decode = DecodeConfig(max_new_tokens=16, temperature=1.0, signals=SignalConfig(ks=KS, trace=False))
    alone = backend.generate([a], decode, seeds=[123]).results[0]
    batched = backend.generate([b, a, c], decode, seeds=[7, 123, 9]).results[1]
    assert batched.token_ids == alone.token_ids
    assert batched.means["all"]["topk_entropy@20"] == pytest.approx(alone.means["all"]["topk_entropy@20"], abs=1e-4)
    assert alone.trace is None
    others = [backend.generate([a], decode, seeds=[s]).results[0].token_ids for s in (124, 125, 126)]
    assert any(o != alone.token_ids for o in others), "three other seeds all gave the same sample"


@pytest.mark.engine
def test_token_budget_and_context_limit(backend, tiny_model, hf_model):
    prompts = tiny_model.free_prompts[:2]
    out = backend.generate(prompts, greedy(10, trace=False), seeds=[0, 1], token_budget=[3, 100])
    assert [r.n_generated for r in out.results] == [3, 10]
    assert [r.stop_reason for r in out.results] == ["token_budget", "max_new_tokens"]
    long_prompt = [5] * (backend.max_model_len - 4)
    r = backend.generate([long_prompt], greedy(10, trace=False), seeds=[0]).results[0]
    # the context, not max_new_tokens, stopped it: named as the HF backend names it
    assert r.n_generated == 4 and r.stop_reason == "context_full"
    hf = HfBackend(hf_model, backend.tokenizer).generate([long_prompt], greedy(10, trace=False), seeds=[0]).results[0]
    assert (hf.n_generated, hf.stop_reason) == (r.n_generated, r.stop_reason)


@pytest.mark.engine
def test_prefix_cache_reuses_the_previous_step(backend, measurements):
    """A refinement step's prompt (previous prompt + answer + instruction) is served from vLLM's
    prefix cache: at least every full KV block of the previous prompt is a cache hit."""
    rng = np.random.default_rng(42)
    step1 = [1] + rng.integers(3, 2048, size=150).tolist()
    first = backend.generate([step1], greedy(8, trace=False), seeds=[0])
    assert first.extras["cached_prompt_tokens"] == [0]
    step2 = step1 + first.results[0].token_ids + rng.integers(3, 2048, size=20).tolist()
    second = backend.generate([step2], greedy(8, trace=False), seeds=[0])
    cached = second.extras["cached_prompt_tokens"][0]
    block = backend.llm.llm_engine.vllm_config.cache_config.block_size
    measurements["prefix cache"] = {"prompt_tokens": len(step2), "cached_tokens": cached, "block": block}
    assert cached >= (len(step1) // block) * block, f"{cached} of {len(step2)} prompt tokens from the cache"
