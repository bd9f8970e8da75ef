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

Real-vocabulary mode (``--arch``): the same measurements on a tiny random-weight
``GptOssForCausalLM`` (``gpt-oss``, 201,088 tokens) or ``Qwen3MoeForCausalLM`` (``qwen3-moe``,
151,936 tokens) with the real tokenizer of ``scripts/fetch_reference_formats.py``, so that the
tracker works on logits of the real width. The model's own forward is tiny (hidden size 64), so
the tracker's *share* there is an upper bound; its time per token (also printed) is what to
compare with a real model's decode step.

    python scripts/bench_entropy.py --arch gpt-oss qwen3-moe --reps 3 --tokens 64 --skip-memory \
        --out bench_results/entropy_real_vocab.json
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from gpu_check import plain_generate as _plain_generate  # the GPU check times the same plain call

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


def plain_generate(model, tok, prompts, n: int) -> float:
    """Wall seconds of one plain greedy ``model.generate`` of exactly ``n`` tokens."""
    return _plain_generate(model, tok, prompts, n, "greedy")


def tracked_generate(model, tok, prompts, n: int, full_vocab: bool = True) -> float:
    """Wall seconds of one greedy ``generate_with_entropy`` of exactly ``n`` tokens (its own timer)."""
    decode = DecodeConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.0,
                          signals=SignalConfig(full_vocab=full_vocab))
    out = generate_with_entropy(model, tok, prompts, decode)
    assert all(r.n_generated == n for r in out.results), "the tracker did not count the forced tokens"
    return out.wall_time_s


ROOT = Path(__file__).resolve().parent.parent
ARCHS = {  # --arch: (builder in tests/tiny_models.py, real vocabulary size, reference tokenizer)
    "gpt-oss": ("build_tiny_gpt_oss", 201_088, "gpt-oss"),
    "qwen3-moe": ("build_tiny_qwen3_moe", 151_936, "qwen3-thinking-2507"),
}


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tiny(arch: str, vocab: int | None = None, threads: int | None = None):
    """A tiny random-weight model of ``arch`` at the real vocabulary size (or ``vocab``), with the
    real tokenizer from the reference directory; shaped like a ``LoadedModel`` for this script."""
    from transformers import AutoTokenizer

    builder, real_vocab, ref = ARCHS[arch]
    fetch = _load_module("fetch_reference_formats", ROOT / "scripts" / "fetch_reference_formats.py")
    problems = fetch.verify()
    if problems:
        sys.exit(f"reference formats missing ({problems[0]}); run `python scripts/fetch_reference_formats.py`")
    tokenizer = AutoTokenizer.from_pretrained(fetch.reference_dir() / ref)
    vocab = vocab or real_vocab
    if vocab < len(tokenizer):
        sys.exit(f"--vocab {vocab} is smaller than the {ref} tokenizer ({len(tokenizer)} tokens)")
    tiny_models = _load_module("tje_tests_tiny_models", ROOT / "tests" / "tiny_models.py")
    model = getattr(tiny_models, builder)(vocab_size=vocab)
    return SimpleNamespace(model=model, tokenizer=tokenizer, revision=f"random:{arch}:vocab={vocab}",
                           arch=arch, vocab=vocab)


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
    TRACKER_MS_PER_STEP[full_vocab] = 1000 * inside[0] / n_tokens
    return inside[0] / wall


TRACKER_MS_PER_STEP: dict[bool, float] = {}  # the last timed generation's tracker ms per decode step


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
        "tracker_ms_per_step": TRACKER_MS_PER_STEP.get(True),
        "tracker_share_topk_only": tracker_share(lm, prompts, n_tokens, full_vocab=False),
        "tracker_ms_per_step_topk_only": TRACKER_MS_PER_STEP.get(False),
        "plain_ms_per_step": 1000 * med["plain"] / n_tokens,
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
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHS),
                        help="tiny random-weight models at the real vocabulary size instead of SmolLM2")
    parser.add_argument("--vocab", type=int, help="with one --arch: this vocabulary size instead of the real one")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="bench_results/entropy.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arch:
        if args.vocab and len(args.arch) > 1:
            parser.error("--vocab takes one --arch")
        results = [measure(load_tiny(a, args.vocab), args) for a in args.arch]
        out = write_result(args.out, {"models": results, "threads": torch.get_num_threads(),
                                      "command": " ".join(["python", *sys.argv])})
        print(f"\nwrote {out}")
        return
    result = measure(load_model(), args)
    out = write_result(args.out, {**result, "threads": torch.get_num_threads()})
    print(f"\nwrote {out}")


def measure(lm, args) -> dict:
    name = getattr(lm, "arch", None) or "SmolLM2"
    vocab = getattr(lm, "vocab", None) or lm.model.config.vocab_size
    print(f"\n## {name}, vocabulary {vocab:,}")
    rows = [throughput(lm, b, args.tokens, args.reps) for b in args.batches]
    print(f"\nThroughput, greedy, {args.tokens} forced new tokens, median of {args.reps} interleaved runs")
    print("| batch | plain generate tok/s | tracker, all signals tok/s | ratio | tracker, top-k only tok/s | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['plain_tok_s']:.1f} | {r['tracked_tok_s']:.1f} | {r['ratio']:.3f} | "
              f"{r['topk_only_tok_s']:.1f} | {r['ratio_topk_only']:.3f} |")
    if rows[0]["tracker_share"] is not None:
        print("\nShare of the wall time spent inside the tracker (one timed generation per mode)")
        print("| batch | all signals | top-k only | tracker ms/step (all / top-k) | decode ms/step (plain) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['batch']} | {100 * r['tracker_share']:.2f} % | {100 * r['tracker_share_topk_only']:.2f} % | "
                  f"{r['tracker_ms_per_step']:.2f} / {r['tracker_ms_per_step_topk_only']:.2f} | "
                  f"{r['plain_ms_per_step']:.2f} |")
    mem = [] if args.skip_memory else [memory(lm, n) for n in args.lengths]
    print("\nPer-token state after n new tokens (batch 1): naive output_logits vs the tracker")
    print("| new tokens | naive logits (MiB) | tracker state (KiB) | ratio |")
    print("|---|---|---|---|")
    for m in mem:
        print(f"| {m['new_tokens']} | {m['naive_logits_bytes'] / 2**20:.1f} | {m['tracker_state_bytes'] / 2**10:.1f} | "
              f"{m['naive_logits_bytes'] / m['tracker_state_bytes']:.0f}x |")
    return {"model": name, "vocab_size": vocab, "throughput": rows, "memory": mem, "model_revision": lm.revision}


if __name__ == "__main__":
    main()
