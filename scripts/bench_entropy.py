"""Benchmark: the cost of tracking entropy during generation, and its memory against the naive way.

1. Throughput: the same greedy generation on SmolLM2 (256 forced new tokens; batch 1 and 8)
   with plain ``model.generate``, with ``generate_with_entropy`` (tracker, all signals) and with
   the top-k-only tracker (``signals.full_vocab: false``), interleaved (the order rotates every
   repetition) and repeated; the ratio of medians is printed. On a CPU, where every kernel runs
   synchronously, it also times the tracker's own calls inside one generation: their share of
   the wall time is the tracker's cost without the run-to-run noise of a shared machine.
2. Memory: the tracker's device state against ``output_logits=True`` with entropy computed
   afterwards (the naive approach), as the generated length grows: bytes actually held by the
   tensors of each, plus the CUDA peak where there is a GPU.

Prints a table and writes JSON (``--out``).

    python scripts/bench_entropy.py --out bench_results/entropy.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from gpu_check import plain_generate, tracked_generate  # the GPU check times the same two calls

from tje_hf import DecodeConfig, SignalConfig, generate_with_entropy, load_model
from tje_hf.generation.hf import build_generation_config, encode_prompts
from tje_hf.generation.outputs import left_pad
from tje_hf.generation.signals import topk_entropy
from tje_hf.records import write_result

QUESTIONS = [
    "Explain how a rainbow forms.", "Write a short story about a lighthouse keeper.",
    "What are the causes of inflation?", "Describe the water cycle in detail.",
    "How do vaccines work?", "Summarise the history of the printing press.",
    "Why is the sky blue?", "Give advice to a new programmer.",
]


def tracker_share(lm, prompts, n_tokens: int, full_vocab: bool) -> float | None:
    """Fraction of one tracked generation's wall time spent inside the tracker's calls.

    Only on a CPU, where kernels run synchronously so a host timer around a call measures its
    work; on a GPU the calls only enqueue kernels (None is returned)."""
    from tje_hf.generation import tracker as tracker_mod

    if lm.model.device.type != "cpu":
        return None
    inside = [0.0]
    original = tracker_mod.EntropyTracker.__call__

    def timed(self, input_ids, scores):
        start = time.perf_counter()
        try:
            return original(self, input_ids, scores)
        finally:
            inside[0] += time.perf_counter() - start

    tracker_mod.EntropyTracker.__call__ = timed
    try:
        wall = tracked_generate(lm.model, lm.tokenizer, prompts, n_tokens, full_vocab=full_vocab)
    finally:
        tracker_mod.EntropyTracker.__call__ = original
    return inside[0] / wall


MODES = ("plain", "tracked", "topk_only")


def run_mode(lm, prompts, n_tokens: int, mode: str) -> float:
    if mode == "plain":
        return plain_generate(lm.model, lm.tokenizer, prompts, n_tokens)
    return tracked_generate(lm.model, lm.tokenizer, prompts, n_tokens, full_vocab=mode == "tracked")


def throughput(lm, batch: int, n_tokens: int, reps: int) -> dict:
    prompts = encode_prompts(lm.tokenizer, [[{"role": "user", "content": q}] for q in (QUESTIONS * 4)[:batch]])
    plain_generate(lm.model, lm.tokenizer, prompts, 8)  # warm-up
    tracked_generate(lm.model, lm.tokenizer, prompts, 8)
    times = {mode: [] for mode in MODES}
    for rep in range(reps):  # interleaved and rotated, so drift of a noisy machine hits all alike
        for i in range(len(MODES)):
            mode = MODES[(rep + i) % len(MODES)]
            times[mode].append(run_mode(lm, prompts, n_tokens, mode))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch, "new_tokens": n_tokens, "reps": reps, "times_s": times,
        "plain_tok_s": batch * n_tokens / med["plain"], "tracked_tok_s": batch * n_tokens / med["tracked"],
        "topk_only_tok_s": batch * n_tokens / med["topk_only"],
        "ratio": med["plain"] / med["tracked"], "ratio_topk_only": med["plain"] / med["topk_only"],
        "per_rep_ratio": [p / t for p, t in zip(times["plain"], times["tracked"], strict=True)],
        "per_rep_ratio_topk_only": [p / t for p, t in zip(times["plain"], times["topk_only"], strict=True)],
        "tracker_share": tracker_share(lm, prompts, n_tokens, full_vocab=True),
        "tracker_share_topk_only": tracker_share(lm, prompts, n_tokens, full_vocab=False),
    }


def memory(lm, n_tokens: int, batch: int = 1) -> dict:
    """Bytes held by each approach's per-token state after generating ``n_tokens``."""
    model, tok = lm.model, lm.tokenizer
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS[:batch]]
    ids, mask = left_pad(encode_prompts(tok, prompts), tok.pad_token_id, model.device)
    decode = DecodeConfig(max_new_tokens=n_tokens, min_new_tokens=n_tokens, temperature=0.0,
                          signals=SignalConfig(trace=True))
    cuda = model.device.type == "cuda"
    # naive: keep every step's raw logits, compute entropy afterwards
    gen = build_generation_config(model, decode, n_tokens, tok.pad_token_id)
    gen.output_logits = True
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        naive_h = torch.stack([topk_entropy(step, 20) for step in out.logits], dim=1)
    naive_bytes = sum(t.numel() * t.element_size() for t in out.logits)
    naive_peak = torch.cuda.max_memory_allocated() - base if cuda else None
    del out, naive_h
    # tracker: running sums + the per-token trace of every signal
    from tje_hf.generation import tracker as tracker_mod

    held = {}
    original = tracker_mod.EntropyTracker.finalize

    def spy(self, sequences, prompt_length):
        held["bytes"] = sum(t.numel() * t.element_size() for t in (
            self.sums, self.counts, self.n_generated, self.n_invalid, self.alive, self.stopped, self.stop_code,
            self.trace, self.trace_segments) if t is not None)
        return original(self, sequences, prompt_length)

    tracker_mod.EntropyTracker.finalize = spy
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        generate_with_entropy(model, tok, prompts, decode)
        tracked_peak = torch.cuda.max_memory_allocated() - base if cuda else None
    finally:
        tracker_mod.EntropyTracker.finalize = original
    return {"new_tokens": n_tokens, "batch": batch, "naive_logits_bytes": naive_bytes,
            "tracker_state_bytes": held["bytes"], "naive_cuda_peak_bytes": naive_peak,
            "tracker_cuda_peak_bytes": tracked_peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    parser.add_argument("--out", default="bench_results/entropy.json")
    args = parser.parse_args()
    lm = load_model()
    rows = [throughput(lm, b, args.tokens, args.reps) for b in args.batches]
    print(f"\nThroughput, greedy, {args.tokens} forced new tokens, median of {args.reps} interleaved runs")
    print("| batch | plain generate tok/s | tracker, all signals tok/s | ratio | tracker, top-k only tok/s | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['plain_tok_s']:.1f} | {r['tracked_tok_s']:.1f} | {r['ratio']:.3f} | "
              f"{r['topk_only_tok_s']:.1f} | {r['ratio_topk_only']:.3f} |")
    if rows[0]["tracker_share"] is not None:
        print("\nShare of the wall time spent inside the tracker (one timed generation per mode)")
        print("| batch | all signals | top-k only |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['batch']} | {100 * r['tracker_share']:.2f} % | {100 * r['tracker_share_topk_only']:.2f} % |")
    mem = [] if args.skip_memory else [memory(lm, n) for n in args.lengths]
    print("\nPer-token state after n new tokens (batch 1): naive output_logits vs the tracker")
    print("| new tokens | naive logits (MiB) | tracker state (KiB) | ratio |")
    print("|---|---|---|---|")
    for m in mem:
        print(f"| {m['new_tokens']} | {m['naive_logits_bytes'] / 2**20:.1f} | {m['tracker_state_bytes'] / 2**10:.1f} | "
              f"{m['naive_logits_bytes'] / m['tracker_state_bytes']:.0f}x |")
    out = write_result(args.out, {"throughput": rows, "memory": mem, "model_revision": lm.revision,
                                  "threads": torch.get_num_threads()})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
