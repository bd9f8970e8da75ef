"""GPU check: tje_hf on the real gpt-oss-20b and Qwen3-30B-A3B architectures, random weights.

Builds each model from its public architecture (``tje_hf.models.memory.REFERENCE_MODELS``: gpt-oss-20b
24 layers, hidden 2880, 64 heads / 8 KV heads of 64, 32 experts / 4 active, intermediate 2880,
sliding window 128 on alternate layers, vocab 201088, GptOssConfig's YaRN rope defaults, eager
attention as tje_hf/configs/models/gpt-oss-20b.yaml; Qwen3-30B-A3B 48 layers, hidden 2048, 32 heads /
4 KV heads of 128, 128 experts / 8 active, moe_intermediate 768, vocab 151936, sdpa) directly on
the GPU in bf16 with random weights (no download, no tokenizer: prompts are token ids), one model
at a time, and measures:

1. decode throughput, plain ``model.generate`` vs ``tje_hf.generate_with_entropy`` (tracker, all
   signals), greedy, exactly N forced new tokens after a 32-token prompt, at batch 1 and 32,
   interleaved, median of the repetitions; tokens/s counts every generated token of the call
   (the 32-token prefill is inside the call and under 1 % of it);
2. host syncs per decoding step, counted as the warnings of ``torch.cuda.set_sync_debug_mode
   ("warn")``: per-step = (count at 40 tokens - count at 8 tokens) / 32, for each path, so the
   fixed per-call syncs (setup, the one read-back after decoding) cancel. ``generate`` itself
   syncs once a step (its stop check); the tracker must add none (``added_per_step == 0``);
3. peak memory (``torch.cuda.max_memory_allocated``) of each decode call at batch 32, against
   ``tje_hf.models.memory.estimate_memory`` for the same batch and context;
4. the prefill saved by cache reuse at 8k context: a refinement-style second step whose
   ``tje_hf.generation.kvcache.plan_reuse`` keeps the 8192-token prefix of step 1 (64 new tokens to
   prefill) against a fresh prefill of the same 8257 tokens, both ``generate_batch`` with
   ``max_new_tokens=1``, timed by the tracker's prefill clock (``GenerationOutput.prefill_time_s``).

Prints a table and writes JSON (``--out``); exits 1 when a check fails or a model errors (the
other model still runs). ``--tiny`` runs the same code on the CPU with tiny configs (2 layers,
hidden 64, vocab 4096, context 1024) in well under a minute; sync counts are then "n/a".

Expected runtime on one H200 (80-141 GB, bf16; the script needs ~42 GB + ~45 GB of eager-attention
scores for gpt-oss' 8k prefill, then ~61 GB for Qwen3): imports and CUDA start ~30 s; building a
model with random weights ~10-20 s each. Transformers' eager decode is launch-bound: assume
~30-60 ms a step for gpt-oss-20b and ~50-100 ms for Qwen3-30B-A3B (48 layers, 128 experts). Decode
phase: 2 batches x 2 paths x 3 reps x 128 tokens = 1536 steps -> ~70 s (gpt-oss) and ~120 s (Qwen3);
syncs: 96 steps, < 10 s; reuse: 3 reps x (two 8k prefills ~1-2 s + one short) ~15 s each. Total
~4-5 minutes. A time budget (``--budget-s``, default 420 s) guards the 8-minute limit: each model
gets its share of what is left, a probe measures the step time first, and the decode phase cuts
its repetitions (and then N, down to 32) to fit half of that share; later phases run only while
time is left. The JSON records the N and repetitions actually used.

    python scripts/gpu_check.py --out bench_results/gpu_check.json
    python scripts/gpu_check.py --tiny --out bench_results/gpu_check_tiny.json
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
import traceback
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from tje_hf import DecodeConfig, SignalConfig, generate_with_entropy
from tje_hf.generation.hf import build_generation_config, generate_batch, sync_device
from tje_hf.generation.kvcache import CachedPrefix, new_cache, plan_reuse
from tje_hf.generation.outputs import left_pad, pad_token_id
from tje_hf.models.memory import estimate_memory, reference_config
from tje_hf.records import write_result

MODELS = ("gpt-oss-20b", "qwen3-30b-a3b")
ATTENTION = {"gpt-oss-20b": "eager", "qwen3-30b-a3b": "sdpa"}
PROMPT_TOKENS = 32
SYNC_TOKENS = (8, 40)
NA = "n/a"


class IdTokenizer:
    """What ``generate_batch`` needs of a tokenizer when prompts are token ids: EOS and pad ids,
    and ``decode`` (ids as text)."""

    def __init__(self, vocab_size: int):
        self.eos_token_id = vocab_size - 1
        self.pad_token_id = vocab_size - 2
        self.all_special_ids = [self.eos_token_id, self.pad_token_id]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


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


def greedy(n: int, full_vocab: bool = True) -> DecodeConfig:
    return DecodeConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.0, signals=SignalConfig(full_vocab=full_vocab))


def plain_generate(model, tok, prompts: list[list[int]], n: int) -> float:
    """Wall seconds of one plain ``model.generate`` of exactly ``n`` tokens (inputs prepared first)."""
    ids, mask = left_pad(prompts, pad_token_id(tok), model.device)
    gen = build_generation_config(model, greedy(n), n, pad_token_id(tok))
    sync_device(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    sync_device(model.device)
    wall = time.perf_counter() - start
    assert out.sequences.shape[1] == ids.shape[1] + n, "plain generate did not produce the forced tokens"
    return wall


def tracked_generate(model, tok, prompts: list[list[int]], n: int, full_vocab: bool = True) -> float:
    """Wall seconds of one ``generate_with_entropy`` of exactly ``n`` tokens (its own timer)."""
    out = generate_with_entropy(model, tok, prompts, greedy(n, full_vocab))
    assert all(r.n_generated == n for r in out.results), "the tracker did not count the forced tokens"
    return out.wall_time_s


def peak_of(device: torch.device, fn, *args):
    """``fn(*args)`` and the CUDA peak bytes allocated during it (``"n/a"`` off CUDA)."""
    if device.type != "cuda":
        return fn(*args), NA
    torch.cuda.reset_peak_memory_stats(device)
    result = fn(*args)
    return result, int(torch.cuda.max_memory_allocated(device))


def count_syncs(device: torch.device, fn, *args) -> int | str:
    """Synchronising CUDA operations during ``fn(*args)``, as ``set_sync_debug_mode("warn")``
    reports them (one warning each). CUDA only (the caller checks)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Phases


def decode_phase(model, tok, config, device, batches, n_tokens, reps, budget_s) -> dict:
    """Throughput and peak memory, plain vs tracker; N and reps cut to fit ``budget_s``."""
    vocab = config.vocab_size
    big = max(batches)
    probe_n = 8
    warm = random_prompts(big, PROMPT_TOKENS, vocab, 1)  # warm-up of both paths at this batch
    plain_generate(model, tok, warm, probe_n)
    tracked_generate(model, tok, warm, probe_n)
    step_s = plain_generate(model, tok, random_prompts(big, PROMPT_TOKENS, vocab, 2), probe_n) / probe_n
    per_rep = lambda n: 2 * len(batches) * n * step_s  # two paths, every batch
    n = n_tokens
    while n > 32 and per_rep(n) > budget_s:
        n //= 2
    reps_fit = max(1, min(reps, int(budget_s // max(per_rep(n), 1e-9))))
    out = {"tokens": n, "reps": reps_fit, "prompt_tokens": PROMPT_TOKENS, "probe_step_s": step_s}
    for b in batches:
        prompts = random_prompts(b, PROMPT_TOKENS, vocab, 10 + b)
        plain, tracked, peak_plain, peak_tracked = [], [], [], []
        for _ in range(reps_fit):  # interleaved: drift hits both alike
            wall, peak = peak_of(device, plain_generate, model, tok, prompts, n)
            plain.append(wall)
            peak_plain.append(peak)
            wall, peak = peak_of(device, tracked_generate, model, tok, prompts, n)
            tracked.append(wall)
            peak_tracked.append(peak)
        plain_tps = b * n / statistics.median(plain)
        tracked_tps = b * n / statistics.median(tracked)
        est = estimate_memory(config, dtype=next(model.parameters()).dtype, quantization="none", batch_size=b,
                              context_tokens=PROMPT_TOKENS + n, record_sliding_past=False)
        entry = {"plain_tok_s": plain_tps, "tracker_tok_s": tracked_tps,
                 "overhead_pct": 100.0 * (plain_tps / tracked_tps - 1.0),
                 "plain_wall_s": plain, "tracker_wall_s": tracked,
                 "peak_bytes_plain": max(peak_plain),  # "n/a" off CUDA (peak_of)
                 "peak_bytes_tracker": max(peak_tracked),
                 "estimate_total_bytes": est.total_bytes}
        if device.type == "cuda":
            entry["peak_over_estimate"] = entry["peak_bytes_tracker"] / est.total_bytes
        out[f"batch_{b}"] = entry
        free_memory(device)
    return out


def sync_phase(model, tok, config, device) -> dict:
    """Host syncs per decoding step of each path (slope between two lengths)."""
    prompts = random_prompts(1, PROMPT_TOKENS, config.vocab_size, 3)
    if device.type != "cuda":
        return {"plain_per_step": NA, "tracker_per_step": NA, "added_per_step": NA, "tokens": list(SYNC_TOKENS),
                "why": "torch.cuda.set_sync_debug_mode needs CUDA"}
    lo, hi = SYNC_TOKENS
    counts = {}
    for path, fn in (("plain", plain_generate), ("tracker", tracked_generate)):
        c_lo = count_syncs(device, fn, model, tok, prompts, lo)
        c_hi = count_syncs(device, fn, model, tok, prompts, hi)
        counts[path] = {"at_lo": c_lo, "at_hi": c_hi, "per_step": (c_hi - c_lo) / (hi - lo),
                        "fixed": c_lo - lo * (c_hi - c_lo) / (hi - lo)}
    return {"plain_per_step": counts["plain"]["per_step"], "tracker_per_step": counts["tracker"]["per_step"],
            "added_per_step": counts["tracker"]["per_step"] - counts["plain"]["per_step"],
            "plain_fixed": counts["plain"]["fixed"], "tracker_fixed": counts["tracker"]["fixed"],
            "counts": counts, "tokens": list(SYNC_TOKENS)}


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


def check_model(name: str, args, device: torch.device, dtype: torch.dtype, share_s: float) -> dict:
    t0 = time.perf_counter()
    deadline = t0 + share_s
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    model, tok, config = build(name, args.tiny, device, dtype)
    sync_device(device)
    result: dict = {"build_s": time.perf_counter() - t0, "params": sum(p.numel() for p in model.parameters()),
                    "dtype": str(dtype).removeprefix("torch."), "attention": ATTENTION[name],
                    "config": {k: getattr(config, k, None) for k in (
                        "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                        "vocab_size", "sliding_window", "num_local_experts", "num_experts", "num_experts_per_tok")}}
    est = estimate_memory(config, dtype=dtype, quantization="none", batch_size=1, context_tokens=1)
    result["weights_bytes_estimated"] = est.weights_bytes
    result["weights_bytes_measured"] = (torch.cuda.memory_allocated(device) - before if device.type == "cuda"
                                        else sum(p.nbytes for p in model.parameters()) + sum(
                                            b.nbytes for b in model.buffers()))
    tracked_generate(model, tok, random_prompts(1, PROMPT_TOKENS, config.vocab_size, 0), 4)  # warm-up
    left = deadline - time.perf_counter()
    result["decode"] = decode_phase(model, tok, config, device, args.batches, args.decode_tokens, args.reps, 0.5 * left)
    result["syncs"] = sync_phase(model, tok, config, device)
    result["reuse"] = reuse_phase(model, tok, config, device, args.context, args.suffix, args.reps, deadline)
    result["wall_s"] = time.perf_counter() - t0
    del model
    free_memory(device)
    return result


def model_checks(r: dict) -> dict:
    checks = {}
    for key, entry in r["decode"].items():
        if key.startswith("batch_"):
            checks[f"decode {key} throughput > 0"] = entry["plain_tok_s"] > 0 and entry["tracker_tok_s"] > 0
    s = r["syncs"]
    if s["added_per_step"] != NA:
        # The counting works when it sees generate's own stop check, once a step.
        checks["sync counting sees generate's per-step stop check"] = s["plain_per_step"] >= 0.5
        checks["tracker adds no host sync per step"] = abs(s["added_per_step"]) < 1e-9
    # The fastest of the repetitions: other load on the machine only ever adds time.
    checks["cache reuse prefills faster than a fresh prefill"] = r["reuse"]["reuse_prefill_min_s"] < r["reuse"][
        "fresh_prefill_min_s"]
    checks["reuse plan reused the prefix"] = r["reuse"]["plan"]["mode"] == "reused"
    return checks


def table(results: dict) -> str:
    fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else str(v)
    lines = ["| model | batch | N | plain tok/s | tracker tok/s | overhead % | peak GiB (plain / tracker) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} |||||")
            continue
        d = r["decode"]
        for key, e in d.items():
            if not key.startswith("batch_"):
                continue
            gib = lambda v: fmt(v / 2**30, ".2f") if isinstance(v, int) else v
            lines.append(f"| {name} | {key[6:]} | {d['tokens']} | {e['plain_tok_s']:.1f} | {e['tracker_tok_s']:.1f} "
                         f"| {e['overhead_pct']:+.1f} | {gib(e['peak_bytes_plain'])} / {gib(e['peak_bytes_tracker'])} |")
    lines += ["", ("| model | syncs/step plain | syncs/step tracker | added | reuse prefill s | fresh prefill s "
                   "| speedup | prefilled (reuse / fresh) |"), "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            continue
        s, u = r["syncs"], r["reuse"]
        lines.append(f"| {name} | {fmt(s['plain_per_step'], '.2f')} | {fmt(s['tracker_per_step'], '.2f')} | "
                     f"{fmt(s['added_per_step'], '+.2f')} | {u['reuse_prefill_s']:.4f} | {u['fresh_prefill_s']:.4f} | "
                     f"{u['speedup']:.1f}x | {u['plan']['prefilled']} / {u['context'] + 1 + u['suffix']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (the same code path)")
    parser.add_argument("--out", default="bench_results/gpu_check.json")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    parser.add_argument("--device", default=None, help="default: cuda (full), cpu (--tiny)")
    parser.add_argument("--batches", default=None, help="decode batch sizes (default 1,32; --tiny 1,8)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="forced new tokens (default 128; --tiny 16)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--context", type=int, default=None, help="reuse prefix tokens (default 8192; --tiny 1024)")
    parser.add_argument("--suffix", type=int, default=64, help="new tokens of the second step's prompt")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (default 420; --tiny 50)")
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
    args.budget_s = args.budget_s or (50.0 if tiny else 420.0)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list(MODELS)}")
    device = torch.device(args.device or ("cpu" if tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("the full check needs a CUDA GPU (none is visible); use --tiny for the CPU variant")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    start = time.perf_counter()
    results: dict = {}
    for i, name in enumerate(models):
        share = (args.budget_s - (time.perf_counter() - start)) / (len(models) - i)
        print(f"[{time.perf_counter() - start:6.1f} s] {name}: building on {device} ({share:.0f} s budget)", flush=True)
        try:
            results[name] = check_model(name, args, device, dtype, share)
            results[name]["checks"] = model_checks(results[name])
        except Exception as exc:  # noqa: BLE001 - report it and still check the next model
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(results[name]["traceback"], file=sys.stderr)
        free_memory(device)  # after the except block: its traceback no longer holds the model
    checks = {f"{name}: {k}": v for name, r in results.items() for k, v in r.get("checks", {}).items()}
    ok = all(checks.values()) and not any("error" in r for r in results.values())
    report = {"mode": "tiny" if tiny else "full", "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "args": vars(args), "elapsed_s": time.perf_counter() - start, "models": results, "checks": checks,
              "ok": ok}
    print("\n" + table(results))
    for key, value in checks.items():
        print(f"{'PASS' if value else 'FAIL'}  {key}")
    print(f"\n{report['elapsed_s']:.0f} s")
    print(f"wrote {write_result(args.out, report)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
