"""Per-token cost of tje_hf's decoding additions at the paper models' real vocabularies, as
multiples of what Transformers' own sampling costs on the same logits.

1. Components (``--components``): on random ``(B, V)`` logits at V = 151,936 (Qwen3) and
   201,088 (gpt-oss), B = 1, 8, 32, float32 and bf16, each called as it is at a decoding step:
   - ``hf-sampling``: what ``model.generate(do_sample=True)`` does per step, ``softmax`` then
     ``torch.multinomial`` (from float32: generate upcasts the logits first) -- the unit;
   - ``sampler``: :class:`~tje_hf.generation.sampling.SeededSampler` (one seeded draw per row);
   - ``tracker``: :class:`~tje_hf.generation.tracker.EntropyTracker` with every signal, the trace
     and 5 alternatives (the packaged setting), as ``generate_batch`` builds it (the step's logits
     referenced, not copied); ``tracker-topk``: top-k entropies only
     (``signals.full_vocab: false``).
   Interleaved rounds (the order rotating), each a median over ``--calls`` calls; the table gives
   the median over rounds of each component's time divided by ``hf-sampling``'s in the same
   round, and the range. Goals: sampler <= 1x, tracker <= 0.5x, top-k tracker <= 0.25x.
2. End to end (``--e2e``): tje_hf's call as the refinement loop makes it (``HfBackend.generate``:
   the seeded sampler at T = 0.7, every signal, trace with 5 alternatives, a token budget, the
   progress reads) against plain ``model.generate(do_sample=True, temperature=0.7)``, N forced
   tokens, interleaved, on one-layer random models at each real vocabulary: with a tiny hidden
   size (64, the worst case: the step is almost all vocabulary work) and with the real LM-head
   width (2,880 for gpt-oss, 2,048 for Qwen3), the closest CPU stand-in for a real model's step,
   where the goal is a throughput ratio >= 0.98.

Only ratios carry over to a GPU (``scripts/gpu_check.py`` measures the same components there).
Prints tables and writes JSON (``--out``).

    python scripts/bench_sampling.py --out bench_results/sampling.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from gpu_check import IdTokenizer, plain_generate, random_prompts, tje_generate

from tje_hf.generation.hf import HfBackend
from tje_hf.generation.sampling import SeededSampler
from tje_hf.generation.tracker import EntropyTracker
from tje_hf.records import write_result

VOCABS = {"qwen3": 151_936, "gpt-oss": 201_088}
WIDTHS = {"gpt-oss": 2880, "qwen3": 2048}  # the real LM-head input widths
GOALS = {"sampler": 1.0, "tracker": 0.5, "tracker-topk": 0.25}
COMPONENTS = ("hf-sampling", "sampler", "tracker", "tracker-topk")


def component_calls(B: int, V: int, dtype: torch.dtype, steps: int, device: torch.device):
    """One callable per component, each running one decoding step's work on fresh-looking logits;
    the tracker's per-step state (commit of the previous token, the trace) advances as in generate."""
    g = torch.Generator().manual_seed(B * 7 + V)
    logits = (torch.randn(B, V, generator=g) * 4).to(device=device, dtype=dtype)
    scores = logits.float() / 0.7  # what the warpers hand the last processor: float32, tempered
    token = torch.randint(0, V, (B, 1), generator=g).to(device)
    sampler = SeededSampler(torch.arange(B, device=device))
    # as generate_batch builds it when the caller adds no processor: the logits referenced, not copied
    trackers = {
        "tracker": EntropyTracker(B, steps, (5, 10, 15, 20), [V - 1], device, trace=True, trace_alternatives=5,
                                  copy_logits=False),
        "tracker-topk": EntropyTracker(B, steps, (5, 10, 15, 20), [V - 1], device, full_vocab=False),
    }
    scratch = {"scores": scores.clone()}

    def hf_sampling():
        return torch.multinomial(torch.softmax(logits.float() / 0.7, dim=-1), num_samples=1)

    def sample():
        return sampler(token, scratch["scores"])

    def refill():  # outside the timer: the sampler writes +inf into the scores it is handed
        scratch["scores"].copy_(scores)

    calls = {"hf-sampling": (hf_sampling, None), "sampler": (sample, refill)}
    for name, tracker in trackers.items():
        def track(tracker=tracker):
            if tracker.calls >= steps:  # a fresh generate call: the trace is full
                tracker.__init__(B, steps, tracker.ks, [V - 1], device, trace=tracker.trace is not None,
                                 trace_alternatives=tracker.n_alt, full_vocab=tracker.full_vocab,
                                 copy_logits=False)
            return tracker(token, logits)
        calls[name] = (track, None)
    return calls


def bench_components(vocabs, batches, dtypes, rounds: int, calls: int, device: torch.device | str = "cpu",
                     quiet: bool = False) -> list[dict]:
    """Each component's time per call as a multiple of ``hf-sampling``'s (module docstring), on
    ``device`` (on CUDA each call is timed between two synchronisations: its whole cost, launches
    included)."""
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rows = []
    for vname, V in vocabs.items():
        for dtype in dtypes:
            for B in batches:
                fns = component_calls(B, V, dtype, 4 * calls + 8, device)
                per_round = {name: [] for name in COMPONENTS}
                for r in range(rounds):
                    order = COMPONENTS[r % len(COMPONENTS):] + COMPONENTS[:r % len(COMPONENTS)]
                    for name in order:
                        fn, reset = fns[name]
                        times = []
                        for i in range(calls + 1):
                            if reset is not None:
                                reset()
                            sync()
                            t0 = time.perf_counter()
                            fn()
                            sync()
                            if i:  # the first call of a round warms up
                                times.append(time.perf_counter() - t0)
                        per_round[name].append(statistics.median(times))
                unit = per_round["hf-sampling"]
                row = {"vocab": vname, "V": V, "B": B, "dtype": str(dtype).removeprefix("torch."),
                       "hf_sampling_ms": 1000 * statistics.median(unit)}
                for name in COMPONENTS[1:]:
                    ratios = [t / u for t, u in zip(per_round[name], unit, strict=True)]
                    row[name] = {"x_hf_sampling": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                 "ms": 1000 * statistics.median(per_round[name])}
                rows.append(row)
                if not quiet:
                    print(f"  {vname} B={B} {row['dtype']}: hf {row['hf_sampling_ms']:.2f} ms; "
                          + ", ".join(f"{n} {row[n]['x_hf_sampling']:.2f}x" for n in COMPONENTS[1:]), flush=True)
    return rows


def build_one_layer(arch: str, hidden: int):
    """A one-layer random model of ``arch`` at its real vocabulary, hidden size ``hidden``, float32."""
    from transformers import AutoModelForCausalLM, GptOssConfig, Qwen3MoeConfig

    common = {"vocab_size": VOCABS[arch], "hidden_size": hidden, "head_dim": 16, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": 4096,
              "tie_word_embeddings": True}
    if arch == "gpt-oss":
        config = GptOssConfig(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, sliding_window=64,
                              layer_types=["full_attention"], **common)
    else:
        config = Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                                num_experts_per_tok=2, **common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             attn_implementation="eager" if arch == "gpt-oss" else "sdpa").eval()
    tok = IdTokenizer(config.vocab_size)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    return model, tok


def bench_e2e(batches, tokens: int, reps: int) -> list[dict]:
    rows = []
    for arch, vocab in VOCABS.items():
        for width_name, hidden in (("tiny", 64), ("real LM head", WIDTHS[arch])):
            model, tok = build_one_layer(arch, hidden)
            backend = HfBackend(model, tok)
            for B in batches:
                prompts = random_prompts(B, 32, vocab, B)
                plain_generate(model, tok, prompts, 4, "sampled")  # warm-up
                tje_generate(backend, prompts, 4, "sampled")
                walls = {"plain": [], "tje": []}
                for r in range(reps):
                    for path in (("plain", "tje") if r % 2 == 0 else ("tje", "plain")):
                        walls[path].append(plain_generate(model, tok, prompts, tokens, "sampled") if path == "plain"
                                           else tje_generate(backend, prompts, tokens, "sampled"))
                ratios = [p / t for p, t in zip(walls["plain"], walls["tje"], strict=True)]
                row = {"arch": arch, "hidden": hidden, "width": width_name, "B": B, "tokens": tokens,
                       "plain_tok_s": B * tokens / statistics.median(walls["plain"]),
                       "tje_tok_s": B * tokens / statistics.median(walls["tje"]),
                       "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                       "walls": walls}
                rows.append(row)
                print(f"  {arch} hidden {hidden} B={B}: plain {row['plain_tok_s']:.1f} tok/s, tje_hf "
                      f"{row['tje_tok_s']:.1f} tok/s, ratio {row['ratio']:.3f}", flush=True)
            del model, backend
    return rows


def components_table(components: list[dict]) -> list[str]:
    """Markdown rows: each component as a multiple of softmax + multinomial (median, range)."""
    lines = [("| vocabulary | batch | logits | softmax + multinomial, ms | sampler | tracker, all signals "
             "| tracker, top-k only |"), "|---|---|---|---|---|---|---|"]
    for r in components:
        cell = lambda n, r=r: f"{r[n]['x_hf_sampling']:.2f}x ({r[n]['min']:.2f}-{r[n]['max']:.2f})"
        lines.append(f"| {r['vocab']} ({r['V']:,}) | {r['B']} | {r['dtype']} | {r['hf_sampling_ms']:.2f} "
                     f"| {cell('sampler')} | {cell('tracker')} | {cell('tracker-topk')} |")
    return lines


def tables(components: list[dict], e2e: list[dict]) -> str:
    lines = components_table(components) if components else []
    if e2e:
        lines += ["", "| model (one layer) | hidden | batch | plain tok/s | tje_hf tok/s | ratio (range) |",
                  "|---|---|---|---|---|---|"]
        for r in e2e:
            lines.append(f"| {r['arch']} ({VOCABS[r['arch']]:,}) | {r['hidden']} | {r['B']} | {r['plain_tok_s']:.1f} "
                         f"| {r['tje_tok_s']:.1f} | {r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_results/sampling.json")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (components)")
    p.add_argument("--calls", type=int, default=9, help="calls a round, median taken (components)")
    p.add_argument("--e2e-batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=32, help="forced new tokens (end to end)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (end to end)")
    p.add_argument("--skip-components", action="store_true")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    components = [] if args.skip_components else bench_components(
        VOCABS, args.batches, (torch.float32, torch.bfloat16), args.rounds, args.calls)
    e2e = [] if args.skip_e2e else bench_e2e(args.e2e_batches, args.tokens, args.reps)
    print("\n" + tables(components, e2e))
    path = write_result(args.out, {"goals": GOALS, "e2e_goal_ratio": 0.98, "threads": torch.get_num_threads(),
                                   "args": vars(args), "components": components, "e2e": e2e})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
