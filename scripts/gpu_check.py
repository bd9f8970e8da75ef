"""GPU check: the decoding path of a packaged run on gpt-oss-20b's and Qwen3-30B-A3B's real
architectures, with random weights, measured in one call.

Each model is built from its public architecture (``tje_hf.models.memory.REFERENCE_MODELS``: gpt-oss-20b
24 layers, hidden 2880, 64 heads / 8 KV heads of 64, 32 experts / 4 active, sliding window 128 on
alternate layers, vocabulary 201,088, eager attention as tje_hf/configs/models/gpt-oss-20b.yaml;
Qwen3-30B-A3B 48 layers, hidden 2048, 32 heads / 4 KV heads of 128, 128 experts / 8 active,
vocabulary 151,936, sdpa) directly on the GPU in bf16 with random weights (no download, no
tokenizer: prompts are token ids), one model at a time. Random bf16 weights decode their MoE
layers with Transformers' ``batched_mm`` (a copy of each selected expert per token), not the
MXFP4 (gpt-oss) or FP8 (Qwen) kernels of the published checkpoints: the JSON and the table name
the attention and MoE implementations that ran, and the figures hold for those.

tje_hf's side runs through ``HfBackend.generate``, the call the refinement loop makes, with the
packaged decoding settings: temperature 0.7 with the per-row seeded sampler, every signal, the
per-token trace with 5 alternatives, a per-row token budget and the progress reads (once a
second); and greedy (the tracker alone) as a second configuration. Each call generates exactly
N new tokens after a 32-token prompt. Measured, per model and batch (1 and 32):

1. the end-to-end ratio: plain ``model.generate`` (Transformers' own sampling at T = 0.7, or
   greedy) against tje_hf's call, interleaved, median and range over the repetitions;
2. the share of the decoding time that tje_hf's per-step work takes, inside one generate call:
   every call of the tracker, the sampler and the stop criteria is bracketed by CUDA events on the
   model's stream (on the CPU, by the clock), summed, and divided by the call's wall time;
3. host synchronisations per decoding step, plain and tje_hf, counted as the warnings of
   ``torch.cuda.set_sync_debug_mode("warn")`` between two lengths (slope, so fixed per-call
   syncs cancel), on both configurations, the progress reads (one sync each, at most once a
   second by design) counted apart. It counts implicit syncs (item, .cpu, nonzero, bool), not
   explicit ``torch.cuda.synchronize``, which tje_hf calls only before and after a generate call;
4. the peak memory of tje_hf's sampled call at the largest batch (``torch.cuda.max_memory_allocated``;
   on the CPU, the weights plus what an :class:`~tje_hf.models.allocation.AllocationMeter` sees
   allocated) against ``tje_hf.models.memory.estimate_memory`` for the same shapes;
5. the prefill that cache reuse saves at 8k context: a refinement-style second step whose
   ``plan_reuse`` keeps the 8192-token prefix of step 1 against a fresh prefill of the same prompt.

Goals (the README's; evaluated on a GPU only, the ``--tiny`` CPU run checks the code path): the
tracker, sampler and criteria take <= 2 % of the decoding time at batch 1 and 32 on the sampled
configuration; tje_hf adds 0 host syncs a step; the memory estimate is within 10 % of the measured
peak. Prints a table and PASS/FAIL lines, writes JSON (``--out``), and with ``--readme`` writes
the table into README.md (between the ``<!-- gpu-check -->`` markers); exits 1 when a check fails
or a model errors (the other model still runs). ``--tiny`` runs the same code on the CPU with tiny
configs (2 layers, hidden 64, vocabulary 4096) in well under a minute.

Time on one H100 or H200 (80-141 GB; ~42 GB of gpt-oss weights in bf16, then ~61 GB for Qwen3):
imports and CUDA start ~30 s, building a model ~10-20 s; a time budget (``--budget-s``, default
420 s) keeps the whole check under 8 minutes: each model gets its share of what is left, a probe
measures a decoding step first, and the decoding phase cuts N (down to 32) and then its
repetitions (down to 3) to fit half of that share; later phases run only while time is left. The
JSON records the N and repetitions used.

    python scripts/gpu_check.py --out bench_results/gpu_check.json --readme
    python scripts/gpu_check.py --tiny --out bench_results/gpu_check_tiny.json
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import ClassVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from tje_hf import DecodeConfig, SignalConfig
from tje_hf.generation.hf import HfBackend, build_generation_config, generate_batch, sync_device
from tje_hf.generation.kvcache import CachedPrefix, new_cache, plan_reuse
from tje_hf.generation.outputs import left_pad, pad_token_id
from tje_hf.generation.sampling import SeededSampler
from tje_hf.generation.tracker import EntropyTracker, ProgressReport, TokenBudgetStop, WindowMeanStop
from tje_hf.models.allocation import AllocationMeter
from tje_hf.models.memory import estimate_memory, reference_config
from tje_hf.records import write_result

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("gpt-oss-20b", "qwen3-30b-a3b")
ATTENTION = {"gpt-oss-20b": "eager", "qwen3-30b-a3b": "sdpa"}
PROMPT_TOKENS = 32
SYNC_TOKENS = (8, 40)
CONFIGS = ("sampled", "greedy")
GOAL_SHARE_PCT = 2.0  # tracker + sampler + criteria, of the decoding time
GOAL_ESTIMATE_ERROR = 0.10  # |estimate / peak - 1|
README_MARK = "<!-- gpu-check -->"
NA = "n/a"


class IdTokenizer:
    """What the backend needs of a tokenizer when prompts are token ids: EOS and pad ids, and
    ``decode`` (ids as text)."""

    def __init__(self, vocab_size: int):
        self.eos_token_id = vocab_size - 1
        self.pad_token_id = vocab_size - 2
        self.all_special_ids = [self.eos_token_id, self.pad_token_id]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)

    def __len__(self) -> int:
        return self.eos_token_id + 1


def tiny_config(name: str):
    from transformers import GptOssConfig, Qwen3MoeConfig

    common = {"vocab_size": 4096, "hidden_size": 64, "head_dim": 16, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 4096}
    if name == "gpt-oss-20b":
        return GptOssConfig(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, sliding_window=64,
                            **common)
    return Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                          norm_topk_prob=True, **common)


def build(name: str, tiny: bool, device: torch.device, dtype: torch.dtype):
    """The model with random weights, constructed on ``device`` (no CPU copy of a large model)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(name) if tiny else reference_config(name)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=ATTENTION[name])
    model.eval()
    tok = IdTokenizer(config.vocab_size)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    return model, tok, config


def random_prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (batch, length), generator=g).tolist()


def decode_config(kind: str, n: int) -> DecodeConfig:
    """The packaged runs' decoding (``sampled``: T = 0.7, every signal, trace with 5 alternatives)
    or the tracker alone (``greedy``), forced to exactly ``n`` new tokens."""
    return DecodeConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.7 if kind == "sampled" else 0.0, seed=0,
                        signals=SignalConfig(trace=kind == "sampled", trace_alternatives=5 if kind == "sampled" else 0))


def plain_generate(model, tok, prompts: list[list[int]], n: int, kind: str) -> float:
    """Wall seconds of one plain ``model.generate`` of exactly ``n`` tokens: Transformers' own
    sampling (softmax and multinomial at T = 0.7, no top-k/top-p) or greedy."""
    ids, mask = left_pad(prompts, pad_token_id(tok), model.device)
    gen = build_generation_config(model, decode_config(kind, n), n, pad_token_id(tok))
    gen.min_new_tokens = n
    if kind == "sampled":
        gen.do_sample, gen.temperature, gen.top_k, gen.top_p = True, 0.7, 0, 1.0
    sync_device(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    sync_device(model.device)
    wall = time.perf_counter() - start
    assert out.sequences.shape[1] == ids.shape[1] + n, "plain generate did not produce the forced tokens"
    return wall


class ProgressCount:
    """The backend's progress callback: counts the reports (one host read each)."""

    def __init__(self):
        self.reports = 0

    def __call__(self, tokens: int) -> None:
        self.reports += 1


def tje_generate(backend: HfBackend, prompts: list[list[int]], n: int, kind: str,
                 progress: ProgressCount | None = None) -> float:
    """Wall seconds of one ``HfBackend.generate`` of exactly ``n`` tokens a row, as the refinement
    loop calls it (per-row seeds, a per-row token budget, the progress callback)."""
    out = backend.generate(prompts, decode_config(kind, n), seeds=list(range(len(prompts))),
                           token_budget=[n] * len(prompts), progress=progress or ProgressCount(),
                           progress_interval=1.0)
    assert all(r.n_generated == n for r in out.results), "the tracker did not count the forced tokens"
    return out.wall_time_s


class ComponentClock:
    """Times tje_hf's per-step work inside generate calls: every call of the tracker, the sampler
    and the stop criteria, bracketed by CUDA events on the current stream of ``device`` (on the
    CPU, by ``time.perf_counter``: kernels run synchronously there). Also notes the MoE
    implementation in effect while decoding. Installed on the classes for the ``with`` block."""

    PARTS: ClassVar[dict[str, tuple]] = {"tracker": (EntropyTracker,), "sampler": (SeededSampler,),
                                         "criteria": (WindowMeanStop, TokenBudgetStop, ProgressReport)}

    def __init__(self, device: torch.device, model=None):
        self.device = device
        self.model = model
        self.marks: dict[str, list] = {part: [] for part in self.PARTS}
        self.experts_implementation = None
        self._saved: list = []

    def _wrap(self, part: str, call):
        clock = self

        def timed(obj, *args, **kwargs):
            if clock.experts_implementation is None and clock.model is not None and hasattr(
                    clock.model, "get_experts_implementation"):
                clock.experts_implementation = clock.model.get_experts_implementation()
            if clock.device.type == "cuda":
                stream = torch.cuda.current_stream(clock.device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                result = call(obj, *args, **kwargs)
                end.record(stream)
                clock.marks[part].append((start, end))
            else:
                t0 = time.perf_counter()
                result = call(obj, *args, **kwargs)
                clock.marks[part].append(time.perf_counter() - t0)
            return result

        return timed

    def __enter__(self):
        for part, classes in self.PARTS.items():
            for cls in classes:
                self._saved.append((cls, cls.__call__))
                cls.__call__ = self._wrap(part, cls.__call__)
        return self

    def __exit__(self, *exc):
        for cls, call in reversed(self._saved):
            cls.__call__ = call
        self._saved.clear()

    def seconds(self) -> dict[str, float]:
        """Total seconds per part (after the work has finished: the caller synchronised)."""
        out = {}
        for part, marks in self.marks.items():
            if self.device.type == "cuda":
                out[part] = sum(start.elapsed_time(end) for start, end in marks) / 1000.0
            else:
                out[part] = float(sum(marks))
        return out


def count_syncs(fn, *args, **kwargs) -> int:
    """Synchronising CUDA operations during ``fn(*args)``, as ``set_sync_debug_mode("warn")``
    reports them (one warning each). CUDA only (the caller checks)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


# --------------------------------------------------------------------------------------------
# Phases


def decode_phase(model, tok, config, device, batches, n_tokens, reps, budget_s) -> dict:
    """Per batch and configuration: plain vs tje_hf end to end (interleaved, the order rotating),
    and tje_hf's per-step share inside its own calls. N, then the repetitions, cut to fit
    ``budget_s`` (never below N = 32 and 3 repetitions unless asked)."""
    backend = HfBackend(model, tok)
    vocab = config.vocab_size
    big = max(batches)
    probe_n = 8
    warm = random_prompts(big, PROMPT_TOKENS, vocab, 1)  # warm-up of every path at the largest batch
    for kind in CONFIGS:
        plain_generate(model, tok, warm, probe_n, kind)
        tje_generate(backend, warm, probe_n, kind)
    step_s = plain_generate(model, tok, random_prompts(big, PROMPT_TOKENS, vocab, 2), probe_n, "sampled") / probe_n
    # three calls (plain, tje_hf, tje_hf timed) per configuration and batch, each batch no slower than the largest
    per_rep = lambda n: 3 * len(CONFIGS) * len(batches) * n * step_s
    n = n_tokens
    while n > 32 and reps * per_rep(n) > budget_s:
        n //= 2
    reps_fit = max(min(3, reps), min(reps, int(budget_s // max(per_rep(n), 1e-9))))
    out = {"tokens": n, "reps": reps_fit, "prompt_tokens": PROMPT_TOKENS, "probe_step_s": step_s}
    experts = None
    for b in batches:
        prompts = random_prompts(b, PROMPT_TOKENS, vocab, 10 + b)
        for kind in CONFIGS:
            walls = {"plain": [], "tje": [], "timed": []}
            shares = {part: [] for part in ComponentClock.PARTS}
            for rep in range(reps_fit):
                order = ("plain", "tje", "timed")[rep % 3:] + ("plain", "tje", "timed")[:rep % 3]
                for path in order:  # interleaved: drift on the machine hits every path alike
                    if path == "plain":
                        walls[path].append(plain_generate(model, tok, prompts, n, kind))
                    elif path == "tje":
                        walls[path].append(tje_generate(backend, prompts, n, kind))
                    else:
                        with ComponentClock(device, model) as clock:
                            wall = tje_generate(backend, prompts, n, kind)
                        walls[path].append(wall)
                        for part, sec in clock.seconds().items():
                            shares[part].append(100.0 * sec / wall)
                        experts = experts or clock.experts_implementation
            plain_tps = b * n / statistics.median(walls["plain"])
            tje_tps = b * n / statistics.median(walls["tje"])
            total_share = [sum(shares[p][i] for p in shares) for i in range(reps_fit)]
            out[f"batch_{b}_{kind}"] = {
                "plain_tok_s": plain_tps, "tje_tok_s": tje_tps, "throughput_ratio": tje_tps / plain_tps,
                "ratio_runs": [p / t for p, t in zip(walls["plain"], walls["tje"], strict=True)],
                "share_pct": {part: spread(v) for part, v in shares.items()},
                "share_total_pct": spread(total_share),
                "wall_s": walls}
        free_memory(device)
    out["experts_implementation"] = experts
    return out


def sync_phase(model, tok, config, device) -> dict:
    """Host syncs per decoding step of each path and configuration (slope between two lengths);
    tje_hf's progress reads (one sync each, at most once a second) are counted apart."""
    prompts = random_prompts(1, PROMPT_TOKENS, config.vocab_size, 3)
    if device.type != "cuda":
        return {"why": "torch.cuda.set_sync_debug_mode needs CUDA", "tokens": list(SYNC_TOKENS),
                **{f"{kind}_added_per_step": NA for kind in CONFIGS}}
    backend = HfBackend(model, tok)
    lo, hi = SYNC_TOKENS
    out: dict = {"tokens": list(SYNC_TOKENS)}
    for kind in CONFIGS:
        counts = {}
        for path in ("plain", "tje"):
            at, reads = {}, {}
            for length in (lo, hi):
                progress = ProgressCount()
                if path == "plain":
                    at[length] = count_syncs(plain_generate, model, tok, prompts, length, kind)
                else:
                    at[length] = count_syncs(tje_generate, backend, prompts, length, kind, progress)
                reads[length] = progress.reports
                at[length] -= progress.reports
            counts[path] = {"at_lo": at[lo], "at_hi": at[hi], "per_step": (at[hi] - at[lo]) / (hi - lo),
                            "progress_reads": reads}
        out[kind] = counts
        out[f"{kind}_added_per_step"] = counts["tje"]["per_step"] - counts["plain"]["per_step"]
    return out


def memory_phase(model, tok, config, device, dtype, batch: int, n: int, attn: str) -> dict:
    """Peak memory of tje_hf's sampled call at ``batch`` against the estimate for the same shapes
    (no cache reuse in this call: the sliding layers keep their window only)."""
    backend = HfBackend(model, tok)
    prompts = random_prompts(batch, PROMPT_TOKENS, config.vocab_size, 20)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if device.type == "cuda":
        free_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        tje_generate(backend, prompts, n, "sampled")
        peak = int(torch.cuda.max_memory_allocated(device))
        how = "torch.cuda.max_memory_allocated"
    else:
        with AllocationMeter() as meter:
            tje_generate(backend, prompts, n, "sampled")
        peak = weights + meter.peak_bytes
        how = "weights + AllocationMeter peak"
    est = estimate_memory(config, dtype=dtype, quantization="none", batch_size=batch,
                          context_tokens=PROMPT_TOKENS + n, record_sliding_past=False, attn_implementation=attn,
                          device_type=device.type)
    return {"batch": batch, "tokens": n, "peak_bytes": peak, "measured_by": how, "weights_bytes": weights,
            "estimate_total_bytes": est.total_bytes, "estimate_activation_bytes": est.activation_bytes,
            "estimate_over_peak": est.total_bytes / peak}


def reuse_phase(model, tok, config, device, context: int, suffix: int, reps: int, deadline: float) -> dict:
    """Time to first token of a refinement-style second step: reused ``context``-token prefix vs a
    fresh prefill of the same prompt. Median over the repetitions that fit before ``deadline``."""
    pad = pad_token_id(tok)
    prompt = random_prompts(1, context, config.vocab_size, 4)[0]
    tail = random_prompts(1, suffix, config.vocab_size, 5)[0]
    one = DecodeConfig(max_new_tokens=1, temperature=0.0, signals=SignalConfig())
    reuse_s, fresh_s, same, plans = [], [], [], []
    for rep in range(max(reps, 1)):
        t_rep = time.perf_counter()
        ids, mask = left_pad([prompt], pad, device)  # step 1: the long prompt, into a refinement cache
        first = generate_batch(model, tok, ids, mask, one, cache=new_cache(model))
        prefix = CachedPrefix.after_generate(first.cache, first.sequences, mask,
                                             [r.n_generated for r in first.results])
        new = prompt + first.results[0].token_ids + tail
        del first
        runs = {}
        order = ("reuse", "fresh") if rep % 2 == 0 else ("fresh", "reuse")
        for kind in order:
            if kind == "reuse":
                plan = plan_reuse(prefix, [new], pad, device)
                out = generate_batch(model, tok, plan.input_ids, plan.attention_mask, one, cache=plan.cache)
                plans.append({"mode": plan.mode, "reused": plan.reused[0], "prefilled": plan.prefilled[0]})
            else:
                ids2, mask2 = left_pad([new], pad, device)
                out = generate_batch(model, tok, ids2, mask2, one, cache=new_cache(model))
            runs[kind] = out
        reuse_s.append(runs["reuse"].prefill_time_s)
        fresh_s.append(runs["fresh"].prefill_time_s)
        same.append(runs["reuse"].results[0].token_ids == runs["fresh"].results[0].token_ids)
        del runs, prefix, plan, out  # every reference to this rep's caches
        free_memory(device)
        if time.perf_counter() + (time.perf_counter() - t_rep) > deadline:
            break
    reuse_med, fresh_med = statistics.median(reuse_s), statistics.median(fresh_s)
    return {"context": context, "suffix": suffix, "reps": len(reuse_s), "plan": plans[0],
            "reuse_prefill_s": reuse_med, "fresh_prefill_s": fresh_med, "saved_s": fresh_med - reuse_med,
            "reuse_prefill_min_s": min(reuse_s), "fresh_prefill_min_s": min(fresh_s),
            "speedup": fresh_med / reuse_med if reuse_med > 0 else math.inf,
            "reuse_runs_s": reuse_s, "fresh_runs_s": fresh_s, "same_first_token": all(same)}


def components_phase(device: torch.device, tiny: bool, batches: list[int]) -> dict:
    """``scripts/bench_sampling.py``'s per-step component costs, on this device: the sampler and
    the tracker as multiples of softmax + multinomial on the same logits, at the paper models'
    vocabularies (a 4,096-token vocabulary with ``--tiny``), float32 and bf16 logits."""
    from bench_sampling import VOCABS, bench_components

    vocabs = {"tiny": 4096} if tiny else VOCABS
    return {"rows": bench_components(vocabs, sorted(set(batches) | {8}), (torch.float32, torch.bfloat16),
                                     rounds=3, calls=5 if tiny else 9, device=device, quiet=True)}


def check_model(name: str, args, device: torch.device, dtype: torch.dtype, share_s: float) -> dict:
    t0 = time.perf_counter()
    deadline = t0 + share_s
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    model, tok, config = build(name, args.tiny, device, dtype)
    sync_device(device)
    result: dict = {"build_s": time.perf_counter() - t0, "params": sum(p.numel() for p in model.parameters()),
                    "dtype": str(dtype).removeprefix("torch."), "attention": model.config._attn_implementation,
                    "config": {k: getattr(config, k, None) for k in (
                        "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                        "vocab_size", "sliding_window", "num_local_experts", "num_experts", "num_experts_per_tok")}}
    est = estimate_memory(config, dtype=dtype, quantization="none", batch_size=1, context_tokens=1)
    result["weights_bytes_estimated"] = est.weights_bytes
    result["weights_bytes_measured"] = (torch.cuda.memory_allocated(device) - before if device.type == "cuda"
                                        else sum(p.nbytes for p in model.parameters()) + sum(
                                            b.nbytes for b in model.buffers()))
    tje_generate(HfBackend(model, tok), random_prompts(1, PROMPT_TOKENS, config.vocab_size, 0), 4, "sampled")
    left = deadline - time.perf_counter()
    result["decode"] = decode_phase(model, tok, config, device, args.batches, args.decode_tokens, args.reps, 0.5 * left)
    result["moe"] = result["decode"].pop("experts_implementation")
    result["syncs"] = sync_phase(model, tok, config, device)
    result["memory"] = memory_phase(model, tok, config, device, dtype, max(args.batches), result["decode"]["tokens"],
                                    result["attention"])
    result["reuse"] = reuse_phase(model, tok, config, device, args.context, args.suffix, args.reps, deadline)
    result["wall_s"] = time.perf_counter() - t0
    del model
    free_memory(device)
    return result


def model_checks(r: dict, gpu: bool) -> dict:
    """What must hold: the measurements (every mode), and the README's goals (on a GPU only)."""
    checks = {}
    d = r["decode"]
    for key, entry in d.items():
        if key.startswith("batch_"):
            checks[f"{key}: both paths generated"] = entry["plain_tok_s"] > 0 and entry["tje_tok_s"] > 0
            if gpu and key.endswith("_sampled"):
                checks[f"{key}: tje_hf's per-step work <= {GOAL_SHARE_PCT:g} % of decoding"] = \
                    entry["share_total_pct"]["median"] <= GOAL_SHARE_PCT
    s = r["syncs"]
    for kind in CONFIGS:
        if s[f"{kind}_added_per_step"] != NA:
            # The counting works when it sees generate's own stop check, once a step.
            checks[f"{kind}: sync counting sees generate's per-step stop check"] = \
                s[kind]["plain"]["per_step"] >= 0.5
            checks[f"{kind}: tje_hf adds no host sync per step"] = abs(s[f"{kind}_added_per_step"]) < 1e-9
    m = r["memory"]
    if gpu:
        checks[f"memory estimate within {GOAL_ESTIMATE_ERROR:.0%} of the peak"] = \
            abs(m["estimate_over_peak"] - 1) <= GOAL_ESTIMATE_ERROR
    else:
        checks["memory measured"] = m["peak_bytes"] > m["weights_bytes"] > 0
    # The fastest of the repetitions: other load on the machine only ever adds time.
    checks["cache reuse prefills faster than a fresh prefill"] = r["reuse"]["reuse_prefill_min_s"] < r["reuse"][
        "fresh_prefill_min_s"]
    checks["reuse plan reused the prefix"] = r["reuse"]["plan"]["mode"] == "reused"
    return checks


def table(report: dict) -> str:
    """The Markdown tables of a report (what ``--readme`` writes into README.md)."""
    fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else str(v)
    results = report["models"]
    weights = "tiny configs, float32 on the CPU" if report["mode"] == "tiny" else "real shapes, bf16"
    lines = [(f"{report['device_name']}, torch {report['torch']}, transformers {report['transformers']}, "
              f"random weights ({weights}):"), "",
             ("| model (attention, MoE) | batch | decoding | N | plain tok/s | tje_hf tok/s | ratio (range) "
              "| tje_hf's share of decoding: tracker / sampler / criteria = total % |"),
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} |||||||")
            continue
        d = r["decode"]
        moe = ", ".join(sorted(set((r["moe"] or {}).values()))) or "dense"
        label = f"{name} ({r['attention']}, {moe})"
        for key, e in d.items():
            if not key.startswith("batch_"):
                continue
            _, batch, kind = key.split("_")
            sh = e["share_pct"]
            lines.append(
                f"| {label} | {batch} | {kind} | {d['tokens']} | {e['plain_tok_s']:.1f} | {e['tje_tok_s']:.1f} "
                f"| {e['throughput_ratio']:.3f} ({min(e['ratio_runs']):.3f}-{max(e['ratio_runs']):.3f}) "
                f"| {sh['tracker']['median']:.2f} / {sh['sampler']['median']:.2f} / {sh['criteria']['median']:.2f} "
                f"= {e['share_total_pct']['median']:.2f} |")
    lines += ["", ("| model | syncs a step, sampled: plain / added by tje_hf | greedy: plain / added "
                   "| peak MiB (batch) | estimate / peak | reuse prefill s | fresh prefill s |"),
              "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            continue
        s, m, u = r["syncs"], r["memory"], r["reuse"]
        syncs = [f"{fmt(s[k]['plain']['per_step'], '.2f') if k in s else NA} / "
                 f"{fmt(s[f'{k}_added_per_step'], '+.2f')}" for k in CONFIGS]
        lines.append(f"| {name} | {syncs[0]} | {syncs[1]} | {m['peak_bytes'] / 2**20:.0f} ({m['batch']}) "
                     f"| {m['estimate_over_peak']:.3f} | {u['reuse_prefill_s']:.4f} | {u['fresh_prefill_s']:.4f} |")
    if report.get("components"):
        from bench_sampling import components_table

        lines += ["", "Per decoding step, as a multiple of softmax + multinomial on the same logits:", "",
                  *components_table(report["components"]["rows"])]
    return "\n".join(lines)


def write_readme(text: str, readme: Path = ROOT / "README.md") -> None:
    """Put ``text`` between the two ``<!-- gpu-check -->`` markers of README.md."""
    content = readme.read_text()
    pattern = re.compile(re.escape(README_MARK) + r".*?" + re.escape(README_MARK), re.DOTALL)
    if len(pattern.findall(content)) != 1:
        raise SystemExit(f"{readme}: expected one block between two {README_MARK} markers")
    readme.write_text(pattern.sub(lambda _: f"{README_MARK}\n{text}\n{README_MARK}", content))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (the same code path)")
    parser.add_argument("--out", default="bench_results/gpu_check.json")
    parser.add_argument("--readme", action="store_true", help="write the tables into README.md (GPU runs)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    parser.add_argument("--device", default=None, help="default: cuda (full), cpu (--tiny)")
    parser.add_argument("--batches", default=None, help="decode batch sizes (default 1,32; --tiny 1,8)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="forced new tokens (default 128; --tiny 16)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (at least 3 kept)")
    parser.add_argument("--context", type=int, default=None, help="reuse prefix tokens (default 8192; --tiny 1024)")
    parser.add_argument("--suffix", type=int, default=64, help="new tokens of the second step's prompt")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (default 420; --tiny 60)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default 1 with --tiny: tiny matrices gain nothing from more, and on a "
                             "busy machine OpenMP threads spin-wait for each other)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    if args.threads or tiny:
        torch.set_num_threads(args.threads or 1)
    args.batches = [int(b) for b in (args.batches or ("1,8" if tiny else "1,32")).split(",")]
    args.decode_tokens = args.decode_tokens or (16 if tiny else 128)
    args.context = args.context or (1024 if tiny else 8192)
    args.budget_s = args.budget_s or (60.0 if tiny else 420.0)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list(MODELS)}")
    device = torch.device(args.device or ("cpu" if tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("the full check needs a CUDA GPU (none is visible); use --tiny for the CPU variant")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    start = time.perf_counter()
    print(f"[{time.perf_counter() - start:6.1f} s] sampler and tracker against softmax + multinomial", flush=True)
    components = components_phase(device, tiny, args.batches)
    results: dict = {}
    for i, name in enumerate(models):
        share = (args.budget_s - (time.perf_counter() - start)) / (len(models) - i)
        print(f"[{time.perf_counter() - start:6.1f} s] {name}: building on {device} ({share:.0f} s budget)", flush=True)
        try:
            results[name] = check_model(name, args, device, dtype, share)
            results[name]["checks"] = model_checks(results[name], gpu=device.type == "cuda")
        except Exception as exc:  # noqa: BLE001 - report it and still check the next model
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(results[name]["traceback"], file=sys.stderr)
        free_memory(device)  # after the except block: its traceback no longer holds the model
    checks = {f"{name}: {k}": v for name, r in results.items() for k, v in r.get("checks", {}).items()}
    ok = all(checks.values()) and not any("error" in r for r in results.values())
    report = {"mode": "tiny" if tiny else "full", "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "goals": {"share_pct": GOAL_SHARE_PCT, "added_syncs_per_step": 0,
                        "estimate_error": GOAL_ESTIMATE_ERROR, "evaluated": device.type == "cuda"},
              "args": vars(args), "elapsed_s": time.perf_counter() - start, "components": components,
              "models": results, "checks": checks, "ok": ok}
    text = table(report)
    print("\n" + text)
    for key, value in checks.items():
        print(f"{'PASS' if value else 'FAIL'}  {key}")
    print(f"\n{report['elapsed_s']:.0f} s")
    print(f"wrote {write_result(args.out, report)}")
    if args.readme:
        write_readme(text + "\n\n" + "\n".join(f"{'PASS' if v else 'FAIL'}  {k}" for k, v in checks.items()))
        print("wrote README.md (the gpu-check block)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
